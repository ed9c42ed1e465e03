"""Dedup on a planted Japanese corpus: exact and near duplicates (edited characters, full/half
width, reordered clauses, inserted punctuation) must be found with recall and precision >= 0.95."""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw

from synthgen.quality.dedup import Deduper, choose_bands
from synthgen.quality.normalize import exact_key_text, shingle_text
from synthgen.quality.planted import VARIANTS, planted_corpus


def measure(rows, **kw):
    d = Deduper(**kw)
    kept_cluster, drops = {}, []
    for r in rows:
        m = d.check(r["key"], r["question"] + "\n" + r["answer"])
        if m is None:
            kept_cluster[r["key"]] = r["cluster"]
        else:
            drops.append((r, m))
    d.close()
    expected = len(rows) - len({r["cluster"] for r in rows})
    correct = sum(1 for r, m in drops if kept_cluster[m.kept_key] == r["cluster"])
    return correct / expected, correct / max(1, len(drops)), drops, d.stats


def test_planted_duplicates_recall_and_precision():
    rows = planted_corpus(3000, dup_share=0.3, seed=7)
    kinds = {r["variant"] for r in rows}
    assert set(VARIANTS) <= kinds and "sibling" in kinds  # every kind planted, hard negatives too
    recall, precision, drops, stats = measure(rows)
    print(f"planted: {len(rows)} records, recall {recall:.4f} precision {precision:.4f} "
          f"(exact {stats.exact}, near {stats.near})")
    assert recall >= 0.95 and precision >= 0.95
    # every drop names the record it repeats, and that record was kept
    assert all(m.kept_key and m.similarity >= 0.8 for _, m in drops)
    # the variant kinds each get caught (not just exact copies)
    caught = {r["variant"] for r, _ in drops}
    assert {"exact", "edit", "width", "reorder", "punct", "mixed"} <= caught | {"original"}


def test_normalisation_folds_width_space_and_punctuation():
    assert exact_key_text("ＡＢＣ　１２３ です") == exact_key_text("abc123です")
    assert shingle_text("ﾃｽﾄ、です！") == shingle_text("テストです")
    d = Deduper()
    assert d.check("a", "りんごを３個 買いました。") is None
    m = d.check("b", "りんごを3個買いました。")
    assert m is not None and m.kind == "exact" and m.kept_key == "a"


def test_unrelated_texts_survive_and_bands_fit_the_threshold():
    d = Deduper()
    assert d.check("a", "東京の天気は晴れで、気温は二十度まで上がる見込みです。") is None
    assert d.check("b", "大阪では雨が降り続き、川の水位が上がっています。") is None
    assert d.stats.kept == 2
    assert choose_bands(0.8, 112) == 16 and 112 % choose_bands(0.7, 112) == 0


def _picture(seed: int, size: int = 128) -> Image.Image:
    rng = random.Random(seed)
    img = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x, y = rng.randrange(size), rng.randrange(size)
        draw.rectangle([x, y, x + rng.randrange(10, 60), y + rng.randrange(10, 60)],
                       fill=tuple(rng.randrange(256) for _ in range(3)))
    return img


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_images_by_perceptual_hash():
    d = Deduper()
    originals = [_picture(i) for i in range(20)]
    for i, img in enumerate(originals):
        assert d.check(f"img{i}", f"画像{i}の説明文はそれぞれ違います番号{i * 7919}", {"bytes": _jpeg(img)}) is None
    # the same picture re-encoded smaller and at lower quality, with a different caption
    for i, img in enumerate(originals[:10]):
        m = d.check(f"dup{i}", f"まったく別のキャプション{i}です、内容は異なります{i * 104729}",
                    _jpeg(img.resize((96, 96)), quality=60))
        assert m is not None and m.kind == "image" and m.kept_key == f"img{i}"
    assert d.stats.image == 10 and d.stats.kept == 20


def test_against_an_earlier_dataset():
    d = Deduper()
    d.check("old-1", "以前のデータセットにあった質問です。答えは三つあります。", source="runs/old")
    m = d.check("new-1", "以前のデータセットにあった質問です。答えは三つあります！")
    assert m is not None and m.kept_key == "old-1" and m.kept_in == "runs/old"
