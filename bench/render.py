"""Pictures per second: html2image (a browser per picture) vs the sandboxed page pool, one run.

Both draw the same generated pages (all eleven layouts, Japanese text, varied fonts, sizes,
colours and viewports, sanitised as the generator does) as JPEG. html2image runs one shot
per CPU in parallel (more only adds contention on a small machine). When `--h2i-pages` is less
than `--pages`, html2image is timed on that prefix of the same list (said in the JSON).

    python bench/render.py                       # 200 pages, pool of 4, html2image on 40
    python bench/render.py --h2i-pages 200       # the full list for both (slow)

The last line printed is a JSON object with html2image_ips, pool_ips and speedup.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time

from synthgen.generators.render import RenderOptions
from synthgen.generators.render.checks import Limits, problems
from synthgen.generators.render.html2image_backend import Html2ImageRenderer
from synthgen.generators.render.pool import BrowserPool, PoolConfig
from synthgen.generators.render.sandbox import sanitize

SENTENCES = (
    "駅前の小さなラーメン店は、毎朝六時から豚骨スープを煮込んでいる。", "人気の品は味噌バターラーメンで、一杯九百五十円だ。",
    "市立図書館は月曜日が休館日で、平日は午後八時まで開いている。", "京都の清水寺は、七七八年に創建されたと伝えられる。",
    "夏祭りは八月の第一土曜日に開かれ、約三千発の花火が上がる。", "会場へは臨時のシャトルバスが十五分おきに運行される。",
    "緑茶にはカテキンと呼ばれる成分が多く含まれている。", "静岡県は日本で最も茶の栽培面積が広い県の一つである。",
    "明日の天気は晴れのち曇り、最高気温は二十八度の予想です。", "会議は午後二時から第三会議室で行います。",
    "新しい図書館カードの発行には、住所を確認できる書類が必要です。", "本日のおすすめは、季節の野菜を使った天ぷら定食です。",
)
LAYOUT_CSS = {
    "article": ("", "<h1>{title}</h1>{paras}"),
    "table": ("td,th{{border:1px solid {accent};padding:6px}}table{{border-collapse:collapse}}",
              "<h2>{title}</h2><table>{rows}</table>"),
    "slide": ("h1{{font-size:2.2em;border-bottom:4px solid {accent}}}li{{margin:.5em 0}}",
              "<h1>{title}</h1><ul>{items}</ul>"),
    "poster": (".box{{border:6px double {accent};padding:24px;text-align:center}}h1{{font-size:3em}}",
               "<div class='box'><h1>{title}</h1>{paras}</div>"),
    "menu": (".row{{display:flex;justify-content:space-between;border-bottom:1px dotted {accent}}}",
             "<h1>お品書き</h1>{menu}"),
    "receipt": (".r{{width:320px;margin:20px auto;padding:16px;background:#fff;color:#111;font-family:monospace}}",
                "<div class='r'><h3>領収書</h3>{paras}<p>合計 ¥1,234</p></div>"),
    "signboard": (".s{{border:12px solid {accent};padding:30px;font-size:2.4em;font-weight:bold;text-align:center}}",
                  "<div class='s'>{title}</div>{paras}"),
    "form": ("dt{{font-weight:bold;border-top:1px solid {accent}}}dd{{margin:0 0 8px 0}}",
             "<h2>申込書</h2><dl>{form}</dl>"),
    "chat": (".m{{background:{accent};color:#fff;border-radius:14px;padding:8px 12px;margin:8px;max-width:70%}}"
             ".m:nth-child(even){{margin-left:auto;background:#ddd;color:#111}}", "{chat}"),
    "multicolumn": (".c{{column-count:3;column-gap:24px}}", "<h1>{title}</h1><div class='c'>{paras}</div>"),
    "vertical": (".v{{writing-mode:vertical-rl;height:{vh}px;font-size:1.2em}}", "<div class='v'><h2>{title}</h2>{paras}</div>"),
}
FONTS = ("Noto Sans CJK JP", "Noto Serif CJK JP", "sans-serif", "serif", "monospace")
PALETTES = (("#222", "#fff", "#c0392b"), ("#fff", "#1e1e1e", "#f1c40f"), ("#1b2a49", "#f4f1ea", "#d35400"),
            ("#0b3d2e", "#eef7f0", "#e76f51"))
VIEWPORTS = ((1024, 768), (800, 600), (1280, 720), (768, 1024), (600, 800))


def make_page(rng: random.Random) -> tuple[str, RenderOptions]:
    layout = rng.choice(list(LAYOUT_CSS))
    css, body = LAYOUT_CSS[layout]
    text, bg, accent = rng.choice(PALETTES)
    width, height = rng.choice(VIEWPORTS)
    picked = rng.sample(SENTENCES, 5)
    fill = {
        "title": picked[0][:10], "accent": accent, "vh": height - 80,
        "paras": "".join(f"<p>{s}</p>" for s in picked[1:]),
        "rows": "".join(f"<tr><th>項目{i + 1}</th><td>{s}</td></tr>" for i, s in enumerate(picked[1:])),
        "items": "".join(f"<li>{s}</li>" for s in picked[1:]),
        "menu": "".join(f"<div class='row'><span>{s[:12]}</span><span>{rng.randrange(3, 20) * 100}円</span></div>"
                        for s in picked),
        "form": "".join(f"<dt>記入欄{i + 1}</dt><dd>{s}</dd>" for i, s in enumerate(picked)),
        "chat": "<div>" + "".join(f"<div class='m'>{s}</div>" for s in picked) + "</div>",
    }
    style = (f"body{{font-family:'{rng.choice(FONTS)}';font-size:{rng.choice((16, 18, 20, 24))}px;color:{text};"
             f"background:linear-gradient({bg},{bg} 70%,{accent}22);padding:24px}}" + css.format(**fill))
    html = f"<!DOCTYPE html><html><head><style>{style}</style></head><body>{body.format(**fill)}</body></html>"
    return sanitize(html), RenderOptions(width=width, height=height, fmt="jpeg", quality=85)


def tree_cpu_s() -> float | None:
    """CPU seconds used so far by this process and everything under it (driver, browsers).

    The machine is shared and its load swings; CPU time per picture is the figure that
    does not move with it. Dead children count through their parent's children_* times.
    """
    try:
        import psutil
    except ImportError:
        return None
    total = 0.0
    procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            continue
    return total


async def time_backend(renderer, pages: list[tuple[str, RenderOptions]]) -> tuple[float, float | None, int]:
    cpu0, start = tree_cpu_s(), time.perf_counter()
    shots = await asyncio.gather(*(renderer.render(doc, opts) for doc, opts in pages))
    elapsed, cpu1 = time.perf_counter() - start, tree_cpu_s()
    cpu = (cpu1 - cpu0) / len(pages) if cpu0 is not None and cpu1 is not None else None
    bad = sum(1 for s in shots if problems(s, Limits(min_chars=20)))
    return elapsed, cpu, bad


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--h2i-pages", type=int, default=40, help="html2image is timed on this prefix")
    ap.add_argument("--pool-pages", type=int, default=4, help="browser pages in the pool")
    ap.add_argument("--h2i-workers", type=int, default=os.cpu_count() or 2, help="parallel html2image shots")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    pages = [make_page(rng) for _ in range(args.pages)]
    h2i_pages = pages[:min(args.h2i_pages, args.pages)]

    start = time.perf_counter()
    async with BrowserPool(PoolConfig(pages=args.pool_pages)) as pool:
        startup = time.perf_counter() - start
        await time_backend(pool, pages[:args.pool_pages])  # warm each page once
        pool_s, pool_cpu, pool_bad = await time_backend(pool, pages)
    print(f"pool: {len(pages)} pages in {pool_s:.2f}s (+{startup:.2f}s start), {pool_bad} failing checks")

    async with Html2ImageRenderer(workers=args.h2i_workers, timeout_s=60) as h2i:
        h2i_s, h2i_cpu, h2i_bad = await time_backend(h2i, h2i_pages)
    print(f"html2image: {len(h2i_pages)} pages in {h2i_s:.2f}s, {h2i_bad} failing checks")

    pool_ips = len(pages) / pool_s
    h2i_ips = len(h2i_pages) / h2i_s
    cpus = os.cpu_count() or 1
    cpu_figures = {} if pool_cpu is None or h2i_cpu is None else {
        "pool_cpu_s_per_image": round(pool_cpu, 4), "html2image_cpu_s_per_image": round(h2i_cpu, 3),
        "cpu_ratio": round(h2i_cpu / pool_cpu, 1),
        # what the CPU cost alone allows on this many idle cores (an estimate, not a timing)
        "pool_ips_idle_estimate": round(cpus / pool_cpu, 1)}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(json.dumps({
        "pages": len(pages), "html2image_pages": len(h2i_pages), "pool_pages": args.pool_pages,
        "html2image_workers": args.h2i_workers, "format": "jpeg", "cpus": cpus, "load_avg_1m": load, **cpu_figures,
        "pool_startup_s": round(startup, 2), "pool_failing_checks": pool_bad, "html2image_failing_checks": h2i_bad,
        "html2image_ips": round(h2i_ips, 2), "pool_ips": round(pool_ips, 2), "speedup": round(pool_ips / h2i_ips, 1),
    }))


if __name__ == "__main__":
    asyncio.run(main())
