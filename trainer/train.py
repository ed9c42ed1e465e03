"""Run the configured stages: freeze/unfreeze, (cached) data, accelerate loop, checkpoints, saving.

One Accelerator per stage (the trainable set, accumulation and DeepSpeed engine differ per stage).
Progress goes to run_dir/status.json and TensorBoard; checkpoints to run_dir/checkpoints/<stage>/
step-N (accelerate's save_state + our position), and `resume` continues from the newest one at
the optimizer step it stopped at, skipping the micro-batches already consumed in that epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import signal
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader, skip_first_batches
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DeepSpeedPlugin, set_seed
from transformers.modeling_outputs import BaseModelOutputWithPooling

from synthgen.trainer import features_cache
from synthgen.trainer.assemble import Assembled, assemble, vision_features, vision_fingerprint
from synthgen.trainer.config import StageConfig, TrainConfig
from synthgen.trainer.data import (
    Corpus,
    Encoder,
    TrainDataset,
    build_corpus,
    collate,
    epoch_items,
    stage_order,
)
from synthgen.trainer.progress import cancel_requested, is_main_process, write_status
from synthgen.trainer.saving import save_stage_model

log = logging.getLogger("synthgen.trainer")


class Cancelled(Exception):
    pass


class StepModule(torch.nn.Module):
    """The loss of one batch, from pixels (live tower) or cached tower outputs.

    Cached features go through the projector here and enter LLaVA as its `mm_encoder_outputs`,
    so both paths share transformers' own image-token merging and loss.
    """

    def __init__(self, llava: torch.nn.Module):
        super().__init__()
        self.llava = llava

    def projector(self) -> torch.nn.Module:
        inner = self.llava.get_base_model() if hasattr(self.llava, "get_base_model") else self.llava
        return inner.model.multi_modal_projector

    def forward(self, input_ids, labels, attention_mask=None, position_ids=None, pixel_values=None,
                vision_features=None, image_sizes=None, example_ids=None) -> torch.Tensor:
        kw: dict[str, Any] = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                                  position_ids=position_ids, use_cache=False)
        if image_sizes is not None:
            kw["image_sizes"] = image_sizes
        if vision_features is not None:
            proj = self.projector()
            image = proj(vision_features.to(proj.linear_1.weight.dtype))
            kw["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=list(image))}
        elif pixel_values is not None:
            kw["pixel_values"] = pixel_values
        return self.llava(**kw).loss


def _parts(llava) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    inner = llava.get_base_model() if hasattr(llava, "get_base_model") else llava
    return inner.model.vision_tower, inner.model.multi_modal_projector, inner.model.language_model


def apply_stage(llava, stage: StageConfig):
    """Set requires_grad for the stage (and wrap in LoRA when asked); returns the model to train."""
    llava.requires_grad_(False)
    if stage.train_lm == "lora":
        from peft import LoraConfig, get_peft_model

        leaves = stage.lora.target_modules
        if leaves == "all-linear":
            leaves = sorted({n.rsplit(".", 1)[-1] for n, m in llava.model.language_model.named_modules()
                             if isinstance(m, torch.nn.Linear)})
        pattern = r".*language_model\..*\.(" + "|".join(leaves) + ")"
        llava = get_peft_model(llava, LoraConfig(r=stage.lora.r, lora_alpha=stage.lora.alpha,
                                                 lora_dropout=stage.lora.dropout, target_modules=pattern))
    vision, projector, lm = _parts(llava)
    projector.requires_grad_(stage.train_projector)
    inner = llava.get_base_model() if hasattr(llava, "get_base_model") else llava
    newline = getattr(inner.model, "image_newline", None)  # LLaVA-NeXT's row separator learns with the projector
    if newline is not None:
        newline.requires_grad_(stage.train_projector)
    vision.requires_grad_(stage.train_vision)
    if stage.train_lm == "full":
        lm.requires_grad_(True)
        llava.get_output_embeddings().requires_grad_(True)
    return llava


def _param_groups(llava, stage: StageConfig) -> list[dict[str, Any]]:
    vision, _, _ = _parts(llava)
    vision_ids = {id(p) for p in vision.parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in llava.named_parameters():
        if p.requires_grad:
            no_decay = p.ndim < 2 or "norm" in name.lower()
            groups.setdefault((id(p) in vision_ids, no_decay), []).append(p)
    out = []
    for (is_vision, no_decay), params in groups.items():
        lr = stage.vision_learning_rate if is_vision and stage.vision_learning_rate else stage.learning_rate
        out.append({"params": params, "lr": lr, "weight_decay": 0.0 if no_decay else stage.weight_decay})
    return out


def lr_schedule(name: str, optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' schedules of the same names (linear warmup, then cosine/linear decay to 0 or flat).

    Written out because importing transformers.optimization pulls in peft and the Trainer
    (seconds of start-up for every job, even one that fails on its config).
    """
    def factor(step: int) -> float:
        if name != "constant" and step < warmup:
            return step / max(1, warmup)
        if name in ("constant", "constant_with_warmup"):
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress)) if name == "cosine" else 1.0 - progress

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(stage: StageConfig, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The stage's optimizer by name (LLaVA-JP / ConvLLaVA-JP use adamw_8bit in their later stages)."""
    if stage.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=stage.learning_rate, betas=(0.9, 0.999))
    if stage.optimizer == "adamw_8bit":
        if not torch.cuda.is_available():
            raise RuntimeError(f"stage {stage.name!r}: optimizer adamw_8bit (bitsandbytes) needs a CUDA GPU and none "
                               "is present; use optimizer: adamw or adafactor")
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise RuntimeError("optimizer adamw_8bit needs bitsandbytes: pip install 'synthgen[train-gpu]'") from exc
        return bnb.optim.AdamW8bit(groups, lr=stage.learning_rate, betas=(0.9, 0.999))
    from transformers.optimization import Adafactor

    return Adafactor(groups, lr=stage.learning_rate, scale_parameter=False, relative_step=False, warmup_init=False)


def moe_blocks(model: torch.nn.Module) -> list[type]:
    """Mixture-of-Experts block classes (Mixtral, Qwen2-MoE, Tanuki: a router `gate` over `experts`)."""
    return sorted({type(m) for m in model.modules() if hasattr(m, "experts") and hasattr(m, "gate")},
                  key=lambda t: t.__name__)


def _zero3_moe_leaves(cfg: TrainConfig, model: torch.nn.Module) -> None:
    """Under ZeRO-3 an MoE block is gathered whole: a rank whose tokens skip an expert would otherwise
    wait for that expert's parameters forever (the hang MoE LLaVA runs hit)."""
    if not cfg.deepspeed or json.loads(Path(cfg.deepspeed).read_text()).get("zero_optimization", {}).get("stage") != 3:
        return
    blocks = moe_blocks(model)
    if blocks:
        from deepspeed.utils import set_z3_leaf_modules

        set_z3_leaf_modules(model, blocks)
        log.info("ZeRO-3: MoE blocks gathered whole: %s", ", ".join(b.__name__ for b in blocks))


def preflight(cfg: TrainConfig) -> None:
    """Options that need a GPU or an extra package fail here, before any model is loaded, naming the option."""
    import importlib.util

    missing = []
    if cfg.deepspeed and importlib.util.find_spec("deepspeed") is None:
        missing.append("deepspeed needs DeepSpeed: pip install 'synthgen[deepspeed]'")
    if any(s.optimizer == "adamw_8bit" for s in cfg.stages) and importlib.util.find_spec("bitsandbytes") is None:
        missing.append("optimizer adamw_8bit needs bitsandbytes: pip install 'synthgen[train-gpu]'")
    if torch.cuda.is_available():
        if missing:
            raise RuntimeError("; ".join(missing))
        return
    needs = [f"stages.{i}.optimizer=adamw_8bit" for i, s in enumerate(cfg.stages) if s.optimizer == "adamw_8bit"]
    if cfg.deepspeed:
        needs.append(f"deepspeed={Path(cfg.deepspeed).name} (DeepSpeed ZeRO runs on CUDA GPUs)")
    if cfg.precision == "fp16":
        needs.append("precision=fp16 (use bf16 or fp32 on a CPU)")
    if needs:
        raise RuntimeError("no CUDA GPU is present, and these options need one: " + "; ".join(needs))


def _accelerator(cfg: TrainConfig, stage: StageConfig, run_dir: Path) -> Accelerator:
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    plugin = None
    if cfg.deepspeed:
        try:
            import deepspeed  # noqa: F401
        except ImportError as exc:
            raise RuntimeError("config.deepspeed needs DeepSpeed: pip install 'synthgen[deepspeed]'") from exc
        ds = json.loads(Path(cfg.deepspeed).read_text())
        ds["train_micro_batch_size_per_gpu"] = stage.batch_size
        if ds.get("gradient_clipping") == "auto":
            ds["gradient_clipping"] = stage.max_grad_norm or 0.0
        plugin = DeepSpeedPlugin(hf_ds_config=ds)
    mp = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[cfg.precision]
    # without a GPU, multi-process runs (torchrun) need cpu=True to become MULTI_CPU (gloo) rather than N copies
    accel = getattr(torch, "accelerator", None)
    on_cpu = accel is None or accel.current_accelerator() is None
    return Accelerator(cpu=on_cpu, mixed_precision=mp, gradient_accumulation_steps=stage.grad_accum, deepspeed_plugin=plugin,
                       log_with=cfg.report_to or None, project_dir=str(run_dir))


@dataclass
class StageData:
    """What one stage reads: its corpus (shared by stages with the same sources) and its order."""

    corpus: Corpus
    order: np.ndarray  # weighted example indices this stage draws its epochs from
    text_only_skipped: int
    keys: list[str | None] | None = None  # image digests, for the feature cache


class Run:
    """State shared by the stages of one run."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.run_dir = cfg.resolved_run_dir()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.assembled: Assembled | None = None
        self.corpora: dict[str, Corpus] = {}
        self.image_keys: dict[int, list[str | None]] = {}  # by id() of a corpus in self.corpora
        self.encoder: Encoder | None = None
        self.stop = False
        self.global_step = 0
        self.summaries: dict[str, dict[str, Any]] = {}

    @property
    def corpus(self) -> Corpus | None:
        """The corpus of data.sources (the default of every stage); None when that list is empty."""
        if not self.cfg.data.sources:
            return None
        assert self.encoder is not None, "ensure_model first"
        key = _sources_key(self.cfg.data.sources)
        if key not in self.corpora:
            self.corpora[key] = build_corpus(self.cfg.data, self.encoder)
        return self.corpora[key]

    def ensure_model(self, init_from: str | None) -> Assembled:
        if self.assembled is None:
            mc = self.cfg.model if init_from is None else self.cfg.model.model_copy(update={"init_from": init_from})
            self.assembled = assemble(mc)
        if self.encoder is None:
            a = self.assembled
            self.encoder = Encoder(a.tokenizer, self.cfg.model.image_token, a.image_token_id, a.num_image_tokens,
                                   self.cfg.data.max_length, self.cfg.model.system_prompt, a.image_tokens_for())
        return self.assembled

    def stage_data(self, stage: StageConfig) -> StageData:
        assert self.encoder is not None, "ensure_model first"
        sources = self.cfg.stage_sources(stage)
        key = _sources_key(sources)
        if key not in self.corpora:
            self.corpora[key] = build_corpus(self.cfg.data, self.encoder, sources)
        corpus = self.corpora[key]
        order, text_only = stage_order(corpus, stage.needs_images)
        return StageData(corpus, order, text_only)

    def keys(self, sd: StageData) -> list[str | None]:
        """sha256 of every example's image bytes (None: no image, or its file is missing), once per corpus."""
        if sd.keys is None:
            cached = self.image_keys.get(id(sd.corpus))
            if cached is None:
                cached = self.image_keys[id(sd.corpus)] = [_digest(sd.corpus.image_ref(ex)) for ex in sd.corpus.examples]
            sd.keys = cached
        return sd.keys


def _sources_key(sources) -> str:
    return json.dumps([s.model_dump(mode="json") for s in sources], sort_keys=True)


def _digest(ref) -> str | None:
    if ref is None:
        return None
    try:
        return ref.digest()
    except OSError as exc:
        log.warning("image %s unreadable, its record will be skipped: %s", ref.path, exc)
        return None


def _feature_rows(run: Run, accelerator: Accelerator, sd: StageData) -> tuple[features_cache.FeatureReader, np.ndarray]:
    a, corpus, cfg = run.assembled, sd.corpus, run.cfg
    assert a is not None
    fp = vision_fingerprint(a.model, a.processor.image_processor, f"{cfg.model.vision_revision}|{cfg.precision}")
    store = features_cache.FeatureStore(cfg.resolved_cache_dir(), fp)
    keys = run.keys(sd)
    if accelerator.is_main_process:
        first = {}
        for i, k in enumerate(keys):
            if k is not None:
                first.setdefault(k, i)
        device = accelerator.device
        a.model.model.vision_tower.to(device)
        ip = a.processor.image_processor

        def encode(images: list) -> torch.Tensor:
            with accelerator.autocast():
                return vision_features(a.model, ip(images, return_tensors="pt")["pixel_values"].to(device))

        def progress(done: int, total: int) -> None:
            write_status(run.run_dir, phase=f"caching vision features {done}/{total}")
            if run.stop or cancel_requested(run.run_dir):  # finished shards are kept for the next run
                write_status(run.run_dir, state="cancelled")
                raise Cancelled

        features_cache.fill(store, [k for k in keys if k is not None],
                            lambda k: corpus.image_ref(corpus.examples[first[k]]).load(), encode,
                            batch_size=32, dtype=np.dtype(cfg.feature_cache_dtype), progress=progress)
    accelerator.wait_for_everyone()
    store = features_cache.FeatureStore(cfg.resolved_cache_dir(), fp)
    return store.reader(), store.rows(keys)


def _loader(run: Run, stage: StageConfig, epoch: int, accelerator: Accelerator, features,
            sd: StageData) -> torch.utils.data.DataLoader:
    cfg, corpus, a = run.cfg, sd.corpus, run.assembled
    assert a is not None
    items = epoch_items(corpus, epoch, cfg.data.seed, cfg.data.packing, cfg.data.max_length, sd.order)
    reader, rows = features if features is not None else (None, None)
    ds = TrainDataset(corpus, items, a.processor.image_processor, reader, rows)
    workers = cfg.data.num_workers
    dl = torch.utils.data.DataLoader(ds, batch_size=stage.batch_size, shuffle=False, num_workers=workers,
                                     collate_fn=partial(collate, pad_id=a.tokenizer.pad_token_id),
                                     prefetch_factor=cfg.data.prefetch_factor if workers else None,
                                     pin_memory=accelerator.device.type == "cuda", drop_last=False)
    return prepare_data_loader(dl, accelerator.device, num_processes=accelerator.num_processes,
                               process_index=accelerator.process_index, put_on_device=True)


def _checkpoints(run_dir: Path, stage: str) -> list[Path]:
    root = run_dir / "checkpoints" / stage
    found = [p for p in root.glob("step-*") if (p / "position.json").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _save_checkpoint(run: Run, stage: StageConfig, accelerator: Accelerator, position: dict[str, int]) -> None:
    path = run.run_dir / "checkpoints" / stage.name / f"step-{position['step']}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / "position.json").write_text(json.dumps(position))
        for old in _checkpoints(run.run_dir, stage.name)[: -run.cfg.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _order_digest(sd: StageData, cfg: TrainConfig) -> str:
    """What fixes a stage's data order: resume refuses a checkpoint whose data has since changed."""
    h = hashlib.sha256(json.dumps([cfg.data.seed, cfg.data.packing, cfg.data.max_length]).encode())
    h.update(np.ascontiguousarray(sd.order).tobytes())
    for ex in sd.corpus.examples:  # which row each example is, and its tokens
        h.update(np.asarray([ex.source, ex.row, len(ex.input_ids)], np.int64).tobytes())
        h.update(ex.input_ids.tobytes())
    return h.hexdigest()[:16]


class SeenLog:
    """run_dir/data/<stage>.seen[.rankN].jsonl: the (source, row) pairs of every micro-batch, with the
    optimizer step it fed. On resume, lines past the checkpoint's step are dropped, so the log always
    says exactly which rows the saved weights were trained on."""

    def __init__(self, run_dir: Path, stage: str, rank: int, resumed_step: int | None, enabled: bool):
        self.path = run_dir / "data" / (f"{stage}.seen.jsonl" if rank == 0 else f"{stage}.seen.rank{rank}.jsonl")
        self.file = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resumed_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line and json.loads(line)["step"] <= resumed_step]
        self.path.write_text("".join(line + "\n" for line in kept))
        self.file = open(self.path, "a")  # noqa: SIM115 - closed by close()

    def write(self, step: int, epoch: int, micro: int, corpus: Corpus, ids: torch.Tensor) -> None:
        if self.file is not None:
            rows = [[corpus.examples[i].source, corpus.examples[i].row] for i in ids.tolist()]
            self.file.write(json.dumps({"step": step, "epoch": epoch, "micro": micro, "rows": rows}) + "\n")

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def read_seen(run_dir: Path, stage: str) -> list[tuple[int, int]]:
    """(source index, row) of every row a stage trained on, in order, rank 0's share (tests, audits)."""
    path = Path(run_dir) / "data" / f"{stage}.seen.jsonl"
    return [tuple(r) for line in path.read_text().splitlines() if line for r in json.loads(line)["rows"]]


def stage_summary(cfg: TrainConfig, stage: StageConfig, sd: StageData, steps: int, per_epoch: int) -> dict[str, Any]:
    """The data of one stage, as the model card lists it."""
    counts = np.bincount([sd.corpus.examples[i].source for i in sd.order.tolist()], minlength=len(sd.corpus.sources))
    return {"stage": stage.name, "trains": {"projector": stage.train_projector, "vision": stage.train_vision,
                                             "lm": stage.train_lm},
            "optimizer": stage.optimizer, "learning_rate": stage.learning_rate, "batch_size": stage.batch_size,
            "grad_accum": stage.grad_accum, "steps": steps, "steps_per_epoch": per_epoch,
            "sources": [{**src.cfg.model_dump(mode="json", exclude_defaults=True), "path": src.cfg.path,
                         "rows": len(src), "items_per_epoch": int(counts[k])}
                        for k, src in enumerate(sd.corpus.sources)],
            "text_only_rows_skipped": sd.text_only_skipped, "records_skipped": dict(sd.corpus.skipped)}


def run_stage(run: Run, si: int, stage: StageConfig) -> Path:
    cfg = run.cfg
    a = run.assembled
    assert a is not None
    sd = run.stage_data(stage)
    if sd.text_only_skipped:
        log.info("stage %s: %d text-only rows skipped (the stage trains no weight they reach)", stage.name,
                 sd.text_only_skipped)
    accelerator = _accelerator(cfg, stage, run.run_dir)
    set_seed(cfg.seed + si)
    llava = apply_stage(a.model, stage)
    _zero3_moe_leaves(cfg, llava)
    if cfg.gradient_checkpointing:
        llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    uses_cache = stage.uses_cache and a.supports_feature_cache
    if stage.uses_cache and not uses_cache:
        log.info("stage %s: anyres tiles vary per image, so the tower runs live (no feature cache)", stage.name)
    features = _feature_rows(run, accelerator, sd) if uses_cache else None
    step_module = StepModule(llava)
    optimizer = make_optimizer(stage, _param_groups(llava, stage))
    per_epoch = math.ceil(len(_loader(run, stage, 0, accelerator, features, sd)) / stage.grad_accum)
    total = stage.max_steps or max(1, math.ceil(stage.epochs * per_epoch))
    scheduler = lr_schedule(stage.scheduler, optimizer, math.ceil(stage.warmup_ratio * total), total)
    step_module, optimizer = accelerator.prepare(step_module, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    if cfg.report_to:
        accelerator.init_trackers("tb")

    digest = _order_digest(sd, cfg)
    step, epoch, skip = 0, 0, 0
    ckpts = _checkpoints(run.run_dir, stage.name) if cfg.resume else []
    if ckpts:
        pos = json.loads((ckpts[-1] / "position.json").read_text())
        if pos.get("order", digest) != digest:
            raise RuntimeError(f"stage {stage.name}: its data changed since checkpoint {ckpts[-1]} (sources, weights, "
                               "seed or max_length), so resuming would not be exact; delete that stage's checkpoints "
                               "to start it over")
        accelerator.load_state(str(ckpts[-1]))
        step, epoch, skip = pos["step"], pos["epoch"], pos["micro"]
        log.info("stage %s: resuming at step %d (epoch %d, micro-batch %d)", stage.name, step, epoch, skip)
    seen = SeenLog(run.run_dir, stage.name, accelerator.process_index, step if ckpts else None, cfg.data.record_seen)
    write_status(run.run_dir, state="running", stage=stage.name, stage_index=si, step=step, total_steps=total,
                 phase="training", text_only_skipped=sd.text_only_skipped)
    log.info("stage %s: %d steps (%d per epoch), trainable params %d", stage.name, total, per_epoch,
             sum(p.numel() for p in llava.parameters() if p.requires_grad))
    step_module.train()
    window: list[float] = []
    tokens, t0 = 0, time.perf_counter()
    try:
        while step < total:
            dl = _loader(run, stage, epoch, accelerator, features, sd)
            micro = 0
            if skip:
                dl, micro, skip = skip_first_batches(dl, skip), skip, 0
            for batch in dl:
                micro += 1
                seen.write(step + 1, epoch, micro, sd.corpus, batch.pop("example_ids"))
                with accelerator.accumulate(step_module):
                    loss = step_module(**batch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and stage.max_grad_norm:
                        accelerator.clip_grad_norm_(step_module.parameters(), stage.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                window.append(loss.detach().float().item())
                tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                step += 1
                run.global_step += 1
                if step % cfg.logging_steps == 0 or step == total:
                    mean = float(np.mean(window))
                    if accelerator.num_processes > 1:  # the same step on every rank: average across them
                        mean = accelerator.reduce(torch.tensor([mean], device=accelerator.device), "mean").item()
                    dt = time.perf_counter() - t0
                    lr = scheduler.get_last_lr()[0]
                    accelerator.log({f"{stage.name}/loss": mean, f"{stage.name}/lr": lr,
                                     f"{stage.name}/tokens_per_s": tokens / dt}, step=run.global_step)
                    if accelerator.is_main_process:
                        write_status(run.run_dir, step=step, loss=mean, lr=lr)
                        log.info("stage %s step %d/%d loss %.4f lr %.2e %.0f tok/s", stage.name, step, total, mean,
                                 lr, tokens / dt)
                    window, tokens, t0 = [], 0, time.perf_counter()
                position = {"step": step, "epoch": epoch, "micro": micro, "order": digest}
                stopping = run.stop or cancel_requested(run.run_dir)
                if accelerator.num_processes > 1:  # every rank must stop at the same step (checkpointing is collective)
                    flag = torch.tensor([float(stopping)], device=accelerator.device)
                    stopping = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
                if stopping or (step % cfg.save_steps == 0 and step < total):
                    seen.flush()
                    _save_checkpoint(run, stage, accelerator, position)
                if stopping:
                    write_status(run.run_dir, state="cancelled", step=step)
                    raise Cancelled
                if step >= total:
                    break
            epoch += 1
    finally:
        seen.close()
    for tracker in accelerator.trackers:  # not end_training(): it also tears down the process group
        tracker.finish()
    out = Path(cfg.output_dir) if si == len(cfg.stages) - 1 else Path(cfg.output_dir) / "stages" / stage.name
    write_status(run.run_dir, phase="saving")
    run.assembled = save_stage_model(accelerator, step_module, a.processor, out, cfg, stage)
    run.summaries[stage.name] = stage_summary(cfg, stage, sd, total, per_epoch)
    accelerator.free_memory()
    return out


def _save_untrained(run: Run, out: Path) -> None:
    """The last stage had nothing to train on: the model as the earlier stages left it is the result."""
    a = run.assembled
    assert a is not None
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        a.model.save_pretrained(str(out))
        a.processor.save_pretrained(str(out))


def run_training(cfg: TrainConfig) -> Path:
    preflight(cfg)
    if cfg.eval is not None:
        from synthgen.trainer.evaluation import check

        check(cfg.eval, cfg.output_dir)  # "evaluator not available" or a bad spec now, not after hours of training
    run = Run(cfg)

    def on_term(signum, frame) -> None:
        run.stop = True

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        write_status(run.run_dir, state="running", output_dir=cfg.output_dir, error=None)
        set_seed(cfg.seed)
        prev: str | None = None
        out = Path(cfg.output_dir)
        for si, stage in enumerate(cfg.stages):
            marker = run.run_dir / "stages" / f"{stage.name}.done.json"
            if cfg.resume and marker.exists():
                done = json.loads(marker.read_text())
                prev = done["model_dir"] or prev
                if done.get("summary"):
                    run.summaries[stage.name] = done["summary"]
                run.assembled = None
                log.info("stage %s already done (%s)", stage.name, prev)
                continue
            run.ensure_model(prev)
            last = si == len(cfg.stages) - 1
            sd = run.stage_data(stage)
            if len(sd.order) == 0:
                reason = "no rows with an image: a stage with the LM frozen learns nothing from text-only rows"
                log.warning("stage %s skipped: %s", stage.name, reason)
                write_status(run.run_dir, stage=stage.name, phase=f"stage {stage.name} skipped: {reason}")
                run.summaries[stage.name] = {**stage_summary(cfg, stage, sd, 0, 0), "skipped": reason}
                if last:
                    _save_untrained(run, out)
                    prev = str(out)
            else:
                out = run_stage(run, si, stage)
                prev = str(out)
            if is_main_process():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(json.dumps({"model_dir": prev, "summary": run.summaries.get(stage.name)},
                                             ensure_ascii=False))
            if cfg.deepspeed:
                run.assembled = None  # partitioned in place: reload the saved stage for the next one
        out = Path(prev) if prev else out
        if is_main_process():
            write_training_data(out, [run.summaries[s.name] for s in cfg.stages if s.name in run.summaries])
        if cfg.eval is not None and is_main_process():
            from synthgen.trainer.evaluation import run_eval

            run.assembled = None  # the evaluator loads the saved model itself: free this copy first
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            write_status(run.run_dir, phase="evaluating")
            write_status(run.run_dir, eval=run_eval(out, cfg.eval, run.run_dir / "eval"))
        if cfg.push_to_hub and is_main_process():  # one upload, not one per rank
            from synthgen.trainer.hub import push_model
            from synthgen.trainer.progress import read_status

            push_model(out, cfg.push_to_hub, cfg, read_status(run.run_dir).get("eval"))  # with a model card
        write_status(run.run_dir, state="succeeded", output_dir=str(out), phase="done")
        return out
    finally:
        signal.signal(signal.SIGTERM, previous)


TRAINING_DATA = "training_data.json"


def write_training_data(out: Path, stages: list[dict[str, Any]]) -> None:
    """<output_dir>/training_data.json: each stage's sources, counts and settings (the model card's data section)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / TRAINING_DATA).write_text(json.dumps({"stages": stages}, ensure_ascii=False, indent=1), encoding="utf-8")


def training_data(model_dir: Path) -> list[dict[str, Any]]:
    """The per-stage data a trained model folder records (empty when it records none)."""
    path = Path(model_dir) / TRAINING_DATA
    return json.loads(path.read_text(encoding="utf-8"))["stages"] if path.exists() else []
