"""Step parameters as pydantic models: one place validates them for the CLI, job specs and
the REST API (a job spec's `quality:` entries are untrusted input like the rest of it)."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

StepName = Literal["dedup", "filter", "judge", "balance"]
FILTER_CHECKS = ("mojibake", "markup", "looping", "length", "refusal", "leak", "japanese")


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DedupParams(_Params):
    threshold: float = Field(0.8, ge=0.3, le=1.0, description="estimated Jaccard of character n-grams")
    ngram: int = Field(5, ge=2, le=20)
    num_perm: int = Field(112, ge=16, le=512)
    bands: int | None = Field(None, ge=1, le=512, description="LSH bands (default: chosen for the threshold)")
    images: bool = True
    image_distance: int = Field(2, ge=0, le=16, description="pHash Hamming distance that counts as the same image")
    against: list[str] = Field(default_factory=list, max_length=32,
                               description="earlier datasets: records repeating theirs are dropped too")

    @model_validator(mode="after")
    def _bands_divide(self) -> DedupParams:
        if self.bands is not None and self.num_perm % self.bands:
            raise ValueError("bands must divide num_perm")
        return self


class FilterParams(_Params):
    checks: list[Literal["mojibake", "markup", "looping", "length", "japanese", "refusal", "leak"]] = Field(
        default_factory=lambda: list(FILTER_CHECKS))
    min_japanese_ratio: float = Field(0.5, ge=0, le=1)
    min_chars: int = Field(8, ge=0, description="question + answer, characters")
    max_chars: int = Field(20_000, ge=1)
    min_answer_chars: int = Field(1, ge=0)


class JudgeParams(_Params):
    min_score: float | None = Field(3.0, ge=1, le=5, description="keep records scoring at least this (1-5)")
    top_fraction: float | None = Field(None, gt=0, le=1, description="keep this best share instead of a threshold")
    structured: bool = Field(True, description="ask for JSON-schema output where the engine supports it")
    max_tokens: int = Field(256, ge=16, le=4096)
    temperature: float = Field(0.0, ge=0, le=2)
    image_inputs: bool = Field(False, description="send the record's image to the judge (a VLM judge)")


class BalanceParams(_Params):
    noun_cap: int | None = Field(None, ge=1, description="records any one noun may appear in")
    max_noun_share: float = Field(0.1, gt=0, le=1, description="cap as a share of the input (when noun_cap unset)")
    min_noun_cap: int = Field(20, ge=1)
    fields: Literal["question", "answer", "both"] = "question"
    ignore_nouns: list[str] = Field(default_factory=list, max_length=10_000)
    category_field: str | None = Field("category", max_length=100)
    category_cap: int | None = Field(None, ge=1)
    category_ratio: float = Field(2.0, ge=1, description="cap = ratio x the smallest category's count")


PARAMS: dict[str, type[_Params]] = {"dedup": DedupParams, "filter": FilterParams, "judge": JudgeParams,
                                    "balance": BalanceParams}


def step_params(name: str, params: dict[str, Any] | None = None) -> _Params:
    if name not in PARAMS:
        raise ValueError(f"unknown quality step {name!r} (known: {', '.join(PARAMS)})")
    return PARAMS[name].model_validate(params or {})


def check_job_params(name: str, params: dict[str, Any]) -> None:
    """Extra policy for steps inside a job spec (untrusted): earlier datasets are named
    relative to the data root's runs folder, never by absolute path or with '..'."""
    parsed = step_params(name, params)
    for ref in getattr(parsed, "against", []):
        p = PurePosixPath(ref)
        if p.is_absolute() or ".." in p.parts or "\\" in ref:
            raise ValueError(f"dedup.against entries must be run folders relative to the data root: {ref!r}")
