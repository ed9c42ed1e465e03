"""Stage-1 step time with live vs cached vision features, on a pair scaled down with real proportions.

The real pair is SigLIP-so400m-384 (729 patch tokens) in front of a 1B Llama-style LM (TinyLlama
dims) on 729 image + ~128 text tokens. Both are cut so a 2-core CPU can step them: token counts
by 9 (81 patches from 126 px / 14 px patches, text scaled alike) and widths/depths so that the
vision tower's share of a stage-1 step's FLOPs (tower forward; LM forward + input-gradient
backward; projector forward + backward) matches the real pair's. Both shares are printed.

Then, in one process and interleaved in rounds (the machine is shared), it times: a full stage-1
step fed by the live tower (DataLoader decodes and preprocesses images), a step fed by the on-disk
feature cache (DataLoader reads memory-mapped rows), and the tower's forward alone on the same
batch. The last line is JSON with live_sps, cached_sps, vision_s, speedup and
saving_efficiency = (live step - cached step) / vision forward: 1.0 means the cache removes the
tower's whole cost and adds nothing of its own.

`--gpu-mfu` instead times stage 2 (projector + full LM, cached features) on a ~1B random-weight
config in bf16 on the GPU and reports tokens/s and MFU (model FLOPs / peak dense bf16 FLOPs).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REAL_IMAGE_TOKENS, REAL_TEXT_TOKENS = 729, 128
SCALE = 9
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "B200": 2250e12}


def siglip_so400m(**kw):
    from transformers import SiglipVisionConfig

    base = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                image_size=384, patch_size=14)
    base.update(kw)
    return SiglipVisionConfig(**base)


def llama_1b(**kw):
    from transformers import LlamaConfig

    base = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                num_key_value_heads=4, vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=False)
    base.update(kw)
    return LlamaConfig(**base)


def count_params(config, cls) -> int:
    with torch.device("meta"):
        model = cls(config)
    return sum(p.numel() for p in model.parameters())


def forward_flops(params: int, layers: int, width: int, tokens: int, attn_tokens: int | None = None) -> float:
    """Matmul FLOPs of one sequence's forward: 2 per parameter per token plus attention scores/values."""
    return 2.0 * params * tokens + 4.0 * layers * tokens * (attn_tokens or tokens) * width


def stage1_share(vcfg, lcfg, image_tokens: int, text_tokens: int) -> dict[str, float]:
    from transformers import LlamaModel, SiglipVisionModel

    pv = count_params(vcfg, SiglipVisionModel)
    pl = count_params(lcfg, LlamaModel) - lcfg.vocab_size * lcfg.hidden_size  # embedding lookup is not a matmul
    head = lcfg.vocab_size * lcfg.hidden_size
    n = image_tokens + text_tokens
    patches = (vcfg.image_size // vcfg.patch_size) ** 2  # SigLIP: no CLS, every patch is an image token
    fv = forward_flops(pv, vcfg.num_hidden_layers, vcfg.hidden_size, patches)
    fl = forward_flops(pl, lcfg.num_hidden_layers, lcfg.hidden_size, n) + 2.0 * head * n
    proj = vcfg.hidden_size * lcfg.hidden_size + lcfg.hidden_size ** 2
    fp = 2.0 * proj * image_tokens
    step = fv + 2 * fl + 3 * fp  # frozen LM: forward + input-gradient backward; projector: fwd + bwd
    return {"vision_params": pv, "lm_params": pl + head, "vision_flops": fv, "step_flops": step,
            "vision_share": fv / step}


def scaled_pair(text_tokens: int, target_share: float, vocab: int):
    """Small SigLIP + Llama with the LM depth chosen so the vision share matches the real pair's."""
    image = 126  # 9x9 patches of 14 px
    vcfg = siglip_so400m(hidden_size=192, intermediate_size=768, num_hidden_layers=6, num_attention_heads=3,
                         image_size=image)
    best = None
    for layers in range(1, 40):
        lcfg = llama_1b(hidden_size=256, intermediate_size=688, num_hidden_layers=layers, num_attention_heads=4,
                        num_key_value_heads=4, vocab_size=vocab, max_position_embeddings=512)
        share = stage1_share(vcfg, lcfg, (image // 14) ** 2, text_tokens)
        if best is None or abs(share["vision_share"] - target_share) < abs(best[2]["vision_share"] - target_share):
            best = (vcfg, lcfg, share)
    return best


def cpu_bench(args, work: Path) -> dict:
    from accelerate import Accelerator

    from synthgen.trainer import smoke
    from synthgen.trainer import train as T
    from synthgen.trainer.assemble import vision_features
    from synthgen.trainer.config import TrainConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    real = stage1_share(siglip_so400m(), llama_1b(), REAL_IMAGE_TOKENS, REAL_TEXT_TOKENS)
    tok = smoke.train_tokenizer(smoke.shapes_corpus(), work / "tok")
    probe = smoke.shapes_rows(8, seed=0)["messages"]
    from synthgen.trainer.chat_format import render

    text_tokens = round(statistics.mean(len(tok(render(m, tok.eos_token, "")).input_ids) for m in probe))
    vcfg, lcfg, scaled = scaled_pair(text_tokens, real["vision_share"], len(tok))
    smoke.save_vision(work / "v", "siglip", image_size=vcfg.image_size, patch_size=14, hidden=vcfg.hidden_size,
                      layers=vcfg.num_hidden_layers, heads=vcfg.num_attention_heads,
                      intermediate=vcfg.intermediate_size)
    smoke.save_lm(work / "lm", smoke.shapes_corpus(), hidden=lcfg.hidden_size, layers=lcfg.num_hidden_layers,
                  heads=lcfg.num_attention_heads, intermediate=lcfg.intermediate_size)
    smoke.save_shapes_dataset(work / "ds", args.images, size=vcfg.image_size)
    cfg = TrainConfig.model_validate({
        "model": {"vision": str(work / "v"), "lm": str(work / "lm")},
        "data": {"sources": [{"path": str(work / "ds")}], "max_length": 256, "num_workers": args.workers,
                 "prefetch_factor": 4},
        "stages": [{"name": "pretrain", "learning_rate": 1e-3, "batch_size": args.batch, "max_steps": 10 ** 6}],
        "output_dir": str(work / "out"), "precision": "fp32", "report_to": []})
    run = T.Run(cfg)
    a = run.ensure_model(None)
    acc = Accelerator(cpu=True)
    stage = cfg.stages[0]
    llava = T.apply_stage(a.model, stage)
    sd = run.stage_data(stage)
    t = time.perf_counter()
    features = T._feature_rows(run, acc, sd)
    cache_build = time.perf_counter() - t
    step_module = T.StepModule(llava).train()
    opt = torch.optim.AdamW([p for p in llava.parameters() if p.requires_grad], lr=1e-3)

    def batches(feats):
        epoch = 0
        while True:
            yield from T._loader(run, stage, epoch, acc, feats, sd)
            epoch += 1

    live_it, cached_it = batches(None), batches(features)

    def step(it):
        batch = next(it)
        loss = step_module(**batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    pixels = next(live_it)["pixel_values"]

    def vision():
        vision_features(llava, pixels)

    for _ in range(3):  # warm up (workers start, allocator settles)
        step(live_it), step(cached_it), vision()
    # interleaved step by step, so the three see the same machine load; wall and CPU time both kept
    live, cached, vis, cpu = [], [], [], {"live": [], "cached": [], "vision": []}
    for _ in range(args.rounds * args.steps):
        for name, fn, out in (("live", lambda: step(live_it), live), ("cached", lambda: step(cached_it), cached),
                              ("vision", vision, vis)):
            c, t = time.process_time(), time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    t_live, t_cached, t_vis = statistics.median(live), statistics.median(cached), statistics.median(vis)
    print(f"real pair   : vision {real['vision_params'] / 1e6:.0f}M params, LM {real['lm_params'] / 1e6:.0f}M, "
          f"{REAL_IMAGE_TOKENS}+{REAL_TEXT_TOKENS} tokens -> vision share of a stage-1 step {real['vision_share']:.3f}")
    print(f"scaled pair : vision {scaled['vision_params'] / 1e6:.2f}M, LM {scaled['lm_params'] / 1e6:.2f}M "
          f"({lcfg.num_hidden_layers} layers), {(vcfg.image_size // 14) ** 2}+{text_tokens} tokens -> "
          f"vision share {scaled['vision_share']:.3f}")
    print(f"batch {args.batch}, {args.rounds * args.steps} interleaved steps each, threads {args.threads}, workers {args.workers}; "
          f"cache build {cache_build:.2f}s for {args.images} images")
    print("live ms  :", " ".join(f"{x * 1e3:.0f}" for x in live))
    print("cached ms:", " ".join(f"{x * 1e3:.0f}" for x in cached))
    print("vision ms:", " ".join(f"{x * 1e3:.0f}" for x in vis))
    print(f"step live {t_live * 1e3:.1f} ms, step cached {t_cached * 1e3:.1f} ms, vision forward {t_vis * 1e3:.1f} ms")
    c_live, c_cached, c_vis = (statistics.median(cpu[k]) for k in ("live", "cached", "vision"))
    print(f"main-process CPU time: live {c_live * 1e3:.1f} ms, cached {c_cached * 1e3:.1f} ms, vision {c_vis * 1e3:.1f} ms "
          f"-> saving efficiency {(c_live - c_cached) / c_vis:.2f} (less sensitive to other load; excludes worker CPU)")
    return {"live_sps": 1 / t_live, "cached_sps": 1 / t_cached, "vision_s": t_vis, "speedup": t_live / t_cached,
            "saving_efficiency": (t_live - t_cached) / t_vis, "vision_share_real": real["vision_share"],
            "vision_share_scaled": scaled["vision_share"], "measured_vision_share": t_vis / t_live,
            "saving_efficiency_cpu": (c_live - c_cached) / c_vis}


def gpu_mfu(args) -> dict:
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from synthgen.trainer import train as T
    from synthgen.trainer.config import StageConfig

    device = torch.device(args.device)
    tiny = args.tiny
    vcfg = siglip_so400m(**({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                             "num_attention_heads": 2, "image_size": 56} if tiny else {}))
    lcfg = llama_1b(**({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                        "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 500} if tiny else {}))
    image_tokens = (vcfg.image_size // vcfg.patch_size) ** 2
    cfg = LlavaConfig(vision_config=vcfg, text_config=lcfg, image_token_index=lcfg.vocab_size - 1,
                      image_seq_length=image_tokens, vision_feature_select_strategy="full", vision_feature_layer=-2)
    torch.manual_seed(0)
    # As the trainer runs it: fp32 master weights under bf16 autocast (accelerate's mixed precision);
    # --pure-bf16 keeps the weights and optimizer state in bf16 instead.
    bf16 = device.type == "cuda"
    dtype = torch.bfloat16 if bf16 and args.pure_bf16 else torch.float32
    with device:
        model = LlavaForConditionalGeneration(cfg).to(dtype)
    stage = StageConfig(name="finetune", train_lm="full", learning_rate=2e-5)
    llava = T.apply_stage(model, stage)
    if args.gradient_checkpointing:
        llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    step_module = T.StepModule(llava).train()
    params = [p for p in llava.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-5, fused=device.type == "cuda")
    b, text = args.batch, REAL_TEXT_TOKENS
    n = image_tokens + text
    ids = torch.randint(0, lcfg.vocab_size - 2, (b, n), device=device)
    ids[:, 1:1 + image_tokens] = cfg.image_token_index
    labels = ids.clone()
    labels[:, : 1 + image_tokens] = -100
    feats = torch.randn(b, image_tokens, vcfg.hidden_size, device=device, dtype=torch.bfloat16 if bf16 else dtype)
    mask = torch.ones_like(ids)
    fwd = step_module
    if args.compile:
        fwd = torch.compile(step_module)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = fwd(input_ids=ids, attention_mask=mask, labels=labels, vision_features=feats)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    dt = (time.perf_counter() - t) / args.steps
    from transformers import LlamaModel

    pl = count_params(lcfg, LlamaModel) - lcfg.vocab_size * lcfg.hidden_size
    head = lcfg.vocab_size * lcfg.hidden_size
    proj = vcfg.hidden_size * lcfg.hidden_size + lcfg.hidden_size ** 2
    fwd_flops = b * (forward_flops(pl, lcfg.num_hidden_layers, lcfg.hidden_size, n) + 2.0 * head * n
                     + 2.0 * proj * image_tokens)
    model_flops = 3 * fwd_flops  # forward + backward (input and weight gradients)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    print(f"{name}: stage 2 (projector + full LM, cached features, {'bf16 weights' if dtype == torch.bfloat16 else 'fp32 weights + bf16 autocast' if bf16 else 'fp32'}), LM {(pl + head) / 1e9:.2f}B params, batch {b} x "
          f"{n} tokens, {dt * 1e3:.1f} ms/step, peak memory "
          f"{(torch.cuda.max_memory_allocated() / 2 ** 30) if device.type == 'cuda' else 0:.1f} GiB")
    return {"tokens_per_s": b * n / dt, "step_s": dt, "model_tflops": model_flops / dt / 1e12,
            "mfu": (model_flops / dt / peak) if peak else None, "device": name}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gpu-mfu", action="store_true", help="stage-2 tokens/s and MFU on a ~1B config (GPU)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="--gpu-mfu with tiny dims (a CPU smoke check of the mode)")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--pure-bf16", action="store_true", help="bf16 weights and optimizer state (no fp32 master)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=192)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.gpu_mfu:
        args.batch, args.steps = args.batch or 8, args.steps or 10
        result = gpu_mfu(args)
    else:
        args.batch, args.steps = args.batch or 4, args.steps or 8
        with tempfile.TemporaryDirectory(prefix="bench-train-") as work:
            result = cpu_bench(args, Path(work))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
