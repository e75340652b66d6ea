"""The app as a user meets it: a real browser (Debian's chromium, software WebGL) against `streamlit run app.py`.

For each workspace given (e.g. a 2 K-chip and a 150 K-chip simulated AOI) it measures, in the same run:

- server: what one click costs inside the server process (search + score raster + marks), in-process,
  and the server time the page itself reports under the results;
- page load: the similarity page opened until its map is drawn (the first, cold one; then warm ones);
- click -> results: a mouse click on the map until the results for the chip under it are on the page,
  over `--clicks` clicks at random places (a click whose results never come within 20 s is dropped);
- slider -> metrics: the probes page's label-budget slider moved one step until new metrics show;
- concurrent: `--sessions` browser sessions each click the map at the same moment (median and worst), with the
  CPU seconds the server and the browsers spent meanwhile (where the time goes on a shared machine).

    python -m benchmarks.bench_browser --workspace 2k=workspace/demo-2k --workspace 150k=workspace/demo-150k

Needs /usr/bin/chromium (`apt-get install -y chromium`); never `playwright install`. Build the
workspaces first (`make demo-150k` builds the 150 K one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from playwright.async_api import Page, async_playwright
from threadpoolctl import threadpool_limits

from core.embeddings import load_embeddings
from core.grid import ChipGrid
from core.search import SearchRequest, search_chips
from data.workspace import SCENARIO_FULL, SCENARIO_RANDOM, Workspace
from tests.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, serve_app
from ui import maps, search

VIEWPORT = {"width": 1400, "height": 1100}
CLICK_TIMEOUT_MS = 20_000
SERVER_TIME = re.compile(r"Query chip (\S+) · server: search (\d+) ms(?:, map (\d+) ms)?")


def server_side(root: Path, aoi: str, model: str, n: int = 20, seed: int = 0) -> dict[str, float]:
    """Median ms of one click inside the server: the search and the score raster + marks (one BLAS thread)."""
    ws = Workspace(root)
    store = ws.open_store(aoi)
    grid = ChipGrid.from_index(store.index, store.meta.crs)
    emb = load_embeddings(ws, aoi, model, SCENARIO_FULL)
    lookup = {c: i for i, c in enumerate(emb.chip_ids.astype(str).tolist())}
    rng = np.random.default_rng(seed)
    searched, drawn = [], []
    with threadpool_limits(limits=search.REQUEST_THREADS):
        for pos in rng.choice(len(store), size=n, replace=False):
            t0 = time.perf_counter()
            request = SearchRequest(aoi=aoi, chip_id=str(emb.chip_ids[pos]))
            result = search_chips(request, {aoi: emb}, {aoi: None}, {aoi: lookup})
            t1 = time.perf_counter()
            scale = maps.color_scale("similarity", *maps.robust_range(result.map_scores))
            png = maps.score_png(grid, result.map_scores, scale)
            maps.chip_marks(grid, result.results["position"].tolist(), "result")
            t2 = time.perf_counter()
            searched.append(t1 - t0)
            drawn.append(t2 - t1)
    return {"chips": len(store), "search_ms": 1000 * statistics.median(searched),
            "map_ms": 1000 * statistics.median(drawn), "png_kb": len(png) / 1024}


async def open_map(page: Page, url: str, timeout_ms: int = 300_000) -> float:
    """Open the similarity page; seconds until its score map is drawn."""
    t0 = time.perf_counter()
    await page.goto(url + "/similarity", wait_until="domcontentloaded")
    image = page.locator(".eo-img")  # inside the map component's shadow root (locators pierce it)
    await image.wait_for(state="visible", timeout=timeout_ms)
    await image.evaluate("img => img.decode()")  # drawn, not only in the DOM
    return time.perf_counter() - t0


async def click_chip(page: Page, grid: ChipGrid, u: float, v: float, timeout_ms: int = CLICK_TIMEOUT_MS) -> dict:
    """Click the map at image fractions (u, v); seconds until the results for the chip under it are on the page."""
    expected = grid.chip_at(*grid.lonlat_at_fraction(u, v))
    box = await page.locator(".eo-img").bounding_box()
    t0 = time.perf_counter()
    await page.mouse.click(box["x"] + box["width"] * u, box["y"] + box["height"] * v)
    try:
        await page.wait_for_function("t => document.body.innerText.includes(t)", arg=f"Query chip {expected} ·",
                                     polling=50, timeout=timeout_ms)
    except Exception:  # playwright's TimeoutError: the click was dropped (or answered too late)
        return {"chip": expected, "seconds": None}
    seconds = time.perf_counter() - t0
    text = await page.evaluate("() => document.body.innerText")
    m = SERVER_TIME.search(text)
    server = (int(m.group(2)) + int(m.group(3) or 0)) / 1000 if m else None
    return {"chip": expected, "seconds": seconds, "server_seconds": server}


async def metrics_text(page: Page) -> str:
    return " | ".join(await page.locator("[data-testid='stMetricValue']").all_inner_texts())


async def slider_to_metrics(page: Page, url: str, steps: int = 3, timeout_ms: int = 900_000) -> dict:
    """The probes page: seconds to first metrics, then per budget-slider step until the metrics change."""
    t0 = time.perf_counter()
    await page.goto(url + "/probes", wait_until="domcontentloaded")
    await page.get_by_text("of full-label score").first.wait_for(timeout=timeout_ms)
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        before = await metrics_text(page)
        thumb = page.locator("[data-testid='stSlider'] input[type='range']").first  # react-aria's hidden input
        await thumb.focus()
        t0 = time.perf_counter()
        await page.keyboard.press("ArrowRight")
        try:
            await page.wait_for_function(
                "b => { const t = [...document.querySelectorAll(\"[data-testid='stMetricValue']\")].map(e => e.innerText).join(' | ');"
                " return t && t !== b; }", arg=before, polling=50, timeout=timeout_ms)
            times.append(time.perf_counter() - t0)
        except Exception:
            times.append(None)
    return {"first_s": first, "steps_s": times}


def cpu_seconds(command_part: str) -> float:
    """CPU seconds (user + system) used so far by this process's descendants whose command line has `command_part`."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # the process ended meanwhile
                continue
            children.setdefault(parent, []).append(int(entry))
    todo, total, tick = list(children.get(os.getpid(), [])), 0.0, os.sysconf("SC_CLK_TCK")
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            if command_part in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return total


async def concurrent_clicks(browser, url: str, grid: ChipGrid, sessions: int, seed: int) -> dict:
    """`sessions` browser sessions open the map, then all click a different chip at the same moment.

    Returns the seconds of each ("seconds") and the CPU seconds the server and the browsers spent from the
    clicks until the last result was on the page ("cpu").
    """
    contexts = [await browser.new_context(viewport=VIEWPORT) for _ in range(sessions)]
    pages = [await c.new_page() for c in contexts]
    try:
        await asyncio.gather(*(open_map(p, url) for p in pages))
        await asyncio.sleep(2.0)  # let the pages settle: their loading work is not the clicks'
        rng = np.random.default_rng(seed)
        spots = rng.uniform(0.05, 0.95, size=(sessions, 2))
        server0, browsers0 = cpu_seconds("streamlit"), cpu_seconds("chromium")
        results = await asyncio.gather(*(click_chip(p, grid, u, v, 60_000) for p, (u, v) in zip(pages, spots)))
        cpu = {"server": cpu_seconds("streamlit") - server0, "browsers": cpu_seconds("chromium") - browsers0}
        return {"seconds": [r["seconds"] for r in results], "cpu": cpu}
    finally:
        for c in contexts:
            await c.close()


def _stats(values: Sequence[float | None]) -> tuple[float, float, int]:
    done = [v for v in values if v is not None]
    return (statistics.median(done) if done else float("nan"), max(done) if done else float("nan"),
            len(values) - len(done))


async def bench_workspace(name: str, root: Path, checkpoint: str, clicks: int, sessions: int, seed: int,
                          shots: str | None, probes: bool) -> dict:
    """Every measurement on one workspace (its first AOI), one server, one browser."""
    ws = Workspace(root)
    aoi = ws.list_stores()[0]
    print(f"[{name}] server-side timing ({aoi})…", flush=True)
    out: dict = {"name": name, "aoi": aoi, "checkpoint": checkpoint, "server": server_side(root, aoi, checkpoint)}
    store = ws.open_store(aoi)
    grid = ChipGrid.from_index(store.index, store.meta.crs)
    with serve_app(root, checkpoint, f"bench-browser-{name}.log") as url:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                context = await browser.new_context(viewport=VIEWPORT)
                page = await context.new_page()
                print(f"[{name}] page loads…", flush=True)
                out["load_cold_s"] = await open_map(page, url)
                warm = []
                for _ in range(3):
                    warm.append(await open_map(page, url))
                out["load_warm_s"] = statistics.median(warm)
                if shots:
                    await page.screenshot(path=str(ARTIFACTS / f"{shots}-before.png"), full_page=True)
                print(f"[{name}] {clicks} clicks…", flush=True)
                rng = np.random.default_rng(seed)
                done, current = [], None
                while len(done) < clicks:
                    u, v = rng.uniform(0.02, 0.98, size=2)
                    chip = grid.chip_at(*grid.lonlat_at_fraction(u, v))
                    if chip is None or chip == current:
                        continue
                    r = await click_chip(page, grid, u, v)
                    done.append(r)
                    current = chip if r["seconds"] is not None else current
                out["clicks"] = done
                if shots:
                    await page.wait_for_timeout(1500)
                    await page.screenshot(path=str(ARTIFACTS / f"{shots}-after.png"), full_page=True)
                await context.close()
                random_init = ws.artifact_dir("embeddings", aoi, checkpoint, SCENARIO_RANDOM) / "meta.json"
                if probes and not random_init.is_file():
                    # The probes page would first embed every chip with the untrained model (its baseline).
                    out["slider"] = {"error": "skipped: no random-init embeddings (the probes' baseline) built"}
                elif probes:
                    print(f"[{name}] probes slider…", flush=True)
                    context = await browser.new_context(viewport=VIEWPORT)
                    try:
                        out["slider"] = await slider_to_metrics(await context.new_page(), url)
                    except Exception as e:  # a page that never shows metrics is a result to report, not a crash
                        out["slider"] = {"error": str(e).splitlines()[0]}
                    await context.close()
                print(f"[{name}] {sessions} concurrent sessions…", flush=True)
                out["concurrent"] = await concurrent_clicks(browser, url, grid, sessions, seed + 1)
            finally:
                await browser.close()
    return out


def _fmt(v: float | None, unit: str = "s") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return f"{v:.2f} {unit}" if unit == "s" else f"{v:.0f} {unit}"


def table(results: list[dict], sessions: int) -> str:
    """The benchmark table: one column per workspace."""
    rows: list[tuple[str, list[str]]] = []
    rows.append(("chips", [f"{r['server']['chips']:,}" for r in results]))
    rows.append(("model", [r["checkpoint"] for r in results]))
    rows.append(("server: search (median, in-process)", [_fmt(r["server"]["search_ms"], "ms") for r in results]))
    rows.append(("server: score raster + marks", [_fmt(r["server"]["map_ms"], "ms") + f" ({r['server']['png_kb']:.0f} KB PNG)" for r in results]))
    rows.append(("page load, cold / warm", [f"{_fmt(r['load_cold_s'])} / {_fmt(r['load_warm_s'])}" for r in results]))
    for r in results:
        secs = [c["seconds"] for c in r["clicks"]]
        r["_click"] = _stats(secs)
        server = [c.get("server_seconds") for c in r["clicks"] if c.get("server_seconds") is not None]
        r["_server_page"] = statistics.median(server) if server else None
    rows.append(("click -> results, median / worst", [f"{_fmt(r['_click'][0])} / {_fmt(r['_click'][1])}" for r in results]))
    rows.append(("  server time reported by the page (median)", [_fmt(r["_server_page"]) for r in results]))
    rows.append(("dropped clicks", [f"{r['_click'][2]} of {len(r['clicks'])}" for r in results]))
    slider = []
    for r in results:
        s = r.get("slider")
        if not s:
            slider.append("not run")
        elif "error" in s:
            slider.append(s["error"][:60] if s["error"].startswith("skipped") else "failed: " + s["error"][:50])
        else:
            med, worst, lost = _stats(s["steps_s"])
            slider.append(f"{_fmt(med)} / {_fmt(worst)} (first page {_fmt(s['first_s'])}{', %d timed out' % lost if lost else ''})")
    rows.append(("probes slider -> metrics, median / worst", slider))
    conc = [_stats(r["concurrent"]["seconds"]) for r in results]
    rows.append((f"{sessions} sessions click at once: median / worst", [f"{_fmt(c[0])} / {_fmt(c[1])}" + (f" ({c[2]} dropped)" if c[2] else "") for c in conc]))
    rows.append(("  CPU meanwhile: server / browsers", [f"{_fmt(r['concurrent']['cpu']['server'])} / "
                                                        f"{_fmt(r['concurrent']['cpu']['browsers'])}" for r in results]))
    width = max(len(k) for k, _ in rows) + 2
    cols = [max(len(r["name"]), *(len(v[i]) for _, v in rows)) + 2 for i, r in enumerate(results)]
    lines = ["".ljust(width) + "".join(r["name"].ljust(c) for r, c in zip(results, cols))]
    lines += [k.ljust(width) + "".join(v.ljust(c) for v, c in zip(vals, cols)) for k, vals in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: benchmark the app in a real browser on one or more workspaces."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_browser", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--workspace", action="append", required=True, metavar="NAME=DIR[@CHECKPOINT]",
                    help="a workspace to measure (its first AOI), e.g. 150k=workspace/demo-150k, optionally with its own "
                    "checkpoint folder name; repeat for several")
    ap.add_argument("--checkpoint", default="tiny-sim", help="default checkpoint folder name (as $EO_CHECKPOINT)")
    ap.add_argument("--clicks", type=int, default=20, help="sequential clicks per workspace")
    ap.add_argument("--sessions", type=int, default=10, help="browser sessions clicking at once")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-probes", action="store_true", help="skip the probes page's slider")
    ap.add_argument("--screenshots", default=None, metavar="NAME=PREFIX",
                    help="save the map before/after a click of workspace NAME to tests/artifacts/PREFIX-before/after.png")
    ap.add_argument("--json", default=None, help="also write the raw numbers to this JSON file")
    args = ap.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"error: {CHROMIUM} not found: `apt-get install -y chromium` (never `playwright install`)", file=sys.stderr)
        return 2
    spaces = []
    for item in args.workspace:
        name, sep, rest = item.partition("=")
        path, _, checkpoint = rest.partition("@")
        if not sep or not Path(path).is_dir() or not Workspace(path).list_stores():
            print(f"error: --workspace {item!r} must be NAME=DIR of a built workspace (`make demo-150k`)", file=sys.stderr)
            return 2
        spaces.append((name, Path(path).resolve(), checkpoint or args.checkpoint))
    shots = dict([args.screenshots.split("=", 1)]) if args.screenshots else {}
    ARTIFACTS.mkdir(exist_ok=True)
    results = [asyncio.run(bench_workspace(name, root, checkpoint, args.clicks, args.sessions, args.seed,
                                           shots.get(name), not args.no_probes)) for name, root, checkpoint in spaces]
    print(table(results, args.sessions))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
