"""Finished runs for the publish tests: made by the real engine against loopback model servers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import datasets
from image_responders import image_responder

from synthgen.engine.runner import run_job
from synthgen.generators.images.samples import write_folder
from synthgen.loopback_server import LoopbackServer
from synthgen.spec import JobSpec


def image_run(tmp: Path, n: int = 6) -> Path:
    write_folder(tmp / "imgs", n)
    with LoopbackServer(image_responder()) as srv:
        spec = JobSpec(generator="caption-translate", n=n, out=str(tmp / "cap"), params={"source": str(tmp / "imgs")},
                       roles={"default": {"base_url": srv.base_url, "model": "vlm-m"}})
        result = asyncio.run(run_job(spec))
    assert result.stats.state == "succeeded"
    return tmp / "cap"


def text_run(tmp: Path, n: int = 3) -> Path:
    with LoopbackServer() as srv:
        spec = JobSpec(generator="persona-qa", n=n, out=str(tmp / "pqa"),
                       roles={"default": {"base_url": srv.base_url, "model": "llm-m"}})
        result = asyncio.run(run_job(spec))
    assert result.stats.state == "succeeded"
    return tmp / "pqa"


def plain_rows(ds: datasets.Dataset) -> list[dict]:
    """Rows with images as raw bytes, for row-for-row comparison."""
    if "image" in ds.column_names:
        ds = ds.cast_column("image", datasets.Image(decode=False))
    rows = ds.to_list()
    for row in rows:
        if isinstance(row.get("image"), dict):
            row["image"] = row["image"]["bytes"]
    return rows


def hub_online(monkeypatch) -> None:
    """Let huggingface_hub make requests again (conftest sets offline mode before it is imported);
    conftest's socket guard still fails any connection that is not loopback."""
    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@contextlib.contextmanager
def hub_reads(monkeypatch, endpoint: str) -> Iterator[None]:
    """Point `datasets.load_dataset` (and huggingface_hub's downloads) at the loopback Hub."""
    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", endpoint)
    hub_online(monkeypatch)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    yield
