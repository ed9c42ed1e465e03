"""A seeded Japanese Q&A corpus with planted exact and near duplicates, for measuring dedup.

Each base record is composed from independent random slots (people, places, things, numbers,
several sentence shapes), so two base records share little beyond particles. Variants copy a
base record and change it the way generated data repeats itself: a few characters edited,
full-/half-width forms, clauses reordered, punctuation or spaces inserted. The ground truth
(`cluster`) says which records repeat which, so recall and precision can be measured exactly.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from typing import Any

PEOPLE = ["田中さん", "佐藤さん", "鈴木先生", "高橋くん", "伊藤さん", "渡辺部長", "山本さん", "中村選手", "小林さん",
          "加藤店長", "吉田さん", "山田博士", "佐々木さん", "松本さん", "井上さん", "木村監督", "林さん", "清水さん",
          "山崎さん", "森さん", "池田さん", "橋本さん", "阿部さん", "石川さん", "前田さん", "藤田さん", "岡田さん"]
PLACES = ["駅前のパン屋", "市立図書館", "港の魚市場", "山奥の温泉宿", "大学の研究室", "商店街の八百屋", "空港の売店",
          "駅ビルの本屋", "海辺のカフェ", "町の郵便局", "体育館", "美術館の受付", "工場の倉庫", "公園の売店",
          "病院の待合室", "神社の境内", "牧場の牛舎", "漁港の加工場", "農協の直売所", "映画館のロビー"]
THINGS = ["りんご", "鉛筆", "ノート", "おにぎり", "切手", "電池", "傘", "封筒", "消しゴム", "牛乳パック", "花の苗",
          "ボールペン", "みかん", "卵", "画用紙", "植木鉢", "段ボール箱", "ネジ", "ペットボトル", "絵はがき",
          "文庫本", "湯のみ", "手ぬぐい", "竹かご", "風鈴"]
VERBS = [("買い", "買った"), ("並べ", "並べた"), ("運び", "運んだ"), ("配り", "配った"), ("数え", "数えた"),
         ("仕入れ", "仕入れた"), ("売り", "売った"), ("詰め", "詰めた"), ("集め", "集めた"), ("届け", "届けた")]
WHEN = ["月曜日の朝", "雨の降る午後", "夏休みの初日", "年末の大掃除の日", "開店直後", "閉店間際", "日曜日の夕方",
        "祭りの前日", "台風が過ぎた翌朝", "始業式の日", "連休の最終日", "冬至の夜"]
REASONS = ["町内会の行事で使うため", "来週の展示会に備えて", "孫への贈り物にするため", "在庫を整理するため",
           "近所の子どもたちに配るため", "新しい企画の試作品として", "季節の売り出しに合わせて",
           "学校の授業で使う教材として", "常連客から頼まれたので", "災害時の備えとして"]
ASKS = ["全部でいくつになりますか。", "残りはいくつですか。", "一人あたり何個になりますか。", "合計の代金はいくらですか。",
        "何箱必要になりますか。", "余りはいくつ出ますか。"]

_SPLIT = "。"
_FULL = {i: i + 0xFEE0 for i in range(0x21, 0x7F)}
_HALF_KANA = {"ア": "ｱ", "イ": "ｲ", "ウ": "ｳ", "エ": "ｴ", "オ": "ｵ", "カ": "ｶ", "キ": "ｷ", "ク": "ｸ", "ケ": "ｹ",
              "コ": "ｺ", "サ": "ｻ", "シ": "ｼ", "ス": "ｽ", "セ": "ｾ", "ソ": "ｿ", "タ": "ﾀ", "チ": "ﾁ", "ツ": "ﾂ",
              "テ": "ﾃ", "ト": "ﾄ", "ナ": "ﾅ", "ニ": "ﾆ", "ヌ": "ﾇ", "ネ": "ﾈ", "ノ": "ﾉ", "ハ": "ﾊ", "ヒ": "ﾋ",
              "フ": "ﾌ", "ヘ": "ﾍ", "ホ": "ﾎ", "マ": "ﾏ", "ミ": "ﾐ", "ム": "ﾑ", "メ": "ﾒ", "モ": "ﾓ", "ヤ": "ﾔ",
              "ユ": "ﾕ", "ヨ": "ﾖ", "ラ": "ﾗ", "リ": "ﾘ", "ル": "ﾙ", "レ": "ﾚ", "ロ": "ﾛ", "ワ": "ﾜ", "ン": "ﾝ",
              "ー": "ｰ", "ボ": "ﾎﾞ", "ペ": "ﾍﾟ", "ビ": "ﾋﾞ", "ダ": "ﾀﾞ", "ジ": "ｼﾞ", "ガ": "ｶﾞ"}
_EDIT_CHARS = "あいうえおかきくけこさしすせそたちつてとなにぬねの日本語文章"


def _slots(rng: random.Random) -> dict[str, Any]:
    who, who2 = rng.sample(PEOPLE, 2)
    return {"who": who, "who2": who2, "place": rng.choice(PLACES), "thing": rng.choice(THINGS),
            "verb": rng.choice(VERBS)[0], "when": rng.choice(WHEN), "reason": rng.choice(REASONS)}


def base_record(rng: random.Random, slots: dict[str, Any] | None = None) -> dict[str, str]:
    """A record from random slots; given `slots` (a sibling) only the numbers and order change,
    which makes a hard negative: same people, place and wording, a different problem."""
    s = slots or _slots(rng)
    who, who2, place, thing, verb = s["who"], s["who2"], s["place"], s["thing"], s["verb"]
    a, b, c = rng.randint(12, 980), rng.randint(2, 60), rng.randint(3, 40)
    price = rng.randint(5, 120) * 10
    sentences = [
        f"{s['when']}、{who}は{place}で{thing}を{a}個{verb}ました",
        f"{s['reason']}、そのうち{b}個を{who2}に渡しました",
        f"さらに{thing}は一つ{price}円で、箱には{c}個ずつ入ります",
    ]
    rng.shuffle(sentences)
    question = _SPLIT.join(sentences) + _SPLIT + rng.choice(ASKS)
    answer = (f"まず{a}個から{b}個を引くと{a - b}個です。次に{c}個ずつ箱に分けると{(a - b) // c}箱と余り{(a - b) % c}個"
              f"になります。代金は{a}×{price}で{a * price}円です。したがって答えは{a - b}個、{a * price}円です。")
    return {"question": question, "answer": answer}


def _edit(rng: random.Random, text: str, k: int) -> str:
    chars = list(text)
    for _ in range(k):
        i = rng.randrange(len(chars))
        chars[i] = rng.choice(_EDIT_CHARS)
    return "".join(chars)


def _width(rng: random.Random, text: str) -> str:
    out = text.translate(_FULL) if rng.random() < 0.5 else text  # ASCII/digits to full width
    out = "".join(_HALF_KANA.get(ch, ch) for ch in out)  # katakana to half width
    return out.replace("、", " 、 ") if rng.random() < 0.5 else out


def _reorder(rng: random.Random, text: str) -> str:
    parts = [p for p in text.split(_SPLIT) if p]
    if len(parts) >= 3:
        head = parts[:-1]
        i = rng.randrange(len(head) - 1)
        head[i], head[i + 1] = head[i + 1], head[i]
        parts = [*head, parts[-1]]
    return _SPLIT.join(parts) + _SPLIT


def _punct(rng: random.Random, text: str, k: int) -> str:
    chars = list(text)
    for _ in range(k):
        chars.insert(rng.randrange(len(chars) + 1), rng.choice("、。！？・…「」 "))
    return "".join(chars)


VARIANTS = ("exact", "edit", "width", "reorder", "punct", "mixed")


def variant(rng: random.Random, rec: dict[str, str], kind: str) -> dict[str, str]:
    q, a = rec["question"], rec["answer"]
    if kind == "exact":
        return {"question": q, "answer": a}
    if kind == "edit":
        return {"question": _edit(rng, q, 1), "answer": _edit(rng, a, 1)}
    if kind == "width":
        return {"question": _width(rng, q), "answer": _width(rng, a)}
    if kind == "reorder":
        return {"question": _reorder(rng, q), "answer": a}
    if kind == "punct":
        return {"question": _punct(rng, q, 3), "answer": _punct(rng, a, 2)}
    return {"question": _punct(rng, _width(rng, _edit(rng, q, 1)), 1), "answer": _width(rng, a)}


def planted_corpus(n_base: int, dup_share: float = 0.3, seed: int = 0,
                   sibling_share: float = 0.2) -> list[dict[str, Any]]:
    """n_base distinct records plus about dup_share * n_base planted repeats (1-3 per chosen
    base record, every variant kind), shuffled; each row says its `cluster` and `variant`.
    About sibling_share of the base records are hard negatives: a sibling of the previous
    record with the same slots and other numbers (its own cluster, not a duplicate)."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    slots: dict[str, Any] | None = None
    for i in range(n_base):
        sibling = slots is not None and rng.random() < sibling_share
        if not sibling:
            slots = _slots(rng)
        base = base_record(rng, slots)
        rows.append({**base, "cluster": i, "variant": "sibling" if sibling else "original"})
        if rng.random() < dup_share:
            for _ in range(rng.randint(1, 3)):
                kind = VARIANTS[len(rows) % len(VARIANTS)]
                rows.append({**variant(rng, base, kind), "cluster": i, "variant": kind})
    rng.shuffle(rows)
    for j, row in enumerate(rows):
        row["key"] = hashlib.blake2b(f"{seed}:{j}".encode(), digest_size=16).hexdigest()
    return rows


def japanese_records(n: int, seed: int = 0) -> Iterator[dict[str, str]]:
    """n distinct generated Japanese Q&A records (no planted repeats), for benchmarks."""
    rng = random.Random(seed)
    for j in range(n):
        rec = base_record(rng)
        yield {"key": hashlib.blake2b(f"{seed}:{j}".encode(), digest_size=16).hexdigest(), **rec}


def planted_stream(n: int, dup_share: float = 0.1, seed: int = 0, window: int = 1000) -> Iterator[dict[str, Any]]:
    """n records as a stream (for sizes that should not sit in memory): each is a repeat of one
    of the last `window` originals with probability dup_share (any variant kind), else new."""
    rng = random.Random(seed)
    recent: list[tuple[int, dict[str, str]]] = []
    base_count = 0
    for j in range(n):
        key = hashlib.blake2b(f"{seed}:{j}".encode(), digest_size=16).hexdigest()
        if recent and rng.random() < dup_share:
            cluster, base = rng.choice(recent)
            kind = VARIANTS[j % len(VARIANTS)]
            yield {"key": key, **variant(rng, base, kind), "cluster": cluster, "variant": kind}
            continue
        base = base_record(rng)
        recent.append((base_count, base))
        if len(recent) > window:
            recent.pop(0)
        yield {"key": key, **base, "cluster": base_count, "variant": "original"}
        base_count += 1
