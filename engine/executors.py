"""Which executor runs a job: `local` (engine.runner) or `ray` (engine.ray_executor).

Both take the same arguments and write the same run folder, so the CLI and the service's
workers pick one by the spec's `executor` and treat the result alike. Ray is imported only
when a job asks for it: it is an optional extra.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from synthgen.engine.errors import EngineUnavailable
from synthgen.engine.runner import RunResult, run_job
from synthgen.spec import JobSpec


def runner_for(spec: JobSpec, *, ray_address: str | None = None) -> Callable[..., Awaitable[RunResult]]:
    """`run_job`, or the Ray executor's equivalent when `spec.executor == "ray"`."""
    if spec.executor != "ray":
        return run_job
    try:
        from synthgen.engine.ray_executor import run_job_ray
    except ImportError as exc:
        missing = f"executor 'ray' needs Ray: pip install 'synthgen[ray]' ({exc})"

        async def unavailable(*_args: Any, **_kwargs: Any) -> RunResult:
            raise EngineUnavailable(missing)  # raised where the run's own errors are handled

        return unavailable
    runner: Callable[..., Any] = run_job_ray
    return functools.partial(runner, address=ray_address) if ray_address else runner
