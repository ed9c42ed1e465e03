"""Tokenized, mixed, optionally packed training examples with labels on assistant replies only.

Text is tokenized once up front (cheap, and it gives exact counts, drops and lengths); images are
read per batch in DataLoader workers, either as pixels (live vision tower) or as rows of the
feature cache (frozen tower, see features_cache.py).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from synthgen.trainer.chat_format import content_text, segments
from synthgen.trainer.config import DataConfig, SourceConfig
from synthgen.trainer.sources import ImageRef, Source

IGNORE = -100
MAX_SUBSTITUTES = 16
log = logging.getLogger(__name__)


class SkipRecord(ValueError):
    pass


@dataclass
class Encoder:
    tokenizer: Any
    image_token: str
    image_token_id: int
    num_image_tokens: int
    max_length: int
    system_prompt: str | None = None
    image_tokens_for: Callable[[ImageRef], int] | None = None  # anyres: the count depends on the image's size

    def __post_init__(self) -> None:
        tok = self.tokenizer
        bos = tok.bos_token_id
        self.prefix = [bos] if bos is not None and tok("x").input_ids[:1] == [bos] else []

    def encode(self, messages: list[dict[str, Any]] | None, has_image: bool,
               num_image_tokens: int | None = None) -> tuple[list[int], list[int]]:
        n_tokens = num_image_tokens or self.num_image_tokens
        if not messages:
            raise SkipRecord("no messages")
        if not any(m.get("role") == "assistant" for m in messages):
            raise SkipRecord("no assistant turn")
        if has_image and not any(self.image_token in content_text(m.get("content"), self.image_token) for m in messages):
            messages = _with_image_first(messages, self.image_token)
        ids, labels = list(self.prefix), [IGNORE] * len(self.prefix)
        n_images = 0
        for text, learn in segments(messages, self.tokenizer.eos_token, self.image_token, self.system_prompt):
            pieces = text.split(self.image_token)
            for k, piece in enumerate(pieces):
                if k:
                    n_images += 1
                    ids.extend([self.image_token_id] * n_tokens)
                    labels.extend([IGNORE] * n_tokens)
                if piece:
                    toks = self.tokenizer(piece, add_special_tokens=False).input_ids
                    ids.extend(toks)
                    labels.extend(toks if learn else [IGNORE] * len(toks))
        if n_images != int(has_image):
            raise SkipRecord(f"{n_images} image placeholders for {int(has_image)} images")
        if len(ids) > self.max_length:
            image_pos = [i for i, t in enumerate(ids) if t == self.image_token_id]
            if image_pos and image_pos[-1] >= self.max_length:
                raise SkipRecord("image tokens do not fit in max_length")
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        if all(lab == IGNORE for lab in labels):
            raise SkipRecord("no assistant tokens within max_length")
        return ids, labels


def _with_image_first(messages: list[dict[str, Any]], image_token: str) -> list[dict[str, Any]]:
    out = [dict(m) for m in messages]
    for m in out:
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            m["content"] = image_token + "\n" + m["content"]
            return out
    raise SkipRecord("image without a user turn to attach it to")


@dataclass
class Example:
    source: int
    row: int
    input_ids: np.ndarray
    labels: np.ndarray
    has_image: bool


@dataclass
class Corpus:
    sources: list[Source]
    examples: list[Example]
    order: np.ndarray  # indices into examples, after weighting (may repeat)
    skipped: Counter = field(default_factory=Counter)

    def image_ref(self, ex: Example) -> ImageRef | None:
        return self.sources[ex.source].image(ex.row) if ex.has_image else None


def build_corpus(cfg: DataConfig, encoder: Encoder, source_cfgs: list[SourceConfig] | None = None) -> Corpus:
    """Tokenize every source of a stage (default: data.sources) and lay out the weighted order."""
    sources = [Source(s) for s in (source_cfgs or cfg.sources)]
    examples: list[Example] = []
    skipped: Counter = Counter()
    per_source: list[list[int]] = []
    for si, src in enumerate(sources):
        mine = []
        has_images = src.image_flags()
        for row, msgs in enumerate(src.messages()):
            try:
                n_tokens = None
                if has_images[row] and encoder.image_tokens_for is not None and msgs:
                    try:
                        n_tokens = encoder.image_tokens_for(src.image(row))
                    except (OSError, ValueError) as exc:
                        raise SkipRecord("image unreadable") from exc
                ids, labels = encoder.encode(msgs, has_images[row], n_tokens)
            except SkipRecord as exc:
                skipped[str(exc)] += 1
                continue
            mine.append(len(examples))
            examples.append(Example(si, row, np.asarray(ids, np.int32), np.asarray(labels, np.int32), has_images[row]))
        per_source.append(mine)
        log.info("source %s: %d rows, %d usable", src.cfg.path, len(src), len(mine))
    if skipped:
        log.warning("skipped records: %s", dict(skipped))
    if not examples:
        raise ValueError(f"no usable training records (skipped: {dict(skipped)})")
    rng = np.random.default_rng(cfg.seed)
    order: list[int] = []
    for src, mine in zip(sources, per_source, strict=True):
        whole, frac = divmod(src.cfg.weight, 1.0)
        order.extend(mine * int(whole))
        extra = math.floor(frac * len(mine) + 0.5)
        if extra:
            order.extend(rng.choice(mine, size=extra, replace=False).tolist())
    return Corpus(sources, examples, np.asarray(order, np.int64), skipped)


def pack(corpus: Corpus, order: np.ndarray, max_length: int) -> list[list[int]]:
    """Greedy packing in order: consecutive examples share a row while they fit in max_length."""
    packs: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for idx in order.tolist():
        n = len(corpus.examples[idx].input_ids)
        if cur and used + n > max_length:
            packs.append(cur)
            cur, used = [], 0
        cur.append(idx)
        used += n
    if cur:
        packs.append(cur)
    return packs


class TrainDataset(torch.utils.data.Dataset):
    """Items are lists of example indices (one, or several when packing) for one epoch's order.

    `features` (a FeatureReader) replaces the image processor when the vision tower is frozen and
    its outputs are cached; `feature_rows[example]` is the cache row of that example's image.
    """

    def __init__(self, corpus: Corpus, items: list[list[int]], image_processor: Any = None,
                 features: Any = None, feature_rows: np.ndarray | None = None):
        self.corpus, self.items = corpus, items
        self.image_processor, self.features, self.feature_rows = image_processor, features, feature_rows

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """An unreadable image costs its item, replaced by the next one: the batch and the run go on."""
        for attempt in range(MAX_SUBSTITUTES + 1):
            j = (i + attempt) % len(self.items)
            try:
                return self._item(j)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("item %d skipped (%s: %s); using item %d", j, type(exc).__name__, exc,
                            (j + 1) % len(self.items))
        raise RuntimeError(f"{MAX_SUBSTITUTES + 1} items in a row failed to load near item {i}")

    def _item(self, i: int) -> dict[str, Any]:
        ids, labels, pos, images = [], [], [], []
        for idx in self.items[i]:
            ex = self.corpus.examples[idx]
            ids.append(ex.input_ids)
            labels.append(ex.labels)
            pos.append(np.arange(len(ex.input_ids)))
            if ex.has_image:
                if self.features is not None:
                    images.append(self.features.read(self.feature_rows[idx]))
                else:
                    images.append(self.corpus.image_ref(ex).load())
        item: dict[str, Any] = {"input_ids": torch.from_numpy(np.concatenate(ids).astype(np.int64)),
                                "labels": torch.from_numpy(np.concatenate(labels).astype(np.int64)),
                                "example_ids": torch.tensor(self.items[i], dtype=torch.long)}
        if len(self.items[i]) > 1:
            item["position_ids"] = torch.from_numpy(np.concatenate(pos))
        if images and self.features is not None:
            item["vision_features"] = torch.from_numpy(np.stack(images))
        elif images:
            processed = self.image_processor(images, return_tensors="pt")
            item["pixel_values"] = processed["pixel_values"]
            if "image_sizes" in processed:  # anyres (LLaVA-NeXT): tiles per image depend on its size
                item["image_sizes"] = torch.as_tensor(processed["image_sizes"])
        return item


def stage_order(corpus: Corpus, needs_images: bool) -> tuple[np.ndarray, int]:
    """The weighted order a stage trains on, and how many text-only rows it leaves out.

    A stage that trains neither the LM nor anything the text passes through (projector and/or
    tower only) gets no gradient from a text-only row: such rows are dropped up front (and
    counted) instead of producing a loss with no grad path — the `element 0 of tensors does
    not require grad` crash — or diluting the image rows' loss in a mixed batch.
    """
    if not needs_images:
        return corpus.order, 0
    keep = np.fromiter((corpus.examples[i].has_image for i in corpus.order.tolist()), bool, len(corpus.order))
    return corpus.order[keep], int((~keep).sum())


def epoch_items(corpus: Corpus, epoch: int, seed: int, packing: bool, max_length: int,
                order: np.ndarray | None = None) -> list[list[int]]:
    base = corpus.order if order is None else order
    perm = base[np.random.default_rng([seed, epoch]).permutation(len(base))]
    return pack(corpus, perm, max_length) if packing else [[int(i)] for i in perm]


def collate(batch: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    n = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for r, b in enumerate(batch):
        k = len(b["input_ids"])
        ids[r, :k], labels[r, :k], mask[r, :k] = b["input_ids"], b["labels"], 1
    out = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    if any("position_ids" in b for b in batch):
        # Packed rows: positions restart per example and no 2-D mask is passed, which makes
        # transformers build a block-diagonal causal mask (examples never see each other).
        # Padding gets position 0 everywhere, so each pad token is its own one-token "example".
        pos = torch.zeros((len(batch), n), dtype=torch.long)
        for r, b in enumerate(batch):
            k = len(b["input_ids"])
            pos[r, :k] = b.get("position_ids", torch.arange(k))
        out["position_ids"] = pos
        del out["attention_mask"]
    for key in ("pixel_values", "vision_features", "image_sizes"):
        parts = [b[key] for b in batch if key in b]
        if parts and key == "pixel_values" and parts[0].dim() == 5:  # anyres: pad the tile axis (unread beyond a size's tiles)
            most = max(p.shape[1] for p in parts)
            parts = [torch.nn.functional.pad(p, (0, 0, 0, 0, 0, 0, 0, most - p.shape[1])) for p in parts]
        if parts:
            out[key] = torch.cat(parts)
    out["example_ids"] = torch.cat([b["example_ids"] for b in batch if "example_ids" in b] or [torch.zeros(0, dtype=torch.long)])
    return out
