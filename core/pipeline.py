"""The workspace pipeline: stores -> embeddings (shipped checkpoint) -> FAISS indexes, per AOI; idempotent.

Steps per AOI:

- ``store``: the simulated demo AOIs are generated when missing (`data.simulate.build_default_stores`);
  ingested AOIs (any other store in the workspace) are used as they are.
- ``embeddings``: the "full" scenario with the checkpoint (`core.embed.embed_aoi`).
- ``index``: one FAISS index per key (each modality and fused) over the chips where it is present,
  at `<workspace>/indexes/<aoi>/<model>/<key>/`; and one per external representation of the AOI (#17,
  `core.representations.external_index`), beside its vectors.
- ``random-init``: embeddings of the same architecture untrained, the probes' baseline (cheap: the
  tiny model embeds a 2,025-chip AOI in ~5 s on 2 idle cores).

- ``projection``: the 2-D UMAP of the fused embeddings (`core.project`), so the explorer opens at once
  (other keys are projected on demand by the app).

`status()` says what is built, missing
or stale; `build()` does only what is missing or stale, so a second run does nothing and says so.
This is what `make run` calls: `python -m core.pipeline build`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import pandas as pd
from tqdm import tqdm

from core.checkpoint import SHIPPED_CHECKPOINT, CheckpointError, read_config
from core.embed import embed_aoi
from core.embeddings import Embeddings, embeddings_state, load_embeddings, model_name_of
from core.index import ChipIndex
from core.progress import ProgressCallback, clamp_fraction
from core.project import project_aoi, projection_state
from core.representations import external_index, external_index_current, external_names, present_counts
from data.cli import KnownError, command_line
from data.integrity import damage_summary, folder_problems
from data.landcover import DEFAULT_AOIS
from data.simulate import DEFAULT_CHIPS_PER_AOI, SIMULATOR_VERSION, build_default_stores
from data.store import ChipStore, StoreError
from data.workspace import SCENARIO_FULL, SCENARIO_RANDOM, Workspace, locked

STEPS: tuple[str, ...] = ("store", "embeddings", "index", "random-init", "projection")
# random-init is cheap with the tiny model (~5 s per 2,025-chip AOI on 2 idle cores, measured), so the default
# build includes it and the app's probe baselines are ready at start. Likewise the UMAP of the fused embeddings
# (~4 s per AOI, plus ~15 s of numba compilation once): the explorer then opens without a wait.
DEFAULT_STEPS: tuple[str, ...] = STEPS


class PipelineError(KnownError):
    """A pipeline step cannot run (missing checkpoint, broken store): the message says the fix."""


def pipeline_aois(ws: Workspace, aois: Sequence[str] | None = None) -> list[str]:
    """AOIs the pipeline covers: the given ones, else the simulated demo AOIs plus every store present."""
    if aois:
        return list(aois)
    return list(DEFAULT_AOIS) + [a for a in ws.list_stores() if a not in DEFAULT_AOIS]


def _check_steps(steps: Sequence[str] | None) -> list[str]:
    steps = list(steps or DEFAULT_STEPS)
    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise ValueError(f"unknown pipeline steps {bad}; known: {list(STEPS)}")
    return steps


def index_dir(ws: Workspace, aoi: str, model_name: str, key: str) -> Path:
    """Folder of one AOI x model x key FAISS index (`Workspace.index_dir`)."""
    return ws.index_dir(aoi, model_name, key)


def _embedding_stamp(meta: dict) -> dict:
    """What an index was built from: enough to notice re-embedded vectors."""
    return {k: meta.get(k) for k in ("source_sha", "chip_ids_digest", "created", "n_chips")}


def _index_state(ws: Workspace, aoi: str, model_name: str) -> tuple[str, str]:
    """State of an AOI's indexes against its current full embeddings."""
    emb_meta_f = ws.embeddings_dir(aoi, model_name, SCENARIO_FULL) / "meta.json"
    if not emb_meta_f.is_file():
        return "missing", "needs the embeddings first"
    emb_meta = json.loads(emb_meta_f.read_text())
    stamp = _embedding_stamp(emb_meta)
    built, stale, missing, empty, damaged = [], [], [], [], []
    counts = present_counts(ws, aoi, model_name, SCENARIO_FULL)
    if not counts:
        return "stale", "the embeddings' present.npz is unreadable; re-embed"
    for key in emb_meta.get("keys", []):
        if counts.get(key, 0) == 0:
            empty.append(key)  # no chip has this modality (e.g. coh in real data): nothing to index
            continue
        f = index_dir(ws, aoi, model_name, key) / "meta.json"
        if not f.is_file():
            missing.append(key)
            continue
        try:
            meta = json.loads(f.read_text())
        except ValueError:
            stale.append(key)
            continue
        if isinstance(meta.get("integrity"), dict) and (problems := folder_problems(f.parent, meta["integrity"])):
            damaged.append(f"{key}: {damage_summary(problems, 2)}")
            continue
        (built if meta.get("embeddings") == stamp else stale).append(key)
    if damaged:
        fix = f"rebuild with `python -m core.pipeline build --workspace {ws.root} --aoi {aoi}`"
        return "damaged", f"{fix}: index " + "; ".join(damaged)
    if missing:
        return "missing", f"no index for {missing}"
    if stale:
        return "stale", f"indexes {stale} predate the current embeddings"
    return "built", ", ".join(built) + (f" (no chips with {empty}: not indexed)" if empty else "")


def _store_state(ws: Workspace, aoi: str) -> tuple[str, str, ChipStore | None]:
    """(state, detail, the opened store or None): callers reuse the store rather than open it again."""
    path = ws.store_path(aoi)
    if not path.exists():
        hint = "simulated demo AOI, generated by build" if aoi in DEFAULT_AOIS else "ingest it with `python -m data.ingest`"
        return "missing", hint, None
    try:
        store = ws.open_store(aoi)
    except StoreError as e:
        return "damaged", str(e), None
    if (health := store.verify()).startswith("damaged"):  # "damaged: <what>; rebuild with `...`"
        what, _, fix = health.removeprefix("damaged: ").rpartition("; ")
        return "damaged", f"{fix}: {what}", None
    kind = "simulated" if store.meta.simulated else "real"
    version = store.meta.extra.get("request", {}).get("version")
    if store.meta.simulated and aoi in DEFAULT_AOIS and version is not None and version != SIMULATOR_VERSION:
        return "stale", f"simulated with simulator version {version}, now {SIMULATOR_VERSION}: build regenerates it", store
    return "built", f"{len(store)} chips, {kind}: {store.meta.title}; modalities {store.modalities}", store


def status(ws: Workspace | None = None, *, aois: Sequence[str] | None = None,
           checkpoint: str | Path = SHIPPED_CHECKPOINT, steps: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per AOI x step: aoi, step, state (built / missing / stale), detail."""
    ws = ws or Workspace()
    steps = _check_steps(steps or STEPS)
    model_name = model_name_of(checkpoint)
    ckpt_ok = (Path(checkpoint) / "model.safetensors").is_file()
    rows = []
    for aoi in pipeline_aois(ws, aois):
        s_state, s_detail, store = _store_state(ws, aoi)
        for step in steps:
            if step == "store":
                state, detail = s_state, s_detail
            elif s_state != "built":
                state, detail = "missing", "needs the store first"
            elif step in ("embeddings", "random-init"):
                if not ckpt_ok:
                    state, detail = "missing", f"checkpoint {checkpoint} is missing"
                else:
                    scenario = SCENARIO_FULL if step == "embeddings" else SCENARIO_RANDOM
                    state, detail = embeddings_state(ws, aoi, checkpoint, scenario, store)
            elif step == "projection":
                state, detail = projection_state(ws, aoi, model_name)
            else:
                state, detail = _index_state(ws, aoi, model_name)
            rows.append({"aoi": aoi, "step": step, "state": state, "detail": detail})
    return pd.DataFrame(rows, columns=["aoi", "step", "state", "detail"])


def _build_indexes(ws: Workspace, aoi: str, model_name: str, emb: Embeddings) -> dict[str, int]:
    """One FAISS index per key over the chips where that key is present; returns key -> vectors indexed."""
    stamp = _embedding_stamp(emb.meta)
    counts = {}
    for key in emb.keys:
        vectors, present = emb.get(key)
        counts[key] = int(present.sum())
        path = index_dir(ws, aoi, model_name, key)
        if counts[key] == 0:
            # e.g. coh in an ingested real AOI: nothing to search; drop an index left from older vectors.
            if path.exists():
                shutil.rmtree(path)
            continue
        index = ChipIndex.build(vectors[present], emb.chip_ids[present], gpu=False)
        index.meta.update(embeddings=stamp, aoi=aoi, model_name=model_name, key=key,
                          simulated=bool(emb.meta.get("simulated")))
        index.save(path, overwrite=True)
    return counts


def _build_external_indexes(ws: Workspace, aoi: str) -> list[dict]:
    """Index the AOI's external representations whose index is missing or older than their vectors."""
    actions = []
    for name in external_names(ws, aoi):
        if external_index_current(ws, aoi, name):
            continue
        t0 = time.perf_counter()
        external_index(ws, aoi, name)
        actions.append({"aoi": aoi, "step": f"index:{name}", "action": "built",
                        "seconds": round(time.perf_counter() - t0, 1)})
    return actions


class _Route:
    """One AOI's steps in a build: its store is opened once and its full embeddings loaded once, then shared."""

    def __init__(self, ws: Workspace, aoi: str, checkpoint: str | Path, model_name: str,
                 store: ChipStore | None = None) -> None:
        self.ws, self.aoi, self.checkpoint, self.model_name = ws, aoi, checkpoint, model_name
        self._store = store
        self._states: dict[str, str] = {}
        self._full: Embeddings | None = None

    @property
    def store(self) -> ChipStore:
        """The AOI's chip store (opened on first use)."""
        if self._store is None:
            self._store = self.ws.open_store(self.aoi)
        return self._store

    def embeddings_state(self, scenario: str) -> str:
        """built / missing / stale of one scenario, checked against the store once per build."""
        if scenario not in self._states:
            self._states[scenario] = embeddings_state(self.ws, self.aoi, self.checkpoint, scenario, self.store,
                                                      model_name=self.model_name)[0]
        return self._states[scenario]

    def built(self, scenario: str) -> None:
        """A scenario was just (re)embedded: its state is built and any loaded vectors are outdated."""
        self._states[scenario] = "built"
        if scenario == SCENARIO_FULL:
            self._full = None

    @property
    def full_embeddings(self) -> Embeddings:
        """The full embeddings (already checked against the store by `embeddings_state`, so not re-checked)."""
        if self._full is None:
            self._full = load_embeddings(self.ws, self.aoi, self.model_name, SCENARIO_FULL, check_store=False)
        return self._full


@locked("pipeline build")
def build(ws: Workspace | None = None, aois: Sequence[str] | None = None, steps: Sequence[str] | None = None,
          progress_cb: ProgressCallback | None = None, *, checkpoint: str | Path = SHIPPED_CHECKPOINT,
          chips_per_aoi: int = DEFAULT_CHIPS_PER_AOI, chip_size: int = 64, workers: int = 2,
          progress: bool = True) -> pd.DataFrame:
    """Build whatever is missing or stale; returns the actions table (aoi, step, action, seconds)."""
    ws = ws or Workspace()
    steps = _check_steps(steps)
    names = pipeline_aois(ws, aois)
    model_name = model_name_of(checkpoint)
    actions: list[dict] = []
    opened: dict[str, ChipStore] = {}  # stores the store step already opened (reused by the later steps)

    def report(step: str, fraction: float, message: str) -> None:
        if progress_cb:
            progress_cb(clamp_fraction(fraction), f"{step}: {message}")

    # Stores first, the simulated ones in parallel processes.
    if "store" in steps:
        t0 = time.perf_counter()
        states = {a: _store_state(ws, a) for a in names}
        todo = [a for a in names if states[a][0] != "built"]
        opened = {a: st[2] for a, st in states.items() if st[0] == "built" and st[2] is not None}
        sim = [a for a in todo if a in DEFAULT_AOIS]
        other = [a for a in todo if a not in DEFAULT_AOIS]
        if other:
            raise PipelineError(f"no usable store for AOI(s) {other} in {ws.stores_dir}: only the simulated demo AOIs "
                                f"{list(DEFAULT_AOIS)} are generated; ingest others with `python -m data.ingest`")
        if sim:
            report("store", 0.0, f"simulating {len(sim)} AOI store(s) (simulated data)")
            result = build_default_stores(ws, chips_per_aoi=chips_per_aoi, chip_size=chip_size, workers=workers, aois=sim,
                                          progress=progress)
            for aoi, how in result.items():
                ws.record(f"store/{aoi}", action=how, simulated=True, chips_per_aoi=chips_per_aoi, chip_size=chip_size)
            actions += [{"aoi": a, "step": "store", "action": result.get(a, "built"),
                         "seconds": round(time.perf_counter() - t0, 1)} for a in sim]
        report("store", 1.0, "stores ready")

    later = [s for s in steps if s != "store"]
    if later:
        if not (Path(checkpoint) / "model.safetensors").is_file():
            raise PipelineError(f"checkpoint {checkpoint} is missing: train it with `python -m training.pretrain` "
                                f"(see README) or pass --checkpoint DIR")
        try:
            read_config(checkpoint)
        except CheckpointError as e:
            raise PipelineError(str(e)) from e
    tasks = [(aoi, step) for aoi in names for step in later]
    bar = tqdm(total=len(tasks), desc="pipeline", unit="step", disable=not progress or not tasks)
    routes: dict[str, _Route] = {a: _Route(ws, a, checkpoint, model_name, store) for a, store in opened.items()}
    for i, (aoi, step) in enumerate(tasks):
        t0 = time.perf_counter()
        bar.set_postfix_str(f"{aoi} {step}")
        route = routes.setdefault(aoi, _Route(ws, aoi, checkpoint, model_name))
        if step in ("embeddings", "random-init"):
            scenario = SCENARIO_FULL if step == "embeddings" else SCENARIO_RANDOM
            state = route.embeddings_state(scenario)
            if state != "built":
                embed_aoi(ws, aoi, checkpoint, scenario, progress=progress, store=route.store,
                          progress_cb=lambda f, m, s=step, i=i: report(s, (i + f) / len(tasks), m))
                route.built(scenario)
                ws.record(f"embeddings/{aoi}/{model_name}/{scenario}", checkpoint=str(checkpoint),
                          seconds=round(time.perf_counter() - t0, 1))
                actions.append({"aoi": aoi, "step": step, "action": "built" if state == "missing" else "rebuilt",
                                "seconds": round(time.perf_counter() - t0, 1)})
        else:  # index / projection: both derived from the full embeddings
            if step == "index":
                actions += _build_external_indexes(ws, aoi)
            state, _ = (_index_state if step == "index" else projection_state)(ws, aoi, model_name)
            if state != "built":
                if route.embeddings_state(SCENARIO_FULL) != "built":
                    raise PipelineError(f"cannot build the {step} of {aoi}: its embeddings are not built; "
                                        "run the 'embeddings' step")
                if step == "index":
                    info = {"vectors": _build_indexes(ws, aoi, model_name, route.full_embeddings)}
                else:
                    info = {"points": len(project_aoi(ws, aoi, model_name, "fused", embeddings=route.full_embeddings))}
                ws.record(f"{'indexes' if step == 'index' else 'projections'}/{aoi}/{model_name}", **info,
                          seconds=round(time.perf_counter() - t0, 1))
                actions.append({"aoi": aoi, "step": step, "action": "built" if state == "missing" else "rebuilt",
                                "seconds": round(time.perf_counter() - t0, 1)})
        report(step, (i + 1) / len(tasks), f"{aoi} {step} done")
        bar.update(1)
    bar.close()
    return pd.DataFrame(actions, columns=["aoi", "step", "action", "seconds"])


# ----------------------------------------------------------------------------------------- CLI
@command_line(also=(ValueError,))  # ValueError: settings such as --chips-per-aoi checked by the simulator
def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `build` the workspace (idempotent) or show its `status`."""
    ap = argparse.ArgumentParser(
        prog="python -m core.pipeline",
        description="Build the AOI workspace: chip stores (SIMULATED demo AOIs when missing), embeddings with the "
        "shipped checkpoint, FAISS indexes, the random-init baseline embeddings and the UMAP of the fused embeddings. Only what is missing or "
        "stale is built; a second run does nothing.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    for name, text in (("build", "build what is missing or stale"), ("status", "show the state of every step")):
        p = sub.add_parser(name, help=text, description=text, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("--workspace", default=None, help="workspace directory (default: $EO_WORKSPACE or ./workspace)")
        p.add_argument("--aoi", nargs="+", default=None,
                       help="AOIs (default: the simulated demo AOIs plus every store in the workspace)")
        p.add_argument("--steps", nargs="+", default=list(DEFAULT_STEPS if name == "build" else STEPS), choices=list(STEPS),
                       help="steps to run/show (random-init: untrained-model embeddings, the probes' baseline; projection: UMAP of the fused embeddings)")
        p.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT), help="checkpoint directory")
        if name == "build":
            p.add_argument("--chips-per-aoi", type=int, default=DEFAULT_CHIPS_PER_AOI,
                           help="chips per simulated demo AOI (only when a store is generated)")
            p.add_argument("--chip-size", type=int, default=64,
                           help="pixels per chip side of a generated simulated store (e.g. 16 for a 150 K-chip demo)")
            p.add_argument("--workers", type=int, default=2, help="processes for simulating stores")
            p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    ws = Workspace(args.workspace)
    if args.command == "status":
        table = status(ws, aois=args.aoi, checkpoint=args.checkpoint, steps=args.steps)
        with pd.option_context("display.max_colwidth", 90, "display.width", 200):
            print(table.to_string(index=False))
        return 0
    t0 = time.perf_counter()
    actions = build(ws, args.aoi, args.steps, checkpoint=args.checkpoint, chips_per_aoi=args.chips_per_aoi,
                    chip_size=args.chip_size, workers=args.workers, progress=not args.quiet)
    seconds = time.perf_counter() - t0
    if actions.empty:
        print(f"workspace {ws.root} is up to date: nothing to build ({seconds:.1f} s)")
    else:
        print(actions.to_string(index=False))
        print(f"built {len(actions)} step(s) in {ws.root} in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
