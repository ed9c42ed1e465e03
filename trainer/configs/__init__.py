"""Shipped training configs: an example run and DeepSpeed ZeRO-2/ZeRO-3 settings."""

from pathlib import Path

HERE = Path(__file__).parent


def path(name: str) -> Path:
    """`zero2`/`zero3` -> the shipped DeepSpeed JSON; other names resolve as given."""
    shipped = HERE / f"deepspeed_{name}.json"
    return shipped if shipped.exists() else Path(name)
