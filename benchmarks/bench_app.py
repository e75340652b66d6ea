"""Server-side click-to-results time of the similarity page, for 10 K and 150 K chips, vs a naive baseline.

What one click costs on the server, timed stage by stage exactly as pages/similarity.py runs them:
the query vector lookup and the search (`core.search.search_chips`: Rocchio query, every chip's score
for the map colours, the exact top-k in the query's AOI from those scores, FAISS top-k in the other
AOIs (timed apart as `index_search_per_other_aoi`: the FAISS search of one more AOI of the same size,
not in `total`)), the map layer data and the deck JSON that Streamlit sends
(`ui.maps.chip_deck(...).to_json()`), and the gallery thumbnails (`ui.gallery.thumbnails` for 3
modalities, PNG-encoded as st.image does). Browser rendering is not included.

Data: synthetic unit vectors (clustered, as in bench_index) and a synthetic chip grid of 4.5 km
squares over CONUS-like coordinates; thumbnails are read from a small SIMULATED chip store (k result
positions folded onto its chips), so disk reads are real. The naive baseline in the same run builds
the layer data the plain way (one dict per chip with its polygon's coordinates, serialised by pydeck's
own JSON), looks the query up by a linear id scan and searches by a NumPy matrix product over all
chips; it is timed with fewer repeats.
Run: `python -m benchmarks.bench_app --help`.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pydeck as pdk
import shapely
from PIL import Image
from tqdm import tqdm

from benchmarks.bench_index import clustered_unit_vectors
from core.embeddings import Embeddings
from core.index import ChipIndex, top_k
from data.simulate import simulate_store
from ui import maps
from ui.gallery import thumbnails
from core.search import SearchRequest, search_chips

MODALITIES = ("s2rgb", "s1amp", "coh")


def synthetic_grid(n: int, chip_deg: float = 0.045, lon0: float = -100.0, lat0: float = 38.0) -> gpd.GeoDataFrame:
    """n square chips (about 4.5 km) on a near-square lon/lat grid, with random label fractions."""
    cols = int(np.ceil(np.sqrt(n)))
    i = np.arange(n)
    x0 = lon0 + (i % cols) * chip_deg
    y0 = lat0 + (i // cols) * chip_deg
    rng = np.random.default_rng(0)
    return gpd.GeoDataFrame(
        {"chip_id": np.char.add("bench-", i.astype(str)), "water": rng.uniform(size=n), "cropland": rng.uniform(size=n)},
        geometry=shapely.box(x0, y0, x0 + chip_deg, y0 + chip_deg),
        crs=4326,
    )


def png(img: np.ndarray) -> bytes:
    """PNG bytes of an RGB thumbnail (what st.image sends)."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def stats(times: list[float]) -> dict[str, float]:
    """Median and p95 in milliseconds."""
    t = np.asarray(times) * 1000
    return {"median_ms": round(float(np.median(t)), 1), "p95_ms": round(float(np.percentile(t, 95)), 1), "n": len(t)}


def run_size(n: int, dim: int, k: int, clicks: int, naive_clicks: int, store, seed: int = 0) -> dict:
    """Time `clicks` optimised clicks and `naive_clicks` baseline clicks on an AOI of n chips."""
    t0 = time.perf_counter()
    index_frame = synthetic_grid(n)
    vectors = clustered_unit_vectors(n, dim, seed=seed)
    ids = index_frame["chip_id"].to_numpy().astype(str)
    present = np.ones(n, bool)
    emb = Embeddings(ids, {"fused": vectors, "s2rgb": vectors}, {"fused": present, "s2rgb": present}, {})
    index = ChipIndex.build(vectors, ids, kind="auto", gpu=False)
    geometry = maps.ChipGeometry.from_index(index_frame)
    lookup = {c: i for i, c in enumerate(ids.tolist())}
    setup_s = time.perf_counter() - t0

    rng = np.random.default_rng(seed + 1)
    fast: dict[str, list[float]] = {s: [] for s in ("search", "layer_json", "thumbnails", "total", "index_search_per_other_aoi")}
    for _ in tqdm(range(clicks), desc=f"optimised {n:,}", leave=False):
        chip = ids[int(rng.integers(n))]
        t0 = time.perf_counter()
        res = search_chips(SearchRequest(aoi="bench", chip_id=chip, k=k), {"bench": emb}, {"bench": index}, {"bench": lookup})
        t1 = time.perf_counter()
        scale = maps.color_scale("similarity", *maps.robust_range(res.map_scores))
        here = res.results
        outlines = maps.outline_records(geometry, [res.query_position], maps.QUERY_RGBA, ["query"])
        outlines += maps.outline_records(geometry, here["position"].tolist(), maps.RESULT_RGBA, [f"#{r}" for r in here["rank"]])
        spec = maps.chip_deck(geometry, res.map_scores, scale, value_name="similarity", highlights=outlines).to_json()
        t2 = time.perf_counter()
        folded = (here["position"].to_numpy() % len(store)).tolist()
        pngs = [png(img) for m in MODALITIES for img in thumbnails(store, folded, m)]
        t3 = time.perf_counter()
        assert len(pngs) == 3 * len(folded) and len(spec) > n * 50
        t4 = time.perf_counter()
        index.search(vectors[res.query_position][None, :], k)
        t5 = time.perf_counter()
        for name, v in zip(fast, (t1 - t0, t2 - t1, t3 - t2, t3 - t0, t5 - t4)):
            fast[name].append(v)

    naive: dict[str, list[float]] = {s: [] for s in ("search", "layer_json", "thumbnails", "total")}
    for _ in tqdm(range(naive_clicks), desc=f"naive {n:,}", leave=False):
        chip = ids[int(rng.integers(n))]
        t0 = time.perf_counter()
        q = vectors[list(ids).index(chip)]  # linear id scan, as a first version would
        scores = vectors @ q
        _, cols = top_k(scores[None, :], k + 1)
        t1 = time.perf_counter()
        lo, hi = maps.robust_range(scores)
        scale = maps.color_scale("similarity", lo, hi)
        rgba = scale.rgba(scores).tolist()
        records = [{"id": c, "p": [list(xy) for xy in g.exterior.coords], "c": col, "v": f"{v:.2f}"}
                   for c, g, col, v in zip(ids.tolist(), index_frame.geometry, rgba, scores.tolist())]
        spec = pdk.Deck(layers=[pdk.Layer("PolygonLayer", data=records, id="chips", get_polygon="p", get_fill_color="c",
                                          pickable=True)], map_provider=None).to_json()
        t2 = time.perf_counter()
        pngs = [png(img) for m in MODALITIES for img in thumbnails(store, (cols[0] % len(store)).tolist(), m)]
        t3 = time.perf_counter()
        assert len(pngs) and len(spec) > n * 50
        for name, v in zip(naive, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
            naive[name].append(v)

    return {
        "chips": n, "dim": dim, "k": k, "index_kind": index.kind, "setup_s_once_per_aoi": round(setup_s, 2),
        "optimised": {s: stats(v) for s, v in fast.items()},
        "naive": {s: stats(v) for s, v in naive.items()},
        "speedup_median_total": round(statistics.median(naive["total"]) / statistics.median(fast["total"]), 1),
    }


def format_table(report: dict) -> str:
    """The report as a table: per size and variant, median / p95 ms of each stage; then the speed-up."""
    stages = ("search", "layer_json", "thumbnails", "total")
    head = f"{'chips':>8} {'variant':<10} " + " ".join(f"{s + ' ms':>20}" for s in stages)
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        for variant in ("optimised", "naive"):
            cells = [f"{r[variant][s]['median_ms']:>9.1f} / {r[variant][s]['p95_ms']:>8.1f}" for s in stages]
            lines.append(f"{r['chips']:>8} {variant:<10} " + " ".join(f"{c:>20}" for c in cells))
        other = r["optimised"].get("index_search_per_other_aoi")
        lines.append(f"{'':>8} {'':<10} {r['index_kind']} index; each other AOI searched adds "
                     f"{other['median_ms']:.1f} ms" if other else "")
    lines.append("(median / p95 ms; total excludes other AOIs)")
    for r in report["results"]:
        lines.append(f"{r['chips']:,} chips: optimised total {r['optimised']['total']['median_ms']:.0f} ms median, "
                     f"{r['optimised']['total']['p95_ms']:.0f} ms p95; naive / optimised = {r['speedup_median_total']:.1f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: time clicks at each --sizes and print a table (and a JSON report with --out FILE)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_app", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 150_000], help="chips per AOI")
    ap.add_argument("--dim", type=int, default=128, help="embedding dimension")
    ap.add_argument("--k", type=int, default=10, help="results per click")
    ap.add_argument("--clicks", type=int, default=20, help="optimised clicks timed per size")
    ap.add_argument("--naive-clicks", type=int, default=3, help="baseline clicks timed per size")
    ap.add_argument("--threads", type=int, default=1,
                    help="FAISS threads (one query per click: one thread avoids OpenMP start-up and contention)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    args = ap.parse_args(argv)
    if min(args.sizes) < 100 or args.k < 1 or args.clicks < 1 or args.naive_clicks < 1:
        ap.error("sizes must be >= 100 and k, clicks, naive-clicks >= 1")
    import faiss

    faiss.omp_set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        # A small SIMULATED store supplies real chips for the thumbnails (64 px, all modalities).
        store = simulate_store(Path(tmp) / "thumbs", "conus", 8, 8, 7, chip_size=64, progress=False)
        report = {"benchmark": "bench_app: server-side click-to-results", "data": "synthetic vectors and grid; simulated thumbnails",
                  "threads": args.threads, "results": [run_size(n, args.dim, args.k, args.clicks, args.naive_clicks, store)
                                                        for n in args.sizes]}
    print(format_table(report))
    text = json.dumps(report, indent=2)
    if args.out:
        from data.atomic import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
