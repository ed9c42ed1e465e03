"""The typed evaluation spec shared by `synthgen eval`, `POST /v1/evaluations` and the eval process.

No I/O here: an evaluation is plain JSON that can be stored, sent and replayed. The model under
test is a role like any other (a local checkpoint folder runs in-process on the transformers
engine, micro-batched; a `base_url` makes it any OpenAI-compatible VLM endpoint); so is the judge.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from synthgen.spec import RoleConfig

DEFAULT_TASKS = ("japanese-heron-bench", "ja-vg-vqa-500", "ja-vlm-bench-in-the-wild", "jdocqa")


class Generation(BaseModel):
    """How the model under test answers: llm-jp-eval-mm's defaults bar the token cap (256 here)."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(256, ge=1, le=32_768)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = 0

    def sampling(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class TaskRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=100)
    source: str | None = Field(None, max_length=1000, description="local copy or Hub id (default: the task's Hub id)")
    limit: int | None = Field(None, ge=1, le=1_000_000, description="first N samples only")


class EvalSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: RoleConfig
    judge: RoleConfig | None = Field(None, description="the judge role; without one, judge scores are not computed")
    tasks: list[TaskRef] = Field(..., min_length=1, max_length=20)
    generation: Generation = Field(default_factory=Generation)
    judge_structured: bool = Field(True, description="send response_format json_schema (falls back if refused)")
    judge_retries: int = Field(2, ge=0, le=10, description="re-asks on an unparseable judge reply")
    judge_max_tokens: int = Field(512, ge=16, le=8192)
    label: str | None = Field(None, max_length=200, description="name of this run in tables and charts")
    cache_dir: str | None = Field(None, max_length=1000, description="judgement cache folder (default: beside the out folder)")

    @field_validator("model")
    @classmethod
    def _model_named(cls, v: RoleConfig) -> RoleConfig:
        if not v.model:
            raise ValueError("name the model under test (a checkpoint folder, a Hub id, or the endpoint's model name)")
        return v

    @field_validator("tasks")
    @classmethod
    def _unique(cls, v: list[TaskRef]) -> list[TaskRef]:
        names = [t.name for t in v]
        if len(set(names)) != len(names):
            raise ValueError("a task is listed twice")
        return v

    def display_name(self) -> str:
        return self.label or str(self.model.model)

    def public_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")  # SecretStr dumps masked
