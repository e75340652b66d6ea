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
from typing import Any

import numpy as np

import streamlit as st

from data.store import ChipStore
from data.workspace import Workspace
from ui.maps import ChipGeometry


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


# ----------------------------------------------------------------------------------------- model outputs
def model_name(checkpoint: "str | Path | None") -> str:
    """The model name used in workspace paths (the checkpoint folder's name)."""
    from core.embed import model_name_of

    if checkpoint is None:
        from ui.errors import UserError

        raise UserError("No model checkpoint is available.", "Train one with `python -m training.pretrain` or restore checkpoints/tiny-sim.")
    return model_name_of(checkpoint)


def embeddings_stamp(root: str, aoi: str, model: str, scenario: str = "full") -> float:
    """Cache stamp of an AOI's embeddings of one scenario: 0 when missing, else the later of the embeddings'
    and the store's modification times (a store rebuilt under the same name invalidates its embeddings)."""
    t = _mtime(Workspace(root).artifact_dir("embeddings", aoi, model, scenario) / "meta.json")
    return max(t, store_stamp(root, aoi)) if t else 0.0


@st.cache_resource(max_entries=48, show_spinner="Loading embeddings…")
def _embeddings(root: str, aoi: str, model: str, scenario: str, stamp: float):
    from core.embed import load_embeddings

    return load_embeddings(Workspace(root), aoi, model, scenario)


def embeddings(root: str, aoi: str, model: str, scenario: str = "full"):
    """An AOI's embeddings of one scenario (shared read-only arrays); UserError with the fix if missing."""
    from core.embed import EmbeddingError
    from ui.errors import UserError

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
def _index(root: str, aoi: str, model: str, key: str, stamp: float):
    from core.index import ChipIndex

    return ChipIndex.load(Workspace(root).artifact_dir("indexes", aoi, model, key), gpu=False)


def chip_index(root: str, aoi: str, model: str, key: str):
    """The FAISS index of one AOI x model x key (read-only, shared), or None when that key has no index."""
    path = Workspace(root).artifact_dir("indexes", aoi, model, key)
    if not (path / "meta.json").is_file():
        return None
    return _index(root, aoi, model, key, max(_mtime(path / "meta.json"), store_stamp(root, aoi)))


@st.cache_data(max_entries=16, show_spinner=False)
def _model_card(path: str, stamp: float) -> dict[str, Any]:
    from core.checkpoint import read_model_card

    return read_model_card(path)


def model_card(path: "str | Path") -> dict[str, Any]:
    """A checkpoint's config and meta (no weights loaded)."""
    return _model_card(str(path), _mtime(Path(path) / "meta.json") + _mtime(Path(path) / "config.yaml"))


# ----------------------------------------------------------------------------------------- projections, probes
@st.cache_data(max_entries=32, show_spinner=False)
def _umap(root: str, aoi: str, model: str, key: str, emb_stamp: float):
    from core.project import umap_2d

    return umap_2d(Workspace(root), aoi, model, key=key)


def umap(root: str, aoi: str, model: str, key: str):
    """2-D UMAP of an AOI's embeddings of one key [N, 2] (computed once, stored in the workspace by core.project)."""
    embeddings(root, aoi, model)  # a friendly message first when the embeddings are missing
    return _umap(root, aoi, model, key, embeddings_stamp(root, aoi, model))


ALL_AOIS = "all-aois"
"""Projection folder of the joint UMAP of several AOIs (under projections/, beside the per-AOI folders)."""


@st.cache_data(max_entries=8, show_spinner=False)
def _umap_joint(root: str, aois: tuple[str, ...], model: str, key: str, stamps: tuple):
    from core.project import project_aoi

    embs = [_embeddings(root, a, model, "full", s) for a, s in zip(aois, stamps)]
    vectors = np.concatenate([e.get(key)[0] for e in embs])
    present = np.concatenate([e.get(key)[1] for e in embs])
    ids = np.concatenate([[f"{a}:{c}" for c in e.chip_ids] for a, e in zip(aois, embs)])
    # Cached in the workspace by content (the vectors' digest), so a rebuilt AOI recomputes it.
    return project_aoi(Workspace(root), ALL_AOIS, model, key, vectors=vectors, present=present, chip_ids=ids)


def umap_joint(root: str, aois: "list[str] | tuple[str, ...]", model: str, key: str):
    """2-D UMAP of several AOIs' embeddings in one space: rows in the order of `aois`, each AOI in store order."""
    for a in aois:
        embeddings(root, a, model)
    aois = tuple(aois)
    return _umap_joint(root, aois, model, key, tuple(embeddings_stamp(root, a, model) for a in aois))


def drop_scenario(modality: str, channels: "list[str] | tuple[str, ...]") -> str:
    """Embedding scenario name for a modality embedded without some of its channels."""
    return f"drop-{modality}-{'+'.join(channels)}"


@st.cache_resource(max_entries=16, show_spinner=False)
def _features(root: str, aoi: str, model: str, dropped_modalities: tuple, dropped_channels: tuple, stamp: tuple):
    from core.model import fuse

    full = _embeddings(root, aoi, model, "full", stamp[0])
    by_mod = {}
    for mod in full.modalities:
        if mod in dropped_modalities:
            continue
        chans = [c for m, c in dropped_channels if m == mod]
        src = _embeddings(root, aoi, model, drop_scenario(mod, chans), embeddings_stamp(root, aoi, model, drop_scenario(mod, chans))) if chans else full
        by_mod[mod] = (src.vectors[mod], src.present[mod])
    if not by_mod:
        n = len(full)
        return np.zeros((n, full.dim), np.float32), np.zeros(n, bool)
    x, present = fuse({m: v for m, (v, _) in by_mod.items()}, {m: p for m, (_, p) in by_mod.items()})
    return np.asarray(x, dtype=np.float32), np.asarray(present, dtype=bool)


def probe_features(root: str, aoi: str, model: str, dropped_modalities: tuple[str, ...] = (),
                   dropped_channels: tuple[tuple[str, str], ...] = ()) -> "tuple[np.ndarray, np.ndarray]":
    """Fused embeddings [N, D] and presence [N] as if some modalities/channels were missing at inference.

    Towers are independent, so a modality missing channels takes its vectors from the matching
    `drop-<mod>-<channels>` scenario and the others from `full`; the fused vector is re-made from them.
    """
    embeddings(root, aoi, model)
    for mod in {m for m, _ in dropped_channels}:
        chans = sorted(c for m, c in dropped_channels if m == mod)
        scen = drop_scenario(mod, chans)
        if embeddings_stamp(root, aoi, model, scen) == 0.0:
            from ui.errors import UserError

            raise UserError(f"Embeddings without {mod} {', '.join(chans)} are not built yet.",
                            "Press the button below to build them.", "info")
    stamp = _probe_stamp(root, aoi, model, "embeddings", dropped_channels)[1:]  # the embeddings' stamps
    dc = tuple(sorted(dropped_channels))
    return _features(root, aoi, model, tuple(sorted(dropped_modalities)), dc, stamp)


@st.cache_resource(max_entries=8, show_spinner="Computing hand-crafted features…")
def _handcrafted(root: str, aoi: str, stamp: float):
    from core.features import handcrafted_features

    x = np.asarray(handcrafted_features(_store(root, aoi, stamp)), dtype=np.float32)
    # A chip missing a modality has NaN statistics: column means keep it usable (as core.evaluate does).
    with np.errstate(all="ignore"):
        means = np.nan_to_num(np.nanmean(np.where(np.isfinite(x), x, np.nan), axis=0))
    bad = ~np.isfinite(x)
    x[bad] = np.take(means, np.nonzero(bad)[1])
    return x


def handcrafted(root: str, aoi: str) -> "np.ndarray":
    """Per-chip hand-crafted features (channel statistics) of an AOI: the probes' non-learned baseline."""
    return _handcrafted(root, aoi, store_stamp(root, aoi))


# Probes: results are small (metrics, a few arrays); the features behind them are found again from the
# cache keys (AOI, model, what is dropped), so a multi-MB matrix is never hashed per rerun.
def _probe_inputs(root: str, aoi: str, model: str, features: str, dropped_modalities: tuple, dropped_channels: tuple,
                  task: str):
    store = _store(root, aoi, store_stamp(root, aoi))
    y = store.labels(task).astype(np.float64)
    if features == "embeddings":
        x, present = probe_features(root, aoi, model, dropped_modalities, dropped_channels)
    elif features == "random-init":
        emb = embeddings(root, aoi, model, "random-init")
        x, present = emb.get("fused")
    elif features == "hand-crafted":
        x = handcrafted(root, aoi)
        present = np.ones(len(x), dtype=bool)
    else:
        raise ValueError(f"unknown feature set {features!r}")
    return x, y, present


def _blocked(root: str, aoi: str, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from core.probes import probe_split

    index = _store(root, aoi, store_stamp(root, aoi)).index
    pool, test, _ = probe_split(index["row"].to_numpy(), index["col"].to_numpy(), valid, seed=0)
    return pool, test


@st.cache_data(max_entries=256, show_spinner=False)
def _probe(root, aoi, model, features, dropped_modalities, dropped_channels, task, estimator, budget, repeats, stamp):
    from core.probes import fit_probe

    x, y, present = _probe_inputs(root, aoi, model, features, dropped_modalities, dropped_channels, task)
    pool, test = _blocked(root, aoi, np.isfinite(y) & present)
    r = fit_probe(x, y, task=task, estimator=estimator, budget=budget, repeats=repeats, seed=0, pool=pool, test=test,
                  valid=present)
    return _probe_dict(r)  # fit_probe(valid=present) already leaves chips without input unpredicted


def probe(root: str, aoi: str, model: str, *, task: str, estimator: str, budget: int | None, repeats: int,
          features: str = "embeddings", dropped_modalities: tuple[str, ...] = (),
          dropped_channels: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """One few-shot probe (cached): metrics (mean, std) over repeats, test and full-AOI predictions."""
    stamp = _probe_stamp(root, aoi, model, features, dropped_channels)
    return _probe(root, aoi, model, features, tuple(sorted(dropped_modalities)), tuple(sorted(dropped_channels)),
                  task, estimator, budget, int(repeats), stamp)


@st.cache_data(max_entries=128, show_spinner=False)
def _curve(root, aoi, model, features, dropped_modalities, dropped_channels, task, estimator, budgets, repeats, stamp):
    from core.probes import learning_curve

    x, y, present = _probe_inputs(root, aoi, model, features, dropped_modalities, dropped_channels, task)
    pool, test = _blocked(root, aoi, np.isfinite(y) & present)
    return learning_curve(x, y, budgets=budgets, task=task, estimator=estimator, repeats=repeats, seed=0, pool=pool,
                          test=test, valid=present)


def curve(root: str, aoi: str, model: str, *, task: str, estimator: str, budgets: tuple, repeats: int,
          features: str = "embeddings", dropped_modalities: tuple[str, ...] = (),
          dropped_channels: tuple[tuple[str, str], ...] = ()):
    """Learning curve (score vs label budget) of one feature set (cached; see core.probes.learning_curve)."""
    stamp = _probe_stamp(root, aoi, model, features, dropped_channels)
    return _curve(root, aoi, model, features, tuple(sorted(dropped_modalities)), tuple(sorted(dropped_channels)),
                  task, estimator, tuple(budgets), int(repeats), stamp)


def _probe_stamp(root: str, aoi: str, model: str, features: str, dropped_channels: tuple) -> tuple:
    """What a probe's inputs were built from: the store and the embeddings (incl. drop scenarios) it reads."""
    if features == "hand-crafted":
        return (store_stamp(root, aoi),)
    if features == "random-init":
        return (store_stamp(root, aoi), embeddings_stamp(root, aoi, model, "random-init"))
    mods = sorted({m for m, _ in dropped_channels})
    return (store_stamp(root, aoi), embeddings_stamp(root, aoi, model)) + tuple(
        embeddings_stamp(root, aoi, model, drop_scenario(m, sorted(c for mm, c in dropped_channels if mm == m)))
        for m in mods)


def _probe_dict(r: Any) -> dict[str, Any]:
    """A ProbeResult as plain data (pickled by cache_data)."""
    d = r if isinstance(r, dict) else dict(vars(r))
    return {k: (np.asarray(v) if isinstance(v, (list, tuple)) and k != "metrics" else v) for k, v in d.items()}


# ----------------------------------------------------------------------------------------- few-shot mapping
# A label set is passed as plain tuples (chip_id, label): the cache key is the labels themselves, so a
# new label refits and a threshold move does not. The fit and the suggestions are core.mapping's.
def _label_tuples(label_set: Any) -> tuple[tuple[str, str], ...]:
    return tuple(zip(label_set.labels["chip_id"].tolist(), label_set.labels["label"].tolist()))


@st.cache_data(max_entries=64, show_spinner="Training the map…")
def _label_map(root, aoi, model, representation, estimator, name, kind, classes, labels, stamp):
    import pandas as pd

    from core.mapping import fit_label_map
    from data.labelsets import LabelSet

    emb = _embeddings(root, aoi, model, "full", stamp)
    X, valid = emb.get(representation)
    label_set = LabelSet(aoi, name, kind, list(classes), pd.DataFrame(list(labels), columns=["chip_id", "label"]))
    return fit_label_map(X, valid, emb.chip_ids, label_set, estimator=estimator, representation=representation)


def label_map(root: str, aoi: str, model: str, representation: str, estimator: str, label_set: Any):
    """core.mapping.fit_label_map of a label set on one representation (cached by the labels; MappingError passes)."""
    embeddings(root, aoi, model)
    return _label_map(root, aoi, model, representation, estimator, label_set.name, label_set.kind,
                      tuple(label_set.classes), _label_tuples(label_set), embeddings_stamp(root, aoi, model))


@st.cache_data(max_entries=64, show_spinner="Picking chips to label next…")
def _suggestions(root, aoi, model, representation, estimator, name, kind, classes, labels, k, fitted, stamp):
    from core.mapping import suggest_next

    emb = _embeddings(root, aoi, model, "full", stamp)
    X, valid = emb.get(representation)
    lookup = _lookup(root, aoi, model, stamp)
    labelled = np.zeros(len(X), dtype=bool)
    labelled[[lookup[c] for c, _ in labels if c in lookup]] = True
    predictions = None
    if fitted:
        predictions = _label_map(root, aoi, model, representation, estimator, name, kind, classes, labels, stamp).predictions
    return suggest_next(X, valid, labelled, predictions, k, seed=0)


def suggestions(root: str, aoi: str, model: str, representation: str, estimator: str, label_set: Any, k: int,
                fitted: bool) -> np.ndarray:
    """core.mapping.suggest_next positions (uncertain and diverse with a fitted map, diverse only without one)."""
    embeddings(root, aoi, model)
    return _suggestions(root, aoi, model, representation, estimator, label_set.name, label_set.kind,
                        tuple(label_set.classes), _label_tuples(label_set), int(k), bool(fitted),
                        embeddings_stamp(root, aoi, model))


@st.cache_data(max_entries=64, show_spinner="Applying the map to another AOI…")
def _applied_map(root, aoi, model, representation, estimator, name, kind, classes, labels, stamp, other, other_stamp):
    from core.mapping import predict_other

    result = _label_map(root, aoi, model, representation, estimator, name, kind, classes, labels, stamp)
    X, valid = _embeddings(root, other, model, "full", other_stamp).get(representation)
    return predict_other(result, X, valid)


def applied_map(root: str, aoi: str, model: str, representation: str, estimator: str, label_set: Any,
                other: str) -> np.ndarray:
    """core.mapping.predict_other: the label set's map (fitted on `aoi`) over another AOI's chips, cached by the labels."""
    embeddings(root, aoi, model)
    embeddings(root, other, model)   # the UserError with the fix when the other AOI has no embeddings yet
    return _applied_map(root, aoi, model, representation, estimator, label_set.name, label_set.kind,
                        tuple(label_set.classes), _label_tuples(label_set), embeddings_stamp(root, aoi, model),
                        other, embeddings_stamp(root, other, model))
