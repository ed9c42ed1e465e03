"""Build the bundled Japanese persona set from the occupation list, reproducibly.

Each occupation in `data/occupations_ja.jsonl` (hand-written, grouped after the major groups of
Japan's standard occupational classification) and in `families.py` (real titles written as
families: 皮膚科医, 高校の化学教諭, りんご農家, ...; over 1,000 distinct occupations together) is
crossed with an age band, a prefecture and one or two interests, and phrased as a short
Japanese persona sentence. Sources and licence: every list here was written for this project
and ships under its licence (Apache-2.0); occupation names are common nouns and the grouping
follows JSOC's published major groups. No persona dataset (Persona-Hub is CC-BY-NC-SA) is copied.

Why it is built this way:

* Every occupation draws from its own RNG, seeded with the seed and the occupation's name, so
  adding, removing or reordering occupations leaves every other occupation's personas (and
  ids) as they were; record keys, and so resumed jobs, depend on those ids.
* Ids are a hash of the persona text, not a row number, for the same reason.
* A few occupations only make sense on the coast or in some prefectures, and managers and
  headteachers are rarely in their twenties; small tables below keep such personas plausible.

Regenerate the committed file with `python -m synthgen.personas.build`; `--check` only
compares and exits 1 when the committed file is stale.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

SEED = 20241001
PER_OCCUPATION = 2

AGE_BANDS = ("20代", "30代", "40代", "50代", "60代")
# Occupations or categories whose people are rarely in every age band.
AGE_BY_CATEGORY = {"管理的職業従事者": ("30代", "40代", "50代", "60代")}
# Titles ending so: people reach these posts after years of training.
AGE_BY_SUFFIX = {"の大学教員": ("30代", "40代", "50代", "60代"), "の工場長": ("40代", "50代", "60代")}
AGE_BY_OCCUPATION = {
    "ポスドク研究員": ("20代", "30代"),
    "小学校の校長": ("50代", "60代"),
    "大学教授": ("40代", "50代", "60代"),
    "裁判官": ("30代", "40代", "50代", "60代"),
    "遠洋マグロ漁船の乗組員": ("20代", "30代", "40代", "50代"),
}

PREFECTURES = (
    "北海道", "青森県", "岩手県", "宮城県", "秋田県", "山形県", "福島県", "茨城県", "栃木県", "群馬県",
    "埼玉県", "千葉県", "東京都", "神奈川県", "新潟県", "富山県", "石川県", "福井県", "山梨県", "長野県",
    "岐阜県", "静岡県", "愛知県", "三重県", "滋賀県", "京都府", "大阪府", "兵庫県", "奈良県", "和歌山県",
    "鳥取県", "島根県", "岡山県", "広島県", "山口県", "徳島県", "香川県", "愛媛県", "高知県", "福岡県",
    "佐賀県", "長崎県", "熊本県", "大分県", "宮崎県", "鹿児島県", "沖縄県",
)
LANDLOCKED = frozenset({"栃木県", "群馬県", "埼玉県", "山梨県", "長野県", "岐阜県", "滋賀県", "奈良県"})
COASTAL = tuple(p for p in PREFECTURES if p not in LANDLOCKED)
# Work that needs the sea (a port, a fishing ground, a beach).
SEA_OCCUPATIONS = frozenset({
    "漁師", "定置網漁の漁師", "遠洋マグロ漁船の乗組員", "海女", "海苔の養殖業者", "牡蠣の養殖業者",
    "真珠の養殖業者", "海上保安官", "海上自衛官", "船長", "航海士", "船舶機関士", "フェリーの甲板員",
    "水先人", "一級船舶通信士", "港湾荷役作業員", "造船工", "水産加工場の作業員", "ライフセーバー", "潜水士",
})
# Prefectures that run tram lines.
REGIONS_BY_OCCUPATION = {
    "路面電車の運転士": ("北海道", "栃木県", "東京都", "富山県", "福井県", "愛知県", "滋賀県", "京都府",
                  "大阪府", "岡山県", "広島県", "愛媛県", "高知県", "長崎県", "熊本県", "鹿児島県"),
}

# Written for this project; every item reads naturally after 「趣味は」 and before 「を楽しむ」.
INTERESTS = (
    "登山", "釣り", "キャンプ", "家庭菜園", "料理", "お菓子作り", "パン作り", "写真撮影", "読書", "将棋",
    "囲碁", "鉄道旅行", "城巡り", "温泉巡り", "御朱印集め", "ランニング", "サイクリング", "ヨガ", "水泳",
    "スキー", "サーフィン", "ゴルフ", "テニス", "卓球", "ボルダリング", "野球観戦", "サッカー観戦",
    "相撲観戦", "落語鑑賞", "歌舞伎鑑賞", "美術館巡り", "ジャズ鑑賞", "映画鑑賞", "アニメ鑑賞", "茶道",
    "書道", "生け花", "俳句", "水彩画", "ピアノ演奏", "ギター演奏", "合唱", "カラオケ", "社交ダンス",
    "編み物", "陶芸", "プラモデル作り", "鉄道模型", "電子工作", "プログラミング", "天体観測",
    "バードウォッチング", "盆栽", "日本酒の飲み比べ", "コーヒーの焙煎", "食べ歩き", "ドライブ", "語学学習",
    "歴史探訪", "地域のお祭り巡り", "ボランティア活動", "犬の散歩", "ボードゲーム", "古着集め",
    "スキューバダイビング", "クロスワードパズル",
)

# Sentence shapes; the choice is drawn per persona so the set does not read as one template.
TEMPLATES = (
    "{region}で働く{age}の{occupation}。{description}。休日は{interests}を楽しむ。",
    "{region}に住む{age}の{occupation}。{description}。趣味は{interests}。",
    "{region}で{occupation}として働く{age}。{description}。最近は{interests}に夢中だ。",
    "{age}の{occupation}で、{region}在住。{description}。{interests}が何よりの息抜きになっている。",
)


def _data(name: str) -> Any:
    return files("synthgen.personas") / "data" / name


def load_occupations() -> list[dict[str, str]]:
    """The occupation list (hand-written, then the families), checked for the fields and
    uniqueness the build relies on."""
    from synthgen.personas.families import family_occupations

    rows = [json.loads(line) for line in _data("occupations_ja.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    rows += family_occupations({row["occupation"] for row in rows})
    names = [row["occupation"] for row in rows]
    if len(set(names)) != len(names):
        raise ValueError("occupations_ja.jsonl lists an occupation twice")
    for row in rows:
        if not all(row.get(k) for k in ("occupation", "category", "description")):
            raise ValueError(f"occupation row lacks a field: {row}")
    return rows


def persona_id(text: str) -> str:
    """Content-derived id: stable across rebuilds and across edits to other occupations."""
    return "ja-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def _personas_for(occ: dict[str, str]) -> list[dict[str, Any]]:
    name = occ["occupation"]
    rng = random.Random(f"{SEED}:{name}")
    by_suffix = next((ages for suffix, ages in AGE_BY_SUFFIX.items() if name.endswith(suffix)), None)
    ages = AGE_BY_OCCUPATION.get(name) or by_suffix or AGE_BY_CATEGORY.get(occ["category"], AGE_BANDS)
    sea = name in SEA_OCCUPATIONS or bool(occ.get("sea"))
    regions = REGIONS_BY_OCCUPATION.get(name) or (COASTAL if sea else PREFECTURES)
    description = occ["description"].rstrip("。")
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    while len(rows) < PER_OCCUPATION:
        age, region = rng.choice(ages), rng.choice(regions)
        interests = rng.sample(INTERESTS, rng.choice((1, 2)))
        template = rng.choice(TEMPLATES)
        if (age, region) in seen:  # two personas of one occupation differ in who and where
            continue
        seen.add((age, region))
        text = template.format(region=region, age=age, occupation=name, description=description,
                               interests="と".join(interests))
        rows.append({"id": persona_id(text), "persona": text, "occupation": name, "category": occ["category"],
                     "description": description, "age_band": age, "region": region, "interests": interests})
    return rows


def build() -> list[dict[str, Any]]:
    """All personas, in occupation-file order; the same list on every run and platform."""
    return [row for occ in load_occupations() for row in _personas_for(occ)]


def render() -> str:
    """The jsonl text of the persona set, exactly as committed."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in build())


def default_path() -> Path:
    return Path(str(_data("personas_ja.jsonl")))


def write(path: Path | None = None) -> Path:
    """Write the persona set to `path` (default: the bundled file) and return the path."""
    path = Path(path) if path is not None else default_path()
    path.write_text(render(), encoding="utf-8", newline="\n")
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--check"]:
        current = default_path().read_text(encoding="utf-8") if default_path().exists() else ""
        if current != render():
            print(f"{default_path()} is stale; run python -m synthgen.personas.build", file=sys.stderr)
            return 1
        return 0
    if args:
        print("usage: python -m synthgen.personas.build [--check]", file=sys.stderr)
        return 2
    print(write())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
