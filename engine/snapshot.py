"""The typed progress of a run: what the CLI's bar, the worker's heartbeat, the REST API and the
dashboard all show. One model, so no layer re-parses another's dicts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from synthgen.spec import RunState


@dataclass
class Usage:
    """One role's counters: a plain dataclass because `Role.chat` bumps it on every request;
    pydantic validates it where it is part of a snapshot."""

    model: str | None = None
    requests: int = 0
    failed: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    failures_by_reason: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RunSnapshot(BaseModel):
    state: RunState = "starting"
    target: int = 0
    records: int = 0
    failed: int = 0
    rows: int = 0
    in_flight: int = 0
    inputs_read: int = 0
    elapsed_s: float = 0.0
    records_per_s: float = 0.0
    requests: int = 0
    tokens_per_s: float = 0.0
    eta_s: float | None = None
    failures_by_reason: dict[str, int] = Field(default_factory=dict)
    usage: dict[str, Usage] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    error: str | None = None
