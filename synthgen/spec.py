"""The typed job spec shared by the CLI, the REST API and the workers.

This module does no I/O: it only says what a job is, so every interface validates the
same way and a spec can be stored, sent and replayed as plain JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)

DEFAULT_ROLE = "default"
# A backend by its entry-point name in the `synthgen.backends` group (openai, vllm, transformers,
# openai-batch, or a third party's); the engine checks that it is registered.
EngineName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]

# The states of a run and of a service job, declared once for the engine, store, API and dashboard.
# queued: waiting for a worker; running; succeeded: n records written; incomplete: the input
# budget ran out before n records passed the checks (data kept, resumable with more inputs);
# stopped: interrupted, resumable; cancelled: stopped on request; failed: an error ended it.
RunState = Literal["starting", "running", "finishing", "succeeded", "incomplete", "stopped", "failed"]
JobState = Literal["queued", "running", "succeeded", "incomplete", "failed", "cancelled"]
FINAL_JOB_STATES: tuple[JobState, ...] = ("succeeded", "incomplete", "failed", "cancelled")


class Sampling(BaseModel):
    """Sampling parameters, passed through to the engine as they are."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0, le=5)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    stop: list[str] | None = None
    seed: int | None = None


class RoleConfig(Sampling):
    """How one model role (writer, vlm, translator, judge, ...) is served.

    Every field is optional so that a partial entry can be layered over the `default`
    entry; `resolve_roles` fills the gaps.
    """

    engine: EngineName | None = None
    base_url: str | None = None
    # Several OpenAI-compatible servers for this role (one vLLM per GPU or node): each request goes
    # to the one with the fewest in flight, and one that keeps failing is taken out and probed
    # again later (synthgen.engine.pool). `base_url` defaults to the first.
    base_urls: list[str] | None = Field(None, min_length=1, max_length=256)
    model: str | None = None
    api_key: SecretStr | None = None
    concurrency: int | None = Field(None, ge=1, le=100_000)
    timeout: float | None = Field(None, gt=0, le=3600)
    max_attempts: int | None = Field(None, ge=1, le=50)
    # engine-specific options, e.g. {"gguf_file": ..., "device": "cpu"} for transformers,
    # {"tensor_parallel_size": 2} for vllm, {"extra_body": {...}} for openai.
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return v.rstrip("/")

    @field_validator("base_urls")
    @classmethod
    def _check_urls(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        urls = [cls._strip_slash(u) or "" for u in v]
        if len(set(urls)) != len(urls):
            raise ValueError("base_urls lists a server twice")
        return urls

    @model_validator(mode="after")
    def _pool_holds_base_url(self) -> RoleConfig:
        if self.base_urls:
            if self.base_url is None:
                self.base_url = self.base_urls[0]
            elif self.base_url not in self.base_urls:
                raise ValueError("base_url must be one of base_urls (or leave it out)")
        return self

    def endpoints(self) -> list[str]:
        """The servers this role's requests go to: the pool, else the one base_url."""
        return list(self.base_urls) if self.base_urls else [self.base_url] if self.base_url else []

    def merged_over(self, base: RoleConfig) -> RoleConfig:
        """This entry's explicitly set fields win over `base`."""
        data = base.model_dump(exclude_none=True)
        mine = self.model_dump(exclude_none=True, exclude_unset=True)
        if "base_url" in mine and "base_urls" not in mine:  # an own server replaces an inherited pool
            data.pop("base_urls", None)
        opts = {**data.get("options", {}), **mine.pop("options", {})}
        data.update(mine)
        data["options"] = opts
        return RoleConfig.model_validate(data)

    def sampling(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(include=set(Sampling.model_fields)).items() if v is not None}


class SourceSpec(BaseModel):
    """A source the inputs came from, named on the dataset card with its licence (synthgen.publish)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=200, description="Hub dataset id or a description")
    license: str | None = Field(None, max_length=64, pattern=r"^[a-z0-9][a-z0-9.+-]*$")
    attribution: str | None = Field(None, max_length=500)
    url: str | None = Field(None, max_length=2000, pattern=r"^https?://")


class PublishSpec(BaseModel):
    """Publish the finished dataset (synthgen.publish): to a Hub repo (`repo_id`, at HF_ENDPOINT)
    or to a folder in the Hub layout (`local_dir`, under the data root for REST jobs)."""

    model_config = ConfigDict(extra="forbid")

    repo_id: str | None = Field(None, pattern=r"^[\w.-]+/[\w.-]+$")
    local_dir: str | None = Field(None, min_length=1, max_length=500)
    private: bool = True
    token: SecretStr | None = None
    split: str = Field("train", pattern=r"^\w{1,64}$")
    config_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][\w.-]{0,95}$",
                                    description="config in the repo (default: the generator's name)")
    license: str | None = Field(None, max_length=64, pattern=r"^[a-z0-9][a-z0-9.+-]*$")
    sources: list[SourceSpec] = Field(default_factory=list, max_length=32)

    @model_validator(mode="after")
    def _one_target(self) -> PublishSpec:
        if (self.repo_id is None) == (self.local_dir is None):
            raise ValueError("publish needs exactly one of repo_id or local_dir")
        return self


WebhookEvent = Literal["job.succeeded", "job.incomplete", "job.failed", "job.cancelled", "publish.succeeded",
                       "publish.failed", "train.started", "train.succeeded", "train.failed", "train.cancelled"]


class WebhookSpec(BaseModel):
    """POSTed JSON on job and chain events, signed with HMAC-SHA256 of `secret` (synthgen.service.chain)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(..., max_length=2000, pattern=r"^https?://[^\s@/]+(/\S*)?$")
    secret: SecretStr | None = Field(None, description="HMAC key for the X-Synthgen-Signature header")
    events: list[WebhookEvent] = Field(default_factory=list, description="events to send (empty: all)")


class ThenSpec(BaseModel):
    """What follows a job's success, after `publish`: a training run on the published data."""

    model_config = ConfigDict(extra="forbid")

    train: dict[str, Any] | None = Field(
        None, description="a `synthgen train` config as JSON; data.sources defaults to this job's data")


class QualityStep(BaseModel):
    """A post-step run on the finished dataset (synthgen.quality): `"dedup"` or
    `{"step": "judge", "params": {"min_score": 4}, "role": {...}}`; params are checked here."""

    model_config = ConfigDict(extra="forbid")

    step: Literal["dedup", "filter", "judge", "balance"]
    params: dict[str, Any] = Field(default_factory=dict)
    role: RoleConfig | None = Field(None, description="judge step: the judge model (over roles.judge/default)")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, v: Any) -> Any:
        return {"step": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _params_valid(self) -> QualityStep:
        from synthgen.quality.config import check_job_params  # pydantic models only, no I/O

        check_job_params(self.step, self.params)
        return self


class JobSpec(BaseModel):
    """One generation job: what the CLI's flags and `POST /v1/jobs` both become."""

    model_config = ConfigDict(extra="forbid")

    generator: str = Field(..., min_length=1, max_length=100)
    params: dict[str, Any] = Field(default_factory=dict)
    roles: dict[str, RoleConfig] = Field(default_factory=dict)
    n: int = Field(100, ge=1, le=100_000_000, description="records to produce")
    max_inputs: int | None = Field(
        None, ge=1, description="inputs to try at most (default 3 x n), so a run whose records are mostly dropped still ends"
    )
    seed: int = Field(0, ge=0, lt=2**63, description="run seed (0 <= seed < 2**63)")
    concurrency: int | None = Field(None, ge=1, le=100_000, description="records in flight at once")
    out: str | None = Field(None, description="output folder (defaults to a folder under the data root)")
    shard_rows: int = Field(1000, ge=1, le=1_000_000)
    flush_seconds: float = Field(10.0, gt=0, le=3600)
    resume: bool = False
    retry_failed: bool = False
    # On resume, records made with another generator version, prompts, models or sampling:
    # stop (default), keep them and fill the rest (`accept_changes`), or regenerate them (`refresh`).
    accept_changes: bool = False
    refresh: bool = False
    publish: PublishSpec | None = None
    # Where the records run: in this process, or on a Ray cluster (synthgen.engine.ray_executor).
    # Which cluster is the operator's setting (SYNTHGEN_RAY_ADDRESS), never a job's.
    executor: Literal["local", "ray"] = "local"
    quality: list[QualityStep] = Field(default_factory=list, max_length=8,
                                       description="quality steps run on the finished dataset (synthgen.quality)")
    then: ThenSpec | None = Field(None, description="steps after success: publish (above), then train")
    webhooks: list[WebhookSpec] = Field(default_factory=list, max_length=8)

    @model_validator(mode="after")
    def _inputs_cover_n(self) -> JobSpec:
        if self.max_inputs is not None and self.max_inputs < self.n:
            raise ValueError("max_inputs must be at least n")
        if self.accept_changes and self.refresh:
            raise ValueError("accept_changes and refresh exclude each other")
        return self

    @property
    def on_change(self) -> Literal["stop", "accept", "refresh"]:
        return "refresh" if self.refresh else "accept" if self.accept_changes else "stop"

    @property
    def input_budget(self) -> int:
        return self.max_inputs or self.n * 3

    def out_path(self, data_root: Path) -> Path:
        return Path(self.out) if self.out else data_root / "runs" / f"{self.generator}-seed{self.seed}"

    def secret_values(self) -> list[str]:
        """Every secret the spec carries (role API keys, the Hub token), for masking."""
        found = [r.api_key.get_secret_value() for r in self.roles.values() if r.api_key]
        found += [q.role.api_key.get_secret_value() for q in self.quality if q.role and q.role.api_key]
        found += [w.secret.get_secret_value() for w in self.webhooks if w.secret]
        if self.publish is not None and self.publish.token is not None:
            found.append(self.publish.token.get_secret_value())
        return [s for s in found if s]

    def public_dict(self) -> dict[str, Any]:
        """The spec as JSON with every secret masked, for manifests, logs and API answers."""
        return self.model_dump(mode="json")  # SecretStr dumps as '**********'
