"""One entry point for a job spec's `publish` section: the CLI engine path, the worker's chain and
`POST /v1/jobs/{id}/publish` all call `publish_spec` (a Hub repo or a local folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthgen.publish.card import SourceInfo
from synthgen.spec import PublishSpec


def publish_spec(pub: PublishSpec, run_dir: str | Path, *, local_dir: Path | None = None) -> dict[str, Any]:
    """Publish the finished run at `run_dir` as `pub` says; returns what may be shown (never the
    token). `local_dir`: the already-confined target folder (REST jobs), else `pub.local_dir` as given."""
    sources = [SourceInfo(s.name, s.license, s.url, s.attribution) for s in pub.sources]
    if pub.local_dir:
        from synthgen.publish.local import publish_local

        target = local_dir or Path(pub.local_dir)
        res = publish_local(run_dir, target, config=pub.config_name, split=pub.split, license=pub.license,
                            sources=sources)
        return {"local_dir": str(target), "config": res.config, "split": res.split, "rows": res.rows,
                "license": res.license}
    from synthgen.publish.hub import push

    assert pub.repo_id is not None
    token = pub.token.get_secret_value() if pub.token else None
    return push(run_dir, pub.repo_id, config=pub.config_name, split=pub.split, private=pub.private, token=token,
                license=pub.license, sources=sources).public()
