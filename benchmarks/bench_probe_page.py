"""Probes page controls, timed: each control's rerun in Streamlit's AppTest (the server side of a click).

Opens the probes page of a workspace (its first build of the inputs is timed apart), then moves each
control the way an analyst would, first to a setting not seen yet (uncached), then back (cached):
budget slider, estimator switch (logistic, random forest, kNN, ridge), repeats 5 -> 20, a modality
unchecked. Every rerun is one `AppTest.run`, so the time includes the whole page (metrics, learning
curves, maps). The issue's target (#15) is every control within 2 s after the first build of its
inputs; what cannot be that fast must show counted progress.

Run (from the code to measure; `--app` lets an older checkout be timed with this script):
`python -m benchmarks.bench_probe_page --workspace workspace/demo-150k --checkpoint untrained-16px`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main() -> None:
    """Time the probes page's controls and print one row per control (JSON lines, then a table)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workspace", required=True, help="workspace directory (its first AOI is probed)")
    p.add_argument("--checkpoint", required=True, help="checkpoint name inside the workspace")
    p.add_argument("--app", default=str(Path(__file__).resolve().parents[1] / "app.py"), help="app.py to run")
    p.add_argument("--timeout", type=float, default=900, help="seconds one rerun may take")
    p.add_argument("--skip", nargs="*", default=[], help="controls to leave out (e.g. random_forest)")
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args()
    os.environ["EO_WORKSPACE"] = str(Path(args.workspace).resolve())
    os.environ["EO_CHECKPOINT"] = args.checkpoint
    sys.path.insert(0, str(Path(args.app).resolve().parent))  # the app's own modules, not this checkout's
    from streamlit.testing.v1 import AppTest  # after the path: the app imports ui/core from its folder

    at = AppTest.from_file(args.app, default_timeout=args.timeout)
    at.run()
    rows: list[dict] = []

    def timed(name: str, act) -> None:
        if any(s in name for s in args.skip):
            return
        t0 = time.perf_counter()
        act()
        seconds = time.perf_counter() - t0
        err = [str(e.value)[:120] for e in at.exception] + [str(e.value)[:120] for e in at.error]
        metric = next((m.value for m in at.metric), "")
        rows.append({"control": name, "seconds": round(seconds, 2), "metric": metric, "errors": err})
        print(json.dumps(rows[-1]), flush=True)

    timed("open the probes page (first build of its inputs)", lambda: (at.switch_page("pages/probes.py"), at.run()))
    timed("rerun, nothing changed", lambda: at.run())
    timed("budget 50 -> 250", lambda: at.select_slider(key="probe_budget").set_value(250).run())
    timed("budget 250 -> 50 (seen)", lambda: at.select_slider(key="probe_budget").set_value(50).run())
    timed("repeats 5 -> 20", lambda: at.number_input(key="probe_repeats").set_value(20).run())
    timed("repeats 20 -> 5 (seen)", lambda: at.number_input(key="probe_repeats").set_value(5).run())
    timed("modality s2rgb unchecked", lambda: at.checkbox(key="probe_mod_s2rgb").uncheck().run())
    timed("modality s2rgb checked again (seen)", lambda: at.checkbox(key="probe_mod_s2rgb").check().run())
    for est in ("logistic", "knn", "random_forest"):
        timed(f"estimator ridge -> {est}", lambda est=est: at.selectbox(key="probe_estimator").set_value(est).run())
        timed(f"estimator {est} -> ridge (seen)", lambda: at.selectbox(key="probe_estimator").set_value("ridge").run())
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    print("\n| control | seconds |\n|---|---|")
    for r in rows:
        print(f"| {r['control']} | {r['seconds']:.2f}{' (error)' if r['errors'] else ''} |")


if __name__ == "__main__":
    main()
