"""Save a stage's model so plain transformers loads it, including under DeepSpeed ZeRO-3.

`accelerator.get_state_dict` gathers ZeRO-3 partitions (the DeepSpeed configs we ship set
`stage3_gather_16bit_weights_on_model_save`); every projector tensor is then checked to be
non-empty before anything is written — an empty `mm_projector` is the failure the LLaVA seeds hit.
The projector is also written alone to mm_projector.safetensors (LLaVA's stage-1 artefact).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from synthgen.trainer import remote_code
from synthgen.trainer.assemble import Assembled
from synthgen.trainer.config import StageConfig, TrainConfig

log = logging.getLogger(__name__)
PROJECTOR = "multi_modal_projector."


def check_projector(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    proj = {k[k.index(PROJECTOR):]: v for k, v in state.items() if PROJECTOR in k}
    if not proj:
        raise RuntimeError("no projector weights in the state dict")
    empty = [k for k, v in proj.items() if v.numel() == 0]
    if empty:
        raise RuntimeError(f"projector weights are empty ({empty}): under ZeRO-3 the parameters were not "
                           "gathered; set zero_optimization.stage3_gather_16bit_weights_on_model_save=true")
    return proj


def save_stage_model(accelerator, step_module, processor, out: Path, cfg: TrainConfig, stage: StageConfig) -> Assembled:
    accelerator.wait_for_everyone()
    state = accelerator.get_state_dict(step_module)  # full weights on the main process, ZeRO-3 included
    llava = accelerator.unwrap_model(step_module).llava
    if accelerator.is_main_process:
        state = {k.removeprefix("llava."): v for k, v in state.items()}
        check_projector(state)
    is_peft = hasattr(llava, "merge_and_unload")
    if is_peft:
        if accelerator.is_main_process:
            llava.save_pretrained(str(out / "lora_adapter"))
        if cfg.merge_lora:
            llava = llava.merge_and_unload()
            state = llava.state_dict()
        else:
            llava = llava.get_base_model()
            state = {k.replace("base_model.model.", "", 1): v for k, v in state.items() if "lora_" not in k}
            state = {k.replace(".base_layer.", "."): v for k, v in state.items()}
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        projector = check_projector(state)
        projector.update({k[k.index("image_newline"):]: v for k, v in state.items() if k.endswith("image_newline")})
        save_file({k: v.detach().to("cpu").contiguous() for k, v in projector.items()},
                  str(out / "mm_projector.safetensors"))
        llava.save_pretrained(str(out), state_dict=state, safe_serialization=True)
        remote_code.copy_code(llava, out)  # a trust_remote_code LM's files travel with it
        processor.save_pretrained(str(out))
        log.info("saved %s", out)
    accelerator.wait_for_everyone()
    llava.requires_grad_(False)
    return Assembled(llava, processor)
