"""Optional upload of a trained model folder to the Hugging Face Hub."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from synthgen.trainer.config import HubConfig


def push_model(folder: Path, hub: HubConfig, config: Any = None, scores: dict | None = None) -> str:
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} holds no saved model (config.json missing)")
    token = os.environ.get(hub.token_env)
    if not token:
        raise ValueError(f"push_to_hub: set ${hub.token_env} to a Hub token with write access")
    from huggingface_hub import HfApi

    from synthgen.publish.hub import transfer_protocol
    from synthgen.publish.model_card import write_model_card

    if config is not None:  # the pushed model gets a model card (base models, data, config, scores)
        write_model_card(folder, config, scores=scores)
    api = HfApi(token=token)
    api.create_repo(hub.repo_id, private=hub.private, exist_ok=True, repo_type="model")
    with transfer_protocol(api.endpoint):  # plain LFS on Hub mirrors without Xet
        info = api.upload_folder(folder_path=str(folder), repo_id=hub.repo_id, repo_type="model",
                                 ignore_patterns=["run/*", "feature_cache/*", "stages/*"],
                                 commit_message="synthgen train")
    return str(info)
