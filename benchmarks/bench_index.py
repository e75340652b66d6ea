"""Similarity-search benchmark: ChipIndex kinds vs exact NumPy brute force on clustered unit vectors.

Data are synthetic (not embeddings of real or simulated chips): a mixture of clusters of uneven size,
each a random centre plus variation in its own low-dimensional subspace plus small isotropic noise,
L2-normalised, so neighbourhoods look like embedding space rather than uniform noise. Queries are
held-out draws from the same mixture.

For each N and index kind: build time, single-query latency (median, p95 over --single queries, one
`search` call each, wrapper overhead included), batch throughput (--batch queries in one call),
recall@10 against brute force (matrix product + argpartition) on the same queries, and the speed-up
over brute force timed in the same run. `--sweep` also reports each efSearch / nprobe setting.
FAISS and BLAS use --threads threads (default 2). Run: `python -m benchmarks.bench_index --help`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from core.index import ChipIndex, choose_kind, top_k


def clustered_unit_vectors(n: int, dim: int, *, n_clusters: int = 64, local_dim: int = 16, spread: float = 0.8,
                           noise: float = 0.15, seed: int = 0) -> np.ndarray:
    """n L2-normalised float32 vectors [n, dim] from a mixture of low-rank Gaussian clusters (uneven sizes)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # Zipf-like cluster sizes, as land-cover classes are uneven
    w = 1.0 / np.arange(1, n_clusters + 1) ** 0.7
    sizes = rng.multinomial(n, w / w.sum())
    order = rng.permutation(n)  # scatter clusters over positions so position carries no information
    out = np.empty((n, dim), dtype=np.float32)
    start = 0
    for c, size in enumerate(sizes):
        basis = rng.normal(size=(local_dim, dim)).astype(np.float32) / math.sqrt(dim)  # rows ~unit norm
        for s in range(0, size, 200_000):  # chunks bound the temporaries at 10^6+ vectors
            b = min(200_000, size - s)
            z = rng.normal(size=(b, local_dim)).astype(np.float32) * (spread / math.sqrt(local_dim))
            v = centres[c] + z @ basis + rng.normal(size=(b, dim)).astype(np.float32) * (noise / math.sqrt(dim))
            out[order[start + s : start + s + b]] = v
        start += size
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def brute_force(x: np.ndarray, q: np.ndarray, k: int, chunk: int = 131_072) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner product by NumPy (matrix product + argpartition), chunked over the database."""
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_p = np.zeros((len(q), 0), np.int64)
    for s in range(0, len(x), chunk):
        sc, cols = top_k(q @ x[s : s + chunk].T, k)
        cs, cp = np.concatenate([best_s, sc], 1), np.concatenate([best_p, cols + s], 1)
        best_s, sel = top_k(cs, k)
        best_p = np.take_along_axis(cp, sel, 1)
    return best_s, best_p


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean fraction of the true top-k found in the returned top-k."""
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def time_single(fn, queries: np.ndarray) -> np.ndarray:
    """Latency (ms) of fn(one query) for each query."""
    out = np.empty(len(queries))
    for i in range(len(queries)):
        t0 = time.perf_counter()
        fn(queries[i : i + 1])
        out[i] = (time.perf_counter() - t0) * 1e3
    return out


def time_batch(fn, queries: np.ndarray, repeat: int = 3) -> float:
    """Best wall time (s) of fn(all queries) over `repeat` runs."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(queries)
        best = min(best, time.perf_counter() - t0)
    return best


def sweep_values(kind: str, chosen: dict) -> list[dict]:
    """Search-parameter settings to report for a kind (the chosen default included)."""
    if kind == "hnsw":
        return [{"efSearch": v} for v in sorted({16, 32, 64, 128, 256, chosen["efSearch"]})]
    if kind == "ivfpq":
        return [{"nprobe": v} for v in sorted({8, 16, 32, 64, 128, chosen["nprobe"]}) if v <= chosen["nlist"]]
    return [{}]


class threads:
    """Context manager: FAISS OpenMP and NumPy BLAS both limited to n threads, restored on exit."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> "threads":
        self.prev = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self.n)
        try:
            from threadpoolctl import threadpool_limits
            self.blas = threadpool_limits(self.n)
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
            self.blas = None
        return self

    def __exit__(self, *exc) -> None:
        faiss.omp_set_num_threads(self.prev)
        if self.blas is not None:
            self.blas.restore_original_limits()


def run(sizes: list[int], dim: int, kinds: list[str], n_single: int, n_batch: int, k: int, sweep: bool,
        seed: int, params: dict, single_threads: int) -> list[dict]:
    """Benchmark every (N, kind) and return one row per measured setting."""
    rows = []
    for n in tqdm(sizes, desc="sizes", unit="N"):
        nq = max(n_single, n_batch)
        t0 = time.perf_counter()
        data = clustered_unit_vectors(n + nq, dim, seed=seed)
        x, q = data[:n], data[n:]
        gen_s = time.perf_counter() - t0
        ids = np.char.add("c", np.arange(n).astype(str))
        _, truth = brute_force(x, q, k)
        with threads(single_threads):
            bf_single = time_single(lambda one: brute_force(x, one, k), q[:n_single])
        bf_batch = time_batch(lambda qs: brute_force(x, qs, k), q[:n_batch], repeat=1)
        tqdm.write(f"N={n}: data {gen_s:.1f}s, brute force single median {np.median(bf_single):.2f} ms, "
                   f"batch {n_batch / bf_batch:.0f} q/s")
        for kind in kinds:
            concrete = choose_kind(n, kind)
            t0 = time.perf_counter()
            index = ChipIndex.build(x, ids, kind=concrete, params=params.get(concrete), gpu=False)
            build_s = time.perf_counter() - t0
            settings = sweep_values(concrete, index.params) if sweep else [{}]
            for setting in settings:
                if setting:
                    index.set_search_params(**setting)
                with threads(single_threads):
                    lat = time_single(lambda one: index.search(one, k), q[:n_single])
                batch_s = time_batch(lambda qs: index.search(qs, k), q[:n_batch])
                _, found = index.search(q, k)
                row = {"N": n, "dim": dim, "kind": kind if kind == concrete else f"auto->{concrete}",
                       "search": ", ".join(f"{a}={b}" for a, b in setting.items()) or _default_label(index),
                       "build_s": build_s, "single_median_ms": float(np.median(lat)),
                       "single_p95_ms": float(np.percentile(lat, 95)), "batch_qps": n_batch / batch_s,
                       f"recall@{k}": recall_at(found, truth, k),
                       "bf_single_median_ms": float(np.median(bf_single)), "bf_batch_qps": n_batch / bf_batch,
                       "speedup_single": float(np.median(bf_single) / np.median(lat)),
                       "speedup_batch": bf_batch / batch_s, "params": index.params}
                rows.append(row)
                tqdm.write(markdown([row], k).splitlines()[-1])
            del index
    return rows


def _default_label(index: ChipIndex) -> str:
    p = index.params
    if index.kind == "hnsw":
        return f"efSearch={p['efSearch']}"
    if index.kind == "ivfpq":
        return f"nprobe={p['nprobe']}, k_factor={p['k_factor']:g}"
    return "exact"


def markdown(rows: list[dict], k: int = 10) -> str:
    """Rows as a markdown table."""
    head = (f"| N | kind | search | build s | single median ms | single p95 ms | batch q/s | recall@{k} | "
            "brute single ms | brute batch q/s | speed-up single | speed-up batch |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['N']:,} | {r['kind']} | {r['search']} | {r['build_s']:.1f} | {r['single_median_ms']:.3f} | "
                     f"{r['single_p95_ms']:.3f} | {r['batch_qps']:,.0f} | {r[f'recall@{k}']:.3f} | "
                     f"{r['bf_single_median_ms']:.2f} | {r['bf_batch_qps']:,.0f} | {r['speedup_single']:.1f}x | "
                     f"{r['speedup_batch']:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_index", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="database sizes N")
    ap.add_argument("--dim", type=int, default=128, help="vector dimension (the model's embed_dim)")
    ap.add_argument("--kinds", nargs="+", default=["auto"], choices=["auto", "flat", "hnsw", "ivfpq"],
                    help="index kinds to measure ('auto' = what ChipIndex.build picks for N)")
    ap.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    ap.add_argument("--batch", type=int, default=256, help="queries in the batch measurement")
    ap.add_argument("-k", type=int, default=10, help="neighbours per query (recall@k)")
    ap.add_argument("--threads", type=int, default=2, help="FAISS/BLAS threads")
    ap.add_argument("--single-threads", type=int, default=None,
                    help="threads while timing single queries, brute force included (default: --threads); "
                         "ChipIndex runs calls of <= SERIAL_MAX_QUERIES queries on one thread either way")
    ap.add_argument("--sweep", action="store_true", help="also report several efSearch / nprobe values")
    ap.add_argument("--params", type=json.loads, default={},
                    help='per-kind build params as JSON, e.g. \'{"hnsw": {"M": 32, "efSearch": 64}}\'')
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="also write the rows as JSON here")
    a = ap.parse_args(argv)
    single = a.single_threads or a.threads
    print(f"synthetic clustered unit vectors (not real embeddings), dim={a.dim}, {a.threads} threads "
          f"({single} while timing single queries), FAISS and NumPy BLAS alike, faiss {faiss.__version__}")
    with threads(a.threads):  # NumPy's BLAS on the same threads as FAISS, so the speed-up compares like with like
        rows = run(a.sizes, a.dim, a.kinds, a.single, a.batch, a.k, a.sweep, a.seed, a.params, single)
    print()
    print(markdown(rows, a.k))
    if a.out:
        from data.atomic import atomic_write_json
        atomic_write_json(a.out, rows)


if __name__ == "__main__":
    main()
