"""All of the app's caching, in one place (pages and other ui modules never decorate anything).

`st.cache_resource` holds shared read-only objects, one per server process: chip stores, map
geometry, the model, embeddings and FAISS indexes. `st.cache_data` holds tables and results that
each caller gets a copy of: AOI summaries, projections, probe results. Every key includes a stamp
(the modification time of what was read) so that rebuilding a step on the Home page is picked up
without restarting the server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import streamlit as st
from threadpoolctl import threadpool_limits

from core import pipeline
from core.checkpoint import read_model_card
from core.embeddings import EmbeddingError, Embeddings, load_embeddings, model_name_of
from core.grid import ChipGrid
from core.index import ChipIndex
from core.mapping import fit_label_map, predict_other, suggest_next
from core.probes import (
    ProbeData,
    ProbeDraw,
    ProbeResult,
    combine_draws,
    curve_budgets,
    curve_table,
    draw_train_sets,
    fit_draw,
    fit_prepared,
    prepare_probe,
    probe_split,
    probe_summary,
)
from core.project import project_joint, project_representation, umap_2d
from core.representations import (
    RepresentationVectors,
    as_embeddings,
    external_index,
    load_representation,
    source_files,
)
from data.labelsets import LabelSet
from data.store import ChipStore
from data.workspace import SCENARIO_FULL, Workspace
from ui import maps
from ui.errors import UserError
from ui.maps import ChipGeometry


PROBE_THREADS = 1
"""BLAS/OpenMP threads (and random-forest jobs) per probe or UMAP computation: several app sessions share few
cores, and one thread each is fastest when none oversubscribes (as ui/search.py's REQUEST_THREADS)."""


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def store_stamp(root: str, aoi: str) -> float:
    """Modification time of an AOI's store.json (changes when the store is rebuilt)."""
    return _mtime(Workspace(root).store_path(aoi) / "store.json")


@st.cache_resource(max_entries=16, show_spinner=False)
def _store(root: str, aoi: str, stamp: float) -> ChipStore:
    return Workspace(root).open_store(aoi)


def store(root: str, aoi: str) -> ChipStore:
    """The (read-only, shared) chip store of an AOI."""
    return _store(root, aoi, store_stamp(root, aoi))


@st.cache_data(max_entries=64, show_spinner=False)
def _aoi_summary(root: str, aoi: str, stamp: float) -> dict[str, Any]:
    spec = Workspace(root).store_path(aoi) / "store.json"
    try:
        info = json.loads(spec.read_text())
        meta = info["meta"]
        return {
            "aoi": aoi,
            "title": str(meta.get("title") or aoi),
            "simulated": bool(meta.get("simulated", False)),
            "kind": "simulated" if meta.get("simulated", False) else "real",
            "chips": int(info.get("n_chips", 0)),
            "modalities": ", ".join(meta.get("channels", {})),
            "chip size (px)": int(meta.get("chip_size", 0)),
            "pixel (m)": float(meta.get("pixel_size_m", 0.0)),
            "source": str(meta.get("source", "")),
        }
    except (OSError, ValueError, KeyError, TypeError) as e:
        # Unknown provenance is never called real (nor simulated): its kind is "unknown".
        return {"aoi": aoi, "title": aoi, "simulated": False, "kind": "unknown", "chips": 0,
                "error": f"unreadable store.json ({e})"}


def aoi_summary(root: str, aoi: str) -> dict[str, Any]:
    """Title, kind (simulated or real), size and modalities of an AOI, read from its store.json."""
    return _aoi_summary(root, aoi, store_stamp(root, aoi))


def aoi_label(root: str, aoi: str) -> str:
    """How an AOI is named in pickers: its title, always marked simulated or real."""
    s = aoi_summary(root, aoi)
    kind = s["kind"]
    title = s["title"]
    # Titles of simulated stores usually already say "(simulated)"; do not say it twice.
    return title if kind in title.lower() else f"{title} ({kind})"


@st.cache_resource(max_entries=8, show_spinner="Preparing the map…")
def _geometry(root: str, aoi: str, stamp: float) -> ChipGeometry:
    return ChipGeometry.from_index(_store(root, aoi, stamp).index)


def geometry(root: str, aoi: str) -> ChipGeometry:
    """Chip footprints of an AOI formatted for fast map layers (once per AOI and server)."""
    return _geometry(root, aoi, store_stamp(root, aoi))


@st.cache_resource(max_entries=16, show_spinner=False)
def _grid(root: str, aoi: str, stamp: float) -> ChipGrid:
    s = _store(root, aoi, stamp)
    return ChipGrid.from_index(s.index, s.meta.crs)


def grid(root: str, aoi: str) -> ChipGrid:
    """The row/col chip grid of an AOI (click -> chip, scores -> raster), once per AOI and server."""
    return _grid(root, aoi, store_stamp(root, aoi))


@st.cache_data(max_entries=64, show_spinner=False)
def _label_map_png(root: str, aoi: str, task: str, stamp: float) -> bytes:
    return maps.score_png(_grid(root, aoi, stamp), _store(root, aoi, stamp).labels(task), maps.color_scale(task))


def label_map_png(root: str, aoi: str, task: str) -> bytes:
    """The score raster of a label task (the map before a query), shared by every session."""
    return _label_map_png(root, aoi, task, store_stamp(root, aoi))


# ----------------------------------------------------------------------------------------- model outputs
def model_name(checkpoint: "str | Path | None") -> str:
    """The model name used in workspace paths (the checkpoint folder's name)."""
    if checkpoint is None:
        raise UserError("No model checkpoint is available.", "Train one with `python -m training.pretrain` or restore checkpoints/tiny-sim.")
    return model_name_of(checkpoint)


def embeddings_stamp(root: str, aoi: str, model: str, scenario: str = SCENARIO_FULL) -> float:
    """Cache stamp of an AOI's embeddings of one scenario: 0 when missing, else the later of the embeddings'
    and the store's modification times (a store rebuilt under the same name invalidates its embeddings)."""
    t = _mtime(Workspace(root).embeddings_dir(aoi, model, scenario) / "meta.json")
    return max(t, store_stamp(root, aoi)) if t else 0.0


@st.cache_resource(max_entries=48, show_spinner="Loading embeddings…")
def _embeddings(root: str, aoi: str, model: str, scenario: str, stamp: float) -> Embeddings:
    return load_embeddings(Workspace(root), aoi, model, scenario)


def embeddings(root: str, aoi: str, model: str, scenario: str = SCENARIO_FULL) -> Embeddings:
    """An AOI's embeddings of one scenario (shared read-only arrays); UserError with the fix if missing."""
    try:
        return _embeddings(root, aoi, model, scenario, embeddings_stamp(root, aoi, model, scenario))
    except EmbeddingError as e:
        raise UserError(
            f"The {scenario!r} embeddings of {aoi} for model {model} are not built yet.",
            "Press 'Build missing steps' on the Home page (or run `python -m core.pipeline build`).",
            "info",
        ) from e


@st.cache_resource(max_entries=48, show_spinner=False)
def _lookup(root: str, aoi: str, model: str, stamp: float) -> dict[str, int]:
    emb = _embeddings(root, aoi, model, "full", stamp)
    return {c: i for i, c in enumerate(emb.chip_ids.tolist())}


def chip_lookup(root: str, aoi: str, model: str) -> dict[str, int]:
    """chip_id -> row of an AOI's embeddings (built once; a dict lookup per click instead of a scan)."""
    return _lookup(root, aoi, model, embeddings_stamp(root, aoi, model, "full"))


@st.cache_resource(max_entries=64, show_spinner="Loading the search index…")
def _index(root: str, aoi: str, model: str, key: str, stamp: float) -> ChipIndex:
    return ChipIndex.load(Workspace(root).index_dir(aoi, model, key), gpu=False)


def chip_index(root: str, aoi: str, model: str, key: str) -> ChipIndex | None:
    """The FAISS index of one AOI x model x key (read-only, shared), or None when that key has no index."""
    path = Workspace(root).index_dir(aoi, model, key)
    if not (path / "meta.json").is_file():
        return None
    return _index(root, aoi, model, key, max(_mtime(path / "meta.json"), store_stamp(root, aoi)))


@st.cache_data(max_entries=16, show_spinner=False)
def _pipeline_status(root: str, aois: tuple[str, ...] | None, checkpoint: str, steps: tuple[str, ...],
                     stamp: tuple) -> pd.DataFrame:
    return pipeline.status(Workspace(root), aois=aois, checkpoint=checkpoint, steps=steps)


def pipeline_status(root: str, aois: "list[str] | None", checkpoint: "str | Path | None",
                    steps: "list[str] | tuple[str, ...]") -> pd.DataFrame:
    """core.pipeline.status, recomputed only when a manifest, store, embeddings, index or projection file changed."""
    ws = Workspace(root)
    ckpt = Path(checkpoint or pipeline.SHIPPED_CHECKPOINT)
    model = model_name_of(ckpt)
    covered = pipeline.pipeline_aois(ws, aois)
    stamp = ws.step_stamp(covered, model) + (_mtime(ckpt / "model.safetensors"),)
    return _pipeline_status(root, tuple(aois) if aois else None, str(ckpt), tuple(steps), stamp)


@st.cache_data(max_entries=16, show_spinner=False)
def _model_card(path: str, stamp: float) -> dict[str, Any]:
    return read_model_card(path)


def model_card(path: "str | Path") -> dict[str, Any]:
    """A checkpoint's config and meta (no weights loaded)."""
    return _model_card(str(path), _mtime(Path(path) / "meta.json") + _mtime(Path(path) / "config.yaml"))


# ----------------------------------------------------------------------------------------- projections, probes
def _umap_progress(what: str) -> tuple[Any, Callable[[float, str], None]]:
    """A progress bar for a UMAP, and core.project's callback that moves it. Made inside the cached function, so
    Streamlit replays it (already finished and emptied) on a cache hit."""
    bar = st.progress(0.0, text=f"UMAP of {what}: checking the workspace for a stored projection")
    return bar, lambda f, m: bar.progress(min(max(float(f), 0.0), 1.0), text=f"UMAP of {what}: {m}")


@st.cache_data(max_entries=32, show_spinner=False)
def _umap(root: str, aoi: str, model: str, key: str, emb_stamp: float) -> np.ndarray:
    bar, report = _umap_progress(f"{aoi} ({key})")
    with threadpool_limits(limits=PROBE_THREADS):
        xy = umap_2d(Workspace(root), aoi, model, key=key, progress_cb=report)
    bar.empty()
    return xy


def umap(root: str, aoi: str, model: str, key: str) -> np.ndarray:
    """2-D UMAP of an AOI's embeddings of one key [N, 2] (computed once, stored in the workspace by core.project)."""
    embeddings(root, aoi, model)  # a friendly message first when the embeddings are missing
    return _umap(root, aoi, model, key, embeddings_stamp(root, aoi, model))


@st.cache_data(max_entries=8, show_spinner=False)
def _umap_joint(root: str, aois: tuple[str, ...], model: str, key: str, stamps: tuple, external: bool = False) -> np.ndarray:
    if external:
        embs = {a: _representation_embeddings(root, a, model, key, s) for a, s in zip(aois, stamps)}
    else:
        embs = {a: _embeddings(root, a, model, SCENARIO_FULL, s) for a, s in zip(aois, stamps)}
    bar, report = _umap_progress(f"{len(aois)} AOIs ({key})")
    with threadpool_limits(limits=PROBE_THREADS):
        xy = project_joint(Workspace(root), embs, model, key, progress_cb=report)
    bar.empty()
    return xy


def umap_joint(root: str, aois: "list[str] | tuple[str, ...]", model: str, key: str, external: bool = False) -> np.ndarray:
    """2-D UMAP of several AOIs' embeddings (or of one external representation) in one space: rows in the order of
    `aois`, each AOI in store order."""
    aois = tuple(aois)
    if external:
        for a in aois:
            representation(root, a, model, key)
        return _umap_joint(root, aois, model, key, tuple(_representation_stamp(root, a, model, key, ()) for a in aois),
                           True)
    for a in aois:
        embeddings(root, a, model)
    return _umap_joint(root, aois, model, key, tuple(embeddings_stamp(root, a, model) for a in aois))


def _representation_stamp(root: str, aoi: str, model: str, name: str, dropped_channels: tuple) -> tuple:
    return tuple(_mtime(f) for f in source_files(Workspace(root), aoi, model, name, dropped_channels))


@st.cache_resource(max_entries=24, show_spinner="Preparing the representation…")
def _representation(root: str, aoi: str, model: str, name: str, dropped_modalities: tuple, dropped_channels: tuple,
                    stamp: tuple) -> RepresentationVectors:
    # The embeddings come from this module's shared cache, so a representation never loads them twice.
    def loader(scenario: str) -> Embeddings:
        return _embeddings(root, aoi, model, scenario, embeddings_stamp(root, aoi, model, scenario))

    return load_representation(Workspace(root), aoi, model, name, dropped_modalities, dropped_channels,
                               embeddings=loader, store=store(root, aoi))


def representation(root: str, aoi: str, model: str, name: str, dropped_modalities: tuple[str, ...] = (),
                   dropped_channels: tuple[tuple[str, str], ...] = ()) -> RepresentationVectors:
    """core.representations.load_representation, shared read-only: (chip_ids, X, valid) of a named representation."""
    dm, dc = tuple(sorted(set(dropped_modalities))), tuple(sorted(set(dropped_channels)))
    try:
        return _representation(root, aoi, model, name, dm, dc, _representation_stamp(root, aoi, model, name, dc))
    except EmbeddingError as e:
        raise UserError(f"The embeddings behind {name!r} of {aoi} for model {model} are not built yet.",
                        "Press 'Build missing steps' on the Home page (or run `python -m core.pipeline build`).",
                        "info") from e


@st.cache_resource(max_entries=24, show_spinner=False)
def _representation_embeddings(root: str, aoi: str, model: str, name: str, stamp: tuple) -> Embeddings:
    return as_embeddings(_representation(root, aoi, model, name, (), (), stamp), name)


def representation_embeddings(root: str, aoi: str, model: str, name: str) -> Embeddings:
    """A representation (e.g. an external one) as one-key Embeddings for search and the explorer (shared read-only)."""
    representation(root, aoi, model, name)  # the friendly errors first
    return _representation_embeddings(root, aoi, model, name, _representation_stamp(root, aoi, model, name, ()))


@st.cache_resource(max_entries=32, show_spinner="Indexing the external embeddings (once)…")
def _external_index(root: str, aoi: str, name: str, stamp: tuple):
    return external_index(Workspace(root), aoi, name)


def representation_index(root: str, aoi: str, model: str, name: str) -> ChipIndex | None:
    """The FAISS index of an external representation of an AOI (built beside its vectors on first use)."""
    return _external_index(root, aoi, name, _representation_stamp(root, aoi, model, name, ()))


@st.cache_data(max_entries=32, show_spinner=False)
def _umap_representation(root: str, aoi: str, model: str, name: str, stamp: tuple) -> np.ndarray:
    bar, report = _umap_progress(f"{aoi} ({name})")
    with threadpool_limits(limits=PROBE_THREADS):
        xy = project_representation(Workspace(root), aoi, model, name, progress_cb=report)
    bar.empty()
    return xy


def umap_representation(root: str, aoi: str, model: str, name: str) -> np.ndarray:
    """2-D UMAP of any named representation of one AOI [N, 2] (stored in the workspace by core.project)."""
    representation(root, aoi, model, name)
    return _umap_representation(root, aoi, model, name, _representation_stamp(root, aoi, model, name, ()))


# Probes: results are small (metrics, a few arrays); the features behind them are found again from the
# cache keys (AOI, model, representation, what is dropped), so a multi-MB matrix is never hashed per rerun.
# The unit of caching is one draw (the single probe) or one budget (a learning-curve point), so a page can
# count them in a progress bar, and more repeats only fit the draws not made yet.
ProgressFn = Callable[[int, int, str], None]
"""progress(done, total, what is fitted now): called before each unit of work and once when all is done."""


def _probe_key(root: str, aoi: str, model: str, representation: str, dropped_modalities: tuple,
               dropped_channels: tuple) -> tuple:
    """The cache key of a probe's inputs: (root, AOI, model, representation, drops, stamp of the source files)."""
    dm, dc = tuple(sorted(set(dropped_modalities))), tuple(sorted(set(dropped_channels)))
    return root, aoi, model, representation, dm, dc, _representation_stamp(root, aoi, model, representation, dc)


@st.cache_resource(max_entries=8, show_spinner=False)
def _probe_data(root, aoi, model, name, dropped_modalities, dropped_channels, stamp, task) -> ProbeData:
    rep = representation(root, aoi, model, name, dropped_modalities, dropped_channels)
    chips = store(root, aoi)
    y = chips.labels(task).astype(np.float64)
    index = chips.index
    pool, test, _ = probe_split(index["row"].to_numpy(), index["col"].to_numpy(), np.isfinite(y) & rep.valid, seed=0)
    with threadpool_limits(limits=PROBE_THREADS):
        return prepare_probe(rep.X, y, task=task, seed=0, pool=pool, test=test, valid=rep.valid)


@st.cache_data(max_entries=512, show_spinner=False)
def _train_sets(root, aoi, model, name, dropped_modalities, dropped_channels, stamp, task, budget, repeats):
    data = _probe_data(root, aoi, model, name, dropped_modalities, dropped_channels, stamp, task)
    return draw_train_sets(data, budget, repeats)


@st.cache_data(max_entries=4096, show_spinner=False)
def _probe_draw(root, aoi, model, name, dropped_modalities, dropped_channels, stamp, task, estimator, draw, train,
                predict_all) -> ProbeDraw:
    data = _probe_data(root, aoi, model, name, dropped_modalities, dropped_channels, stamp, task)
    with threadpool_limits(limits=PROBE_THREADS):
        return fit_draw(data, estimator, np.asarray(train), draw, n_jobs=PROBE_THREADS, predict_all=predict_all)


def probe(root: str, aoi: str, model: str, *, task: str, estimator: str, budget: int | None, repeats: int,
          representation: str = "fused", dropped_modalities: tuple[str, ...] = (),
          dropped_channels: tuple[tuple[str, str], ...] = (), progress: ProgressFn | None = None) -> dict[str, Any]:
    """One few-shot probe (cached per draw): metrics (mean, std) over repeats, test and full-AOI predictions.
    `progress` counts the draws (repeats); the result equals core.probes.fit_probe's."""
    key = _probe_key(root, aoi, model, representation, dropped_modalities, dropped_channels)
    data = _probe_data(*key, task)
    trains = _train_sets(*key, task, budget, 1 if budget is None else int(repeats))
    draws = []
    for d, train in enumerate(trains):
        if progress is not None:
            progress(d, len(trains), f"repeat {d + 1}")
        # the first draw's map over every chip is drawn on the page; the other draws only score
        draws.append(_probe_draw(*key, task, estimator, d, train, d == 0))
    if progress is not None:
        progress(len(trains), len(trains), "done")
    return _probe_dict(combine_draws(data, estimator, budget, draws))


@st.cache_data(max_entries=1024, show_spinner=False)
def _curve_point(root, aoi, model, name, dropped_modalities, dropped_channels, stamp, task, estimator, budget,
                 repeats) -> ProbeResult:
    data = _probe_data(root, aoi, model, name, dropped_modalities, dropped_channels, stamp, task)
    with threadpool_limits(limits=PROBE_THREADS):
        result = fit_prepared(data, estimator, budget, repeats, n_jobs=PROBE_THREADS, predict_all=False)
    return probe_summary(result)


def curve_fits(n_budgets: int, repeats: int) -> int:
    """Estimator fits of one learning curve: every budget x repeats, plus the full-label fit."""
    return int(n_budgets) * int(repeats) + 1


def curve(root: str, aoi: str, model: str, *, task: str, estimator: str, budgets: tuple, repeats: int,
          representation: str = "fused", dropped_modalities: tuple[str, ...] = (),
          dropped_channels: tuple[tuple[str, str], ...] = (), progress: ProgressFn | None = None) -> pd.DataFrame:
    """Learning curve (score vs label budget) of one representation, cached per budget (the table of
    core.probes.learning_curve). `progress` counts estimator fits (`curve_fits`), one budget at a time."""
    key = _probe_key(root, aoi, model, representation, dropped_modalities, dropped_channels)
    total = curve_fits(len(budgets), repeats)
    if progress is not None:
        progress(0, total, "all labels")
    full = _curve_point(*key, task, estimator, None, 1)
    fit, skipped = curve_budgets(budgets, full.n_pool)
    done = 1 + len(skipped) * int(repeats)  # a budget above the pool is skipped: its fits count as done
    points = []
    for b in fit:
        if b is not None:
            if progress is not None:
                progress(done, total, f"budget {b} x {int(repeats)} repeats")
            points.append(_curve_point(*key, task, estimator, b, int(repeats)))
            done += int(repeats)
        else:
            points.append(full)
    if progress is not None:
        progress(total, total, "done")
    return curve_table(full, points, skipped)


def _probe_dict(r: Any) -> dict[str, Any]:
    """A ProbeResult as plain data (pickled by cache_data)."""
    d = r if isinstance(r, dict) else dict(vars(r))
    return {k: (np.asarray(v) if isinstance(v, (list, tuple)) and k != "metrics" else v) for k, v in d.items()}


# ----------------------------------------------------------------------------------------- few-shot mapping
# A label set is passed as plain tuples (chip_id, label): the cache key is the labels themselves, so a
# new label refits and a threshold move does not. The fit and the suggestions are core.mapping's.
def _label_tuples(label_set: LabelSet) -> tuple[tuple[str, str], ...]:
    return tuple(zip(label_set.labels["chip_id"].tolist(), label_set.labels["label"].tolist()))


@st.cache_data(max_entries=64, show_spinner="Training the map…")
def _label_map(root, aoi, model, rep, estimator, name, kind, classes, labels, stamp):
    vectors = representation(root, aoi, model, rep)
    label_set = LabelSet(aoi, name, kind, list(classes), pd.DataFrame(list(labels), columns=["chip_id", "label"]))
    return fit_label_map(vectors.X, vectors.valid, vectors.chip_ids, label_set, estimator=estimator, representation=rep)


def label_map(root: str, aoi: str, model: str, rep: str, estimator: str, label_set: LabelSet):
    """core.mapping.fit_label_map of a label set on one representation (cached by the labels; MappingError passes)."""
    embeddings(root, aoi, model)
    return _label_map(root, aoi, model, rep, estimator, label_set.name, label_set.kind, tuple(label_set.classes),
                      _label_tuples(label_set), _representation_stamp(root, aoi, model, rep, ()))


@st.cache_data(max_entries=64, show_spinner="Picking chips to label next…")
def _suggestions(root, aoi, model, rep, estimator, name, kind, classes, labels, k, fitted, stamp):
    vectors = representation(root, aoi, model, rep)
    labelled = np.isin(vectors.chip_ids.astype(str), [c for c, _ in labels])
    predictions = None
    if fitted:
        predictions = _label_map(root, aoi, model, rep, estimator, name, kind, classes, labels, stamp).predictions
    return suggest_next(vectors.X, vectors.valid, labelled, predictions, k, seed=0)


def suggestions(root: str, aoi: str, model: str, rep: str, estimator: str, label_set: LabelSet, k: int,
                fitted: bool) -> np.ndarray:
    """core.mapping.suggest_next positions (uncertain and diverse with a fitted map, diverse only without one)."""
    embeddings(root, aoi, model)
    return _suggestions(root, aoi, model, rep, estimator, label_set.name, label_set.kind, tuple(label_set.classes),
                        _label_tuples(label_set), int(k), bool(fitted), _representation_stamp(root, aoi, model, rep, ()))


@st.cache_data(max_entries=64, show_spinner="Applying the map to another AOI…")
def _applied_map(root, aoi, model, rep, estimator, name, kind, classes, labels, stamp, other, other_stamp):
    result = _label_map(root, aoi, model, rep, estimator, name, kind, classes, labels, stamp)
    vectors = representation(root, other, model, rep)
    return predict_other(result, vectors.X, vectors.valid)


def applied_map(root: str, aoi: str, model: str, rep: str, estimator: str, label_set: LabelSet,
                other: str) -> np.ndarray:
    """core.mapping.predict_other: the label set's map (fitted on `aoi`) over another AOI's chips, cached by the labels."""
    embeddings(root, aoi, model)
    embeddings(root, other, model)   # the UserError with the fix when the other AOI has no embeddings yet
    return _applied_map(root, aoi, model, rep, estimator, label_set.name, label_set.kind, tuple(label_set.classes),
                        _label_tuples(label_set), _representation_stamp(root, aoi, model, rep, ()),
                        other, _representation_stamp(root, other, model, rep, ()))
