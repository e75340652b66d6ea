"""Simulator throughput and memory: the streaming store writer against one in-memory block.

For each size N (chips of one AOI, 64 px, all three modalities) two child processes run in turn, so
each peak resident memory (ru_maxrss) is its own:

- baseline: `simulate_block` over the whole grid at once (all arrays in memory), no store written;
- streaming: `simulate_store`, which renders and writes blocks of chip rows (bounded memory).

Prints wall time, chips/s and peak RSS per run, and the streaming/in-memory ratios of the same size.
The streaming peak should stay flat as N grows; the baseline grows with N. A paper-scale AOI is
`--sizes 150000 --no-baseline` (the whole 387 x 387 grid, 149,769 chips) (the in-memory baseline would need ~70 GB there: 9.8 GB at 20 K measured).
Run: `python -m benchmarks.bench_simulate [--sizes 2025 20000]`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from data.simulate import grid_shape, simulate_block, simulate_store, get_profile
mode, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
p = get_profile("conus")
rows_n, cols_n = grid_shape(n)
rows_n, cols_n = min(rows_n, p.grid_rows), min(cols_n, p.grid_cols)  # 150000 -> the whole 387 x 387 grid
t0 = time.perf_counter()
if mode == "in-memory":
    r0, c0 = (p.grid_rows - rows_n) // 2, (p.grid_cols - cols_n) // 2
    arrays, rows = simulate_block(p, range(r0, r0 + rows_n), range(c0, c0 + cols_n), seed=0)
    chips = len(rows)
else:
    store = simulate_store(Path(out) / "conus", p, rows_n, cols_n, seed=0, progress=False)
    chips = len(store)
wall = time.perf_counter() - t0
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"mode": mode, "chips": chips, "wall_s": wall, "peak_rss_mb": peak_mb}))
"""


def run_child(mode: str, n: int, threads: int) -> dict:
    """One measurement in a fresh process (so peak RSS is this run's alone)."""
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        env = {"OMP_NUM_THREADS": str(threads), "PATH": "/usr/bin:/bin"}
        proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(n), tmp], cwd=REPO, env=env,
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{mode} N={n} failed:\n{proc.stderr[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_simulate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2025, 20000], help="chips per AOI")
    ap.add_argument("--threads", type=int, default=2, help="OMP threads per child process")
    ap.add_argument("--no-baseline", action="store_true", help="streaming only (for paper-scale sizes)")
    args = ap.parse_args(argv)

    rows = []
    for n in args.sizes:
        for mode in (("streaming",) if args.no_baseline else ("in-memory", "streaming")):
            r = run_child(mode, n, args.threads)
            r["chips_per_s"] = r["chips"] / r["wall_s"]
            rows.append(r)
            print(f"{mode:>10} N={r['chips']:>7}: {r['wall_s']:7.1f} s  {r['chips_per_s']:7.0f} chips/s  "
                  f"peak {r['peak_rss_mb']:7.0f} MB", flush=True)
    df = pd.DataFrame(rows)
    print()
    print(df.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    if not args.no_baseline:
        piv = df.pivot(index="chips", columns="mode", values=["wall_s", "peak_rss_mb"])
        print("\nstreaming / in-memory (same N):")
        for n in piv.index:
            print(f"  N={n}: time {piv.loc[n, ('wall_s', 'streaming')] / piv.loc[n, ('wall_s', 'in-memory')]:.2f}x, "
                  f"peak memory {piv.loc[n, ('peak_rss_mb', 'streaming')] / piv.loc[n, ('peak_rss_mb', 'in-memory')]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
