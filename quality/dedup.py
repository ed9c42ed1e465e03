"""Exact and near-duplicate detection for Japanese text, and perceptual-hash image dedup.

Word shingles fail on Japanese (no spaces), so near duplicates are found by MinHash LSH on
character n-grams (5-grams by default, as the Japanese corpus builders use) of the normalised
question + answer, punctuation removed. LSH candidates are confirmed by the signatures' estimated
Jaccard against the threshold, so a band collision alone never drops a record. The first record
of a cluster is kept; every later one is dropped with the kept record's key as its cluster.

Memory stays bounded for a million records: the exact index holds one 64-bit hash per kept
record, the LSH index (rensa, Rust) holds band hashes, and the kept signatures used to confirm
candidates live in a disk-backed memmap rather than in RAM.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
from rensa import RMinHash, RMinHashLSH

from synthgen.quality.normalize import char_ngrams, exact_key_text, shingle_text

CHUNK_ROWS = 65536


def choose_bands(threshold: float, num_perm: int, min_recall: float = 0.97) -> int:
    """The fewest LSH bands (of those dividing num_perm) that make a pair at exactly the
    threshold a candidate with probability >= min_recall; fewer bands means fewer false
    candidates to confirm."""
    for bands in range(1, num_perm + 1):
        if num_perm % bands:
            continue
        rows = num_perm // bands
        if 1 - (1 - threshold ** rows) ** bands >= min_recall:
            return bands
    return num_perm


@dataclass(frozen=True)
class Match:
    """Why a record is a duplicate: which kept record (key) it repeats, and how closely."""

    kind: str  # "exact" | "near" | "image"
    kept_key: str
    similarity: float
    kept_in: str | None = None  # an earlier dataset, when the kept record is not in this one


class _SignatureStore:
    """Kept records' MinHash signatures in fixed-size memmapped chunks under a temp folder."""

    def __init__(self, num_perm: int, folder: Path) -> None:
        self.num_perm = num_perm
        self.folder = folder
        self.chunks: list[np.memmap] = []
        self.size = 0

    def append(self, digest: list[int]) -> int:
        row = self.size
        if row // CHUNK_ROWS >= len(self.chunks):
            path = self.folder / f"sig-{len(self.chunks):05d}.u32"
            self.chunks.append(np.memmap(path, dtype=np.uint32, mode="w+", shape=(CHUNK_ROWS, self.num_perm)))
        self.chunks[row // CHUNK_ROWS][row % CHUNK_ROWS] = digest
        self.size += 1
        return row

    def get(self, row: int) -> np.ndarray:
        return self.chunks[row // CHUNK_ROWS][row % CHUNK_ROWS]


@dataclass
class DedupStats:
    exact: int = 0
    near: int = 0
    image: int = 0
    kept: int = 0
    candidates_checked: int = 0
    cluster_sizes: dict[str, int] = field(default_factory=dict)  # kept key -> records in its cluster

    def biggest_clusters(self, k: int = 20) -> list[tuple[str, int]]:
        return sorted(self.cluster_sizes.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


class Deduper:
    """Feed records in order; `check` says whether a record repeats one kept earlier."""

    def __init__(self, *, threshold: float = 0.8, ngram: int = 5, num_perm: int = 112, bands: int | None = None,
                 seed: int = 1, image_distance: int = 2, workdir: str | Path | None = None) -> None:
        self.threshold = threshold
        self.ngram = ngram
        self.num_perm = num_perm
        self.seed = seed
        self.bands = bands or choose_bands(threshold, num_perm)
        self.lsh = RMinHashLSH(threshold=threshold, num_perm=num_perm, num_bands=self.bands)
        self._tmp = tempfile.TemporaryDirectory(prefix="synthgen-dedup-", dir=workdir)
        self.sigs = _SignatureStore(num_perm, Path(self._tmp.name))
        self.exact: dict[int, int] = {}  # xxh64 of the exact text -> kept id
        self.kept_keys: list[str] = []  # kept id -> record key
        self.kept_from: dict[int, str] = {}  # kept id -> earlier dataset name (references only)
        self.image_distance = image_distance
        self._image_hashes: list[int] = []
        self._image_ids: list[int] = []
        self._image_buckets: list[dict[int, list[int]]] = [{} for _ in range(image_distance + 1)]
        self.stats = DedupStats()

    def close(self) -> None:
        self.sigs.chunks.clear()
        self._tmp.cleanup()

    # -- text ---------------------------------------------------------------------------------
    def _signature(self, text: str) -> RMinHash:
        mh = RMinHash(num_perm=self.num_perm, seed=self.seed)
        grams = char_ngrams(shingle_text(text), self.ngram)
        if grams:
            mh.update(grams)
        return mh

    def _near(self, mh: RMinHash, digest: np.ndarray) -> tuple[int, float] | None:
        best: tuple[int, float] | None = None
        for cand in self.lsh.query(mh):
            self.stats.candidates_checked += 1
            sim = float(np.count_nonzero(self.sigs.get(cand) == digest)) / self.num_perm
            if sim >= self.threshold and (best is None or sim > best[1]):
                best = (cand, sim)
        return best

    def _find_text(self, text: str) -> tuple[Match | None, tuple[int, RMinHash, np.ndarray]]:
        exact = xxhash.xxh64_intdigest(exact_key_text(text).encode())
        mh = None
        hit = self.exact.get(exact)
        if hit is not None:
            return self._dropped("exact", hit, 1.0), (exact, mh, None)  # type: ignore[return-value]
        mh = self._signature(text)
        digest = np.asarray(mh.digest(), dtype=np.uint32)
        near = self._near(mh, digest)
        if near is not None:
            return self._dropped("near", near[0], near[1]), (exact, mh, digest)
        return None, (exact, mh, digest)

    def _dropped(self, kind: str, kept: int, similarity: float) -> Match:
        kept_key = self.kept_keys[kept]
        setattr(self.stats, kind, getattr(self.stats, kind) + 1)
        sizes = self.stats.cluster_sizes
        sizes[kept_key] = sizes.get(kept_key, 1) + 1
        return Match(kind, kept_key, round(similarity, 4), self.kept_from.get(kept))

    # -- images -------------------------------------------------------------------------------
    def _image_parts(self, h: int) -> list[int]:
        """Split the 64-bit hash into distance+1 parts: two hashes within `distance` bits
        agree exactly on at least one part (pigeonhole), so parts are exact-match buckets."""
        parts = self.image_distance + 1
        width = 64 // parts
        out = []
        for i in range(parts):
            lo = i * width
            hi = 64 if i == parts - 1 else lo + width
            out.append((h >> lo) & ((1 << (hi - lo)) - 1))
        return out

    def _find_image(self, h: int) -> Match | None:
        for i, part in enumerate(self._image_parts(h)):
            for pos in self._image_buckets[i].get(part, ()):
                dist = (self._image_hashes[pos] ^ h).bit_count()
                if dist <= self.image_distance:
                    return self._dropped("image", self._image_ids[pos], 1 - dist / 64)
        return None

    # -- one record ---------------------------------------------------------------------------
    def check(self, key: str, text: str | None, image: Any = None, *, source: str | None = None) -> Match | None:
        """A duplicate's Match (text: exact, then near; then the image), or None after indexing
        the record as the keeper of a new cluster. Nothing is indexed for a dropped record."""
        pending = None
        if text:
            match, pending = self._find_text(text)
            if match is not None:
                return match
        h = image_phash(image) if image is not None and self.image_distance >= 0 else None
        if h is not None:
            match = self._find_image(h)
            if match is not None:
                return match
        if pending is None and h is None:
            return None  # nothing to compare by: kept, not indexed
        exact, mh, digest = pending if pending is not None else (None, None, None)
        kept = self.sigs.append(digest if digest is not None else np.zeros(self.num_perm, dtype=np.uint32))
        self.kept_keys.append(key)
        if source is not None:
            self.kept_from[kept] = source
        if exact is not None:
            self.exact[exact] = kept
            self.lsh.insert(kept, mh)
        if h is not None:
            pos = len(self._image_hashes)
            self._image_hashes.append(h)
            self._image_ids.append(kept)
            for i, part in enumerate(self._image_parts(h)):
                self._image_buckets[i].setdefault(part, []).append(pos)
        self.stats.kept += 1
        return None


def image_phash(image: Any) -> int | None:
    """64-bit pHash of an image given as bytes, a {bytes, path} struct or a PIL image."""
    import imagehash
    from PIL import Image

    if isinstance(image, dict):
        data = image.get("bytes")
        if data is None and image.get("path"):
            data = Path(image["path"]).read_bytes()
        image = data
    if image is None:
        return None
    if isinstance(image, bytes | bytearray | memoryview):
        try:
            image = Image.open(io.BytesIO(bytes(image)))
            image.load()
        except Exception:  # an undecodable image is for the filters to judge, not dedup
            return None
    return int(str(imagehash.phash(image)), 16)
