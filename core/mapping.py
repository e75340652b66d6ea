"""Few-shot mapping on your own labels: fit a probe on a label set, map every chip, suggest what to label next.

The analyst's loop (DESIGN.md, "The few-shot mapping loop"): label a few chips of an AOI (a
`data.labelsets.LabelSet`), `fit_label_map` on a representation of that AOI (an embedding key such as
`fused`), look at the prediction over every chip and its cross-validated score, turn it into detections
with a threshold, take `suggest_next` (uncertain AND diverse chips), label them, refit; then export the
map and the labels with provenance (`export_map`, `export_label_set`).

Targets per label kind: `binary` -> P(present); `multiclass` -> the most probable class (`classes_pred`,
an index into the set's classes) and its probability (`predictions`); `fraction` -> the predicted
fraction, clipped to [0, 1]. Detections are chips whose prediction is >= the threshold.

Exports carry a provenance record (`map_provenance`): GeoJSON in a top-level `"provenance"` member,
GeoParquet in the file's key-value metadata under `provenance` (JSON), CSV as leading comment lines
`# provenance: {json}` (read the table with `pandas.read_csv(path, comment="#")`). Every row also has a
`simulated` column: chips of a simulated store are marked simulated in every export.

CLI: `python -m core.mapping {train,suggest,labelsets} --help`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import balanced_accuracy_score, r2_score, roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from core.checkpoint import code_version
from core.embeddings import EmbeddingError, Embeddings, checkpoint_sha, load_embeddings
from core.probes import KNN_K, RF_TREES, RIDGE_ALPHAS
from core.representations import RepresentationError, external_provenance, is_external, load_representation
from data.atomic import atomic_write_bytes
from data.cli import KnownError, command_line
from data.labelsets import (
    LabelSet,
    LabelSetError,
    check_name,
    list_label_sets,
    load_label_set,
    parquet_bytes,
    read_label_file,
)
from data.store import ChipStore
from data.workspace import SCENARIO_FULL, Workspace

MAP_ESTIMATORS: tuple[str, ...] = ("logistic", "random_forest", "knn", "ridge")
EXPORT_FORMATS: tuple[str, ...] = ("geojson", "geoparquet", "csv")
RELIABLE_PER_CLASS = 10   # below this many labels per class a 5-fold CV score swings too much to trust
MAX_FOLDS = 5
TOOL = "eofewshot"


class MappingError(KnownError, ValueError):
    """The map cannot be fitted or exported as asked: the one-line message says what to change."""


@dataclass
class MapResult:
    """A label set's probe applied to every chip of the AOI, with its cross-validated score."""

    predictions: np.ndarray          # float [N]: P(present) | max class probability | fraction; NaN where not valid
    valid: np.ndarray                # bool [N]: chips with a feature vector
    chip_ids: np.ndarray             # str [N], store order
    cv_metric: str                   # "roc_auc" (binary), "balanced_accuracy" (multiclass), "r2" (fraction)
    cv_mean: float                   # NaN when the labels are too few to cross-validate
    cv_std: float
    cv_folds: int                    # 0 when not cross-validated
    n_labels: int                    # labels used in the fit (labelled chips with a feature vector)
    counts: dict[str, int]           # per class (or labelled/zero/nonzero) over the labels used
    estimator: str
    representation: str
    warning: str | None
    threshold_default: float
    kind: str = "binary"
    classes: list[str] = field(default_factory=list)
    classes_pred: np.ndarray | None = None   # multiclass: int [N] class index (-1 where not valid)
    label_set: str = ""
    labelled: np.ndarray | None = None       # bool [N]: chips of the label set used in the fit
    model: Any = field(default=None, repr=False)   # the fitted scikit-learn pipeline

    @property
    def cv_text(self) -> str:
        """The CV score as one phrase, e.g. 'roc_auc 0.91 ± 0.04 (5-fold)' or 'not cross-validated'."""
        if not self.cv_folds:
            return "not cross-validated (too few labels per class)"
        return f"{self.cv_metric} {self.cv_mean:.3f} ± {self.cv_std:.3f} ({self.cv_folds}-fold)"


# ----------------------------------------------------------------------------------------- features
def _load_representation(ws: Workspace, aoi: str, model_name: str, representation: str):
    """core.representations.load_representation, plus the full embeddings (their meta is the map's provenance;
    None for an external representation, which needs no model embeddings)."""
    loaded: dict[str, Embeddings] = {}

    def embeddings(scenario: str) -> Embeddings:
        if scenario not in loaded:
            loaded[scenario] = load_embeddings(ws, aoi, model_name, scenario)
        return loaded[scenario]

    emb = None if _external(representation) else embeddings(SCENARIO_FULL)
    try:
        ids, X, valid = load_representation(ws, aoi, model_name, representation, embeddings=embeddings)
    except RepresentationError as e:
        held = f" (the embeddings hold {emb.keys})" if emb is not None else ""
        raise MappingError(f"no representation {representation!r} for AOI {aoi!r} and model {model_name!r}: "
                           f"{e}{held}") from None
    return X, valid.astype(bool), ids.astype(str), emb


def _external(name: str) -> bool:
    try:
        return is_external(name)
    except RepresentationError:
        return False


def representation_features(ws: Workspace, aoi: str, model_name: str = "tiny-sim",
                            representation: str = "fused") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X [N, D], valid [N], chip_ids [N]) of one representation of an AOI (EmbeddingError says how to build them)."""
    X, valid, ids, _ = _load_representation(ws, aoi, model_name, representation)
    return X, valid, ids


# ----------------------------------------------------------------------------------------- fitting
def _estimator(name: str, kind: str, n: int, seed: int) -> BaseEstimator:
    """The scikit-learn pipeline for an estimator name and label kind (scaling where the model needs it)."""
    if kind == "fraction":
        if name in ("ridge", "logistic"):
            # "logistic" is the default name in the app; on fractions its linear counterpart is ridge.
            return make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
        if name == "random_forest":
            return RandomForestRegressor(n_estimators=RF_TREES, max_features="sqrt", random_state=seed, n_jobs=1)
        return make_pipeline(StandardScaler(), KNeighborsRegressor(n_neighbors=max(1, min(KNN_K, n - 1))))
    if name in ("logistic", "ridge"):
        # Balanced weights: analysts label few positives among many negatives (or the reverse).
        return make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000))
    if name == "random_forest":
        return RandomForestClassifier(n_estimators=RF_TREES, max_features="sqrt", class_weight="balanced",
                                      random_state=seed, n_jobs=1)
    return make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=max(1, min(KNN_K, n - 1)),
                                                                weights="distance"))


def _cross_validate(model: BaseEstimator, X: np.ndarray, y: np.ndarray, kind: str, seed: int) -> tuple[str, float, float, int]:
    """(metric, mean, std, folds) of a stratified (classes) or plain (fractions) k-fold CV; folds 0 when impossible."""
    metric = {"binary": "roc_auc", "multiclass": "balanced_accuracy", "fraction": "r2"}[kind]
    if kind == "fraction":
        folds = min(MAX_FOLDS, len(y) // 2)   # R² needs >= 2 chips per test fold
        if folds < 2 or np.ptp(y) == 0:
            return metric, float("nan"), float("nan"), 0
        cv = KFold(folds, shuffle=True, random_state=seed)
    else:
        folds = min(MAX_FOLDS, int(np.unique(y, return_counts=True)[1].min()) if len(y) else 0)
        if folds < 2:
            return metric, float("nan"), float("nan"), 0
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    # The score of the pooled out-of-fold predictions: with a handful of labels a per-fold ROC AUC is 0 or 1
    # (one chip per class in a fold), the pooled one ranks every present/absent pair. The spread is over folds.
    proba = kind == "binary"
    pred = cross_val_predict(model, X, y, cv=cv, method="predict_proba" if proba else "predict")
    if proba:
        pred = pred[:, 1]
    score = {"roc_auc": roc_auc_score, "balanced_accuracy": balanced_accuracy_score, "r2": r2_score}[metric]
    per_fold = [score(y[test], pred[test]) for _, test in cv.split(X, y)]
    return metric, float(score(y, pred)), float(np.std(per_fold)), folds


def _predict(model: Any, X: np.ndarray, valid: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(predictions [N], classes_pred [N] or None) of a fitted probe on the valid rows of X (see MapResult)."""
    n = len(X)
    predictions = np.full(n, np.nan)
    classes_pred = np.full(n, -1, dtype=np.int64) if kind == "multiclass" else None
    rows = np.flatnonzero(valid)
    if rows.size == 0:
        return predictions, classes_pred   # sklearn refuses an empty batch; nothing to predict
    if kind == "fraction":
        predictions[rows] = np.clip(model.predict(X[rows]), 0.0, 1.0)
    else:
        proba = model.predict_proba(X[rows])
        fitted = np.asarray(model.classes_).astype(int)
        if kind == "binary":
            predictions[rows] = proba[:, list(fitted).index(1)]
        else:
            classes_pred[rows] = fitted[proba.argmax(axis=1)]
            predictions[rows] = proba.max(axis=1)
    return predictions, classes_pred


def fit_label_map(X: np.ndarray, valid: np.ndarray, chip_ids: Sequence[str], label_set: LabelSet, *,
                  estimator: str = "logistic", representation: str = "fused", seed: int = 0) -> MapResult:
    """Fit a probe on the label set's chips and predict every valid chip, with a cross-validated score on those labels."""
    X = np.asarray(X)
    valid = np.asarray(valid, dtype=bool)
    ids = np.asarray(chip_ids).astype(str)
    if X.ndim != 2 or valid.shape != (len(X),) or ids.shape != (len(X),):
        raise MappingError(f"features {X.shape}, valid {valid.shape} and chip_ids {ids.shape} must agree: "
                           "X [N, D], valid [N], chip_ids [N]")
    if estimator not in MAP_ESTIMATORS:
        raise MappingError(f"unknown estimator {estimator!r}: choose one of {list(MAP_ESTIMATORS)}")
    if estimator == "ridge" and label_set.kind != "fraction":
        estimator = "logistic"   # ridge's classification counterpart; keeps one estimator list in the app
    valid = valid & np.isfinite(X).all(axis=1)
    pos = pd.Index(ids).get_indexer(label_set.labels["chip_id"])
    unknown = label_set.labels["chip_id"][pos < 0].tolist()
    if unknown:
        raise MappingError(f"{len(unknown)} labelled chip(s) are not chips of this representation, e.g. {unknown[:3]}: "
                           "the label set belongs to another AOI or the store was rebuilt")
    notes: list[str] = []
    usable = valid[pos]
    if not usable.all():
        notes.append(f"{int((~usable).sum())} labelled chip(s) have no feature vector in {representation!r} and were left out")
    pos, y = pos[usable], label_set.labels["value"].to_numpy()[usable]
    kind = label_set.kind
    if kind == "binary":
        n_present, n_absent = int((y == 1).sum()), int((y == 0).sum())
        if n_present == 0 or n_absent == 0:
            raise MappingError(f"{len(y)} usable labels ({n_present} present, {n_absent} absent): label at least one "
                               "present and one absent chip")
    elif kind == "multiclass":
        if len(np.unique(y)) < 2:
            raise MappingError("a multiclass map needs labels of at least two classes: label chips of another class")
    elif len(y) < 3:
        raise MappingError(f"only {len(y)} usable fraction labels: label at least 3 chips")

    model = _estimator(estimator, kind, len(y), seed)
    metric, cv_mean, cv_std, folds = _cross_validate(model, X[pos], y, kind, seed)
    model.fit(X[pos], y if kind == "fraction" else y.astype(int))

    predictions, classes_pred = _predict(model, X, valid, kind)
    rows = np.flatnonzero(valid)
    n = len(X)

    used = label_set.labels.iloc[np.flatnonzero(usable)]
    counts = (LabelSet(label_set.aoi, label_set.name, kind, label_set.classes, used).counts())
    if kind != "fraction":
        smallest = min(counts.values())
        if smallest < RELIABLE_PER_CLASS:
            detail = ", ".join(f"{v} {k}" for k, v in counts.items())
            notes.insert(0, f"only {len(y)} labels ({detail}): the cross-validated score is not reliable below "
                         f"{RELIABLE_PER_CLASS} per class")
    elif len(y) < 2 * RELIABLE_PER_CLASS:
        notes.insert(0, f"only {len(y)} labels: the cross-validated score is not reliable below {2 * RELIABLE_PER_CLASS}")
    if rows.size and np.ptp(predictions[rows]) < 1e-6:
        notes.append("the prediction is the same for every chip: the labels do not separate in this representation "
                     "(label more chips, or try another representation or estimator)")
    labelled = np.zeros(n, dtype=bool)
    labelled[pos] = True
    return MapResult(predictions=predictions, valid=valid, chip_ids=ids, cv_metric=metric, cv_mean=cv_mean,
                     cv_std=cv_std, cv_folds=folds, n_labels=int(len(y)), counts=counts,
                     estimator="ridge" if kind == "fraction" and estimator == "logistic" else estimator,
                     representation=representation, warning="; ".join(notes) or None, threshold_default=0.5,
                     kind=kind, classes=list(label_set.classes), classes_pred=classes_pred, label_set=label_set.name,
                     labelled=labelled, model=model)


def detections(result: MapResult, threshold: float) -> np.ndarray:
    """Bool [N]: valid chips whose prediction is >= threshold."""
    with np.errstate(invalid="ignore"):
        return result.valid & (np.nan_to_num(result.predictions, nan=-np.inf) >= float(threshold))


def predict_other(result: MapResult, X: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The fitted map applied to other chips (e.g. another AOI's vectors of the same representation and model):
    float [N] like `result.predictions` (NaN where not valid)."""
    if result.model is None:
        raise MappingError("this map holds no fitted model: refit it before applying it to other chips")
    X = np.asarray(X)
    valid = np.asarray(valid, dtype=bool)
    if X.ndim != 2 or valid.shape != (len(X),):
        raise MappingError(f"features {X.shape} and valid {valid.shape} must agree: X [N, D], valid [N]")
    expected = getattr(result.model, "n_features_in_", X.shape[1])
    if X.shape[1] != expected:
        raise MappingError(f"these vectors have {X.shape[1]} dimensions, the map was fitted on {expected}: use the "
                           f"same model and representation ({result.representation!r}) as the map")
    # The same validity rule as the fit: a chip with any non-finite coordinate gets no prediction.
    return _predict(result.model, X, valid & np.isfinite(X).all(axis=1), result.kind)[0]


# ----------------------------------------------------------------------------------------- active learning
def uncertainty(predictions: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Closeness of each prediction to the decision threshold, in [0, 1] (1 = on the threshold; NaN stays NaN)."""
    p = np.asarray(predictions, dtype=np.float64)
    span = max(threshold, 1.0 - threshold)
    return np.clip(1.0 - np.abs(p - threshold) / span, 0.0, 1.0)


def _cluster(Z: np.ndarray, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels [n], distance to own centre [n]); exact k-means when small, mini-batch beyond (150 K chips)."""
    if len(Z) <= 20_000:
        km = KMeans(n_clusters, n_init=3, random_state=seed).fit(Z)
    else:
        km = MiniBatchKMeans(n_clusters, n_init=3, batch_size=4096, random_state=seed).fit(Z)
    dist = np.linalg.norm(Z - km.cluster_centers_[km.labels_], axis=1)
    return km.labels_, dist


def suggest_next(X: np.ndarray, valid: np.ndarray, labelled: np.ndarray, predictions: np.ndarray | None,
                 k: int = 12, *, seed: int = 0, n_clusters: int | None = None, threshold: float = 0.5,
                 pool_factor: int = 10) -> np.ndarray:
    """Positions of up to k unlabelled valid chips to label next: the most uncertain chip of each of k diverse clusters.

    With predictions, the `pool_factor * k` chips closest to the threshold are clustered (k-means on the
    embedding) and the most uncertain chip of each cluster is taken, so the batch is uncertain and not k
    near-duplicates. Without predictions (no model yet) every candidate is clustered and the chip nearest
    each centre is taken: diversity only. Deterministic for a seed; never a labelled or invalid chip.
    """
    X = np.asarray(X, dtype=np.float32)
    n = len(X)
    valid = np.asarray(valid, dtype=bool)
    mask = np.asarray(labelled)
    if mask.dtype != bool:   # positions rather than a mask
        idx, mask = mask.astype(np.int64), np.zeros(n, dtype=bool)
        mask[idx] = True
    if valid.shape != (n,) or mask.shape != (n,):
        raise MappingError(f"valid {valid.shape} and labelled {mask.shape} must be [N] = ({n},) like X")
    if k < 1:
        raise MappingError(f"k must be >= 1, got {k}")
    cand = np.flatnonzero(valid & ~mask & np.isfinite(X).all(axis=1))
    score = None
    if predictions is not None:
        u = uncertainty(predictions, threshold)
        if np.isfinite(u[cand]).any():
            cand = cand[np.isfinite(u[cand])]
            score = u[cand]
    if cand.size <= k:
        return np.sort(cand) if score is None else cand[np.argsort(-score, kind="stable")]
    if score is not None:
        # Keep the most uncertain candidates (stable sort, ties by position: deterministic).
        top = np.argsort(-score, kind="stable")[: max(pool_factor * k, k)]
        cand, score = cand[top], score[top]
    n_cl = min(n_clusters or k, len(cand))
    labels, dist = _cluster(X[cand], n_cl, seed)
    # Within each cluster rank by uncertainty (or nearness to the centre without a model); then take rank 0 of
    # every cluster before rank 1 of any, so the batch spreads over clusters even when n_clusters < k.
    key = -score if score is not None else dist
    order = np.lexsort((dist, key, labels))
    rank = np.empty(len(cand), dtype=np.int64)
    start = np.r_[0, np.flatnonzero(np.diff(labels[order])) + 1]
    sizes = np.diff(np.r_[start, len(order)])
    rank[order] = np.arange(len(order)) - np.repeat(start, sizes)
    pick = np.lexsort((dist, key, rank))[:k]
    return cand[pick]


# ----------------------------------------------------------------------------------------- exports
def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def map_provenance(*, checkpoint: Path | None, representation: str, modalities: Sequence[str], label_set: LabelSet,
                   result: MapResult, threshold: float, store: ChipStore, external: dict | None = None) -> dict:
    """The record that travels with an exported map: model, representation, labels, estimator, CV, threshold, data;
    `external` (data.external's meta of an external representation) adds its product, year, sources and pooling."""
    sha = None
    if checkpoint is not None:
        try:
            sha = checkpoint_sha(checkpoint)
        except EmbeddingError:
            sha = None   # a checkpoint moved since embedding: say so by the null digest rather than failing the export
    return {
        "tool": TOOL, "tool_version": code_version(), "created": _utc_now(),
        "aoi": store.meta.aoi, "aoi_title": store.meta.title, "simulated": bool(store.meta.simulated),
        "data_source": store.meta.source,
        "checkpoint": None if checkpoint is None else str(checkpoint), "checkpoint_sha256": sha,
        "representation": representation, "modalities": list(modalities),
        "label_set": {"name": label_set.name, "kind": label_set.kind, "classes": list(label_set.classes),
                      "counts": label_set.counts(), "n_labels": len(label_set), "updated": label_set.updated},
        "estimator": result.estimator, "n_labels_used": result.n_labels,
        "cv": {"metric": result.cv_metric, "mean": None if np.isnan(result.cv_mean) else result.cv_mean,
               "std": None if np.isnan(result.cv_std) else result.cv_std, "folds": result.cv_folds},
        "threshold": float(threshold), "n_detections": int(detections(result, threshold).sum()),
        "warning": result.warning,
        **({"external_embeddings": {k: external.get(k) for k in ("product", "year", "pooling", "masking", "sources",
                                                                 "notes", "n_valid", "n_missing", "created")}}
           if external else {}),
    }


def _encode(gdf, provenance: dict, fmt: str) -> bytes:
    """GeoJSON / GeoParquet / CSV bytes of a chip table with its provenance (see the module docstring)."""
    if fmt == "geojson":
        doc = json.loads(gdf.to_json(na="null", drop_id=True))
        doc["provenance"] = provenance
        return json.dumps(doc).encode()
    if fmt == "geoparquet":
        return parquet_bytes(gdf, {b"provenance": json.dumps(provenance).encode()})
    if fmt == "csv":
        table = pd.DataFrame(gdf.drop(columns="geometry"))
        table["geometry"] = gdf.geometry.to_wkt()
        return (f"# provenance: {json.dumps(provenance)}\n" + table.to_csv(index=False)).encode()
    raise MappingError(f"unknown export format {fmt!r}: choose one of {list(EXPORT_FORMATS)}")


def _aligned_index(store: ChipStore, chip_ids: np.ndarray):
    ids = store.index["chip_id"].to_numpy().astype(str)
    if len(ids) == len(chip_ids) and np.array_equal(ids, chip_ids):
        return store.index
    try:
        return store.index.iloc[store.positions_of(list(chip_ids))].reset_index(drop=True)
    except KeyError as e:
        raise MappingError(f"the map's chips are not those of store {store.meta.aoi!r} ({e.args[0]}): "
                           "refit on this AOI's embeddings") from None


def export_map(result: MapResult, store: ChipStore, label_set: LabelSet, *, threshold: float, provenance: dict,
               fmt: str = "geojson", detections_only: bool = False) -> bytes:
    """The prediction map as GeoJSON/GeoParquet/CSV bytes: chip_id, prediction, detected, label, simulated, geometry."""
    if fmt not in EXPORT_FORMATS:
        raise MappingError(f"unknown export format {fmt!r}: choose one of {list(EXPORT_FORMATS)}")
    index = _aligned_index(store, result.chip_ids)
    det = detections(result, threshold)
    out = index[["chip_id", "geometry"]].copy()
    out["prediction"] = result.predictions
    if result.classes_pred is not None:
        out["predicted_class"] = [result.classes[c] if c >= 0 else None for c in result.classes_pred]
    out["detected"] = det
    lab = label_set.labels.set_index("chip_id")["value" if label_set.kind == "fraction" else "label"]
    out["label"] = out["chip_id"].map(lab)
    out["simulated"] = bool(store.meta.simulated)
    if detections_only:
        out = out[det]
    cols = [c for c in ("chip_id", "prediction", "predicted_class", "detected", "label", "simulated") if c in out]
    return _encode(out[cols + ["geometry"]].reset_index(drop=True), provenance, fmt)


def export_label_set(label_set: LabelSet, store: ChipStore, fmt: str = "geojson") -> bytes:
    """A label set with chip polygons as GeoJSON/GeoParquet/CSV bytes, with provenance and a `simulated` column."""
    if store.meta.aoi != label_set.aoi:
        raise MappingError(f"label set {label_set.name!r} is of AOI {label_set.aoi!r}, the store is {store.meta.aoi!r}")
    index = store.index.set_index("chip_id")
    unknown = [c for c in label_set.chip_ids if c not in index.index]
    if unknown:
        raise MappingError(f"{len(unknown)} labelled chip(s) are not in store {store.meta.aoi!r}, e.g. {unknown[:3]}")
    out = label_set.labels.copy()
    out["simulated"] = bool(store.meta.simulated)
    gdf = index.loc[label_set.chip_ids, ["geometry"]].reset_index().merge(out, on="chip_id")
    gdf = gdf[["chip_id", "label", "value", "source", "added", "simulated", "geometry"]]
    provenance = {"tool": TOOL, "tool_version": code_version(), "created": _utc_now(), "aoi": store.meta.aoi,
                  "aoi_title": store.meta.title, "simulated": bool(store.meta.simulated),
                  "data_source": store.meta.source, "label_set": {**label_set.metadata(), "counts": label_set.counts()}}
    return _encode(gdf.set_geometry("geometry"), provenance, fmt)


def format_of(path: Path) -> str:
    """Export format from a file name: .geojson/.json, .parquet/.geoparquet, .csv."""
    suffix = Path(path).suffix.lower()
    fmt = {".geojson": "geojson", ".json": "geojson", ".parquet": "geoparquet", ".geoparquet": "geoparquet",
           ".csv": "csv"}.get(suffix)
    if fmt is None:
        raise MappingError(f"cannot tell the format of {path}: name it .geojson, .parquet or .csv")
    return fmt


# ----------------------------------------------------------------------------------------- CLI
def _resolve_labels(ws: Workspace, aoi: str, labels: str) -> LabelSet:
    """A label file path, or the name of a label set saved in the workspace."""
    p = Path(labels)
    if p.is_file():
        name = "".join(c if c.isalnum() or c in "_-" else "_" for c in p.stem) or "imported"
        return read_label_file(p, aoi=aoi, name=name)
    try:
        check_name(labels)
    except LabelSetError:
        raise LabelSetError(f"{labels!r} is neither a label file nor a saved label set name") from None
    return load_label_set(ws, aoi, labels)


def _fit_from_args(args: argparse.Namespace):
    ws = Workspace(args.workspace)
    check_name(args.aoi, "AOI name")
    label_set = _resolve_labels(ws, args.aoi, args.labels)
    X, valid, ids, emb = _load_representation(ws, args.aoi, args.model_name, args.representation)
    result = fit_label_map(X, valid, ids, label_set, estimator=args.estimator, representation=args.representation,
                           seed=args.seed)
    return ws, label_set, X, emb, result


def _cmd_train(args: argparse.Namespace) -> int:
    ws, label_set, _, emb, result = _fit_from_args(args)
    threshold = result.threshold_default if args.threshold is None else args.threshold
    det = detections(result, threshold)
    print(f"labels: {result.n_labels} used ({', '.join(f'{k} {v}' for k, v in result.counts.items())})")
    print(f"cross-validated: {result.cv_text}")
    print(f"detections at threshold {threshold:g}: {int(det.sum())} of {int(result.valid.sum())} chips")
    if result.warning:
        print(f"warning: {result.warning}")
    if args.out:
        out = Path(args.out)
        fmt = format_of(out)
        store = ws.open_store(args.aoi)
        ckpt = emb.meta.get("checkpoint") if emb is not None else None
        if emb is None:  # not the model's embeddings: a baseline or an external representation
            modalities = []
        else:
            modalities = emb.modalities if args.representation == "fused" else [args.representation]
        external = external_provenance(ws, args.aoi, args.representation) if emb is None else None
        prov = map_provenance(checkpoint=Path(ckpt) if ckpt else None, representation=args.representation,
                              modalities=modalities, label_set=label_set, result=result, threshold=threshold,
                              store=store, external=external)
        atomic_write_bytes(out, export_map(result, store, label_set, threshold=threshold, provenance=prov, fmt=fmt,
                                           detections_only=args.detections_only))
        print(f"wrote {out} ({fmt}{', simulated data' if store.meta.simulated else ''})")
    return 0


def _cmd_suggest(args: argparse.Namespace) -> int:
    _, _, X, _, result = _fit_from_args(args)
    picks = suggest_next(X, result.valid, result.labelled, result.predictions, args.k, seed=args.seed)
    for p in picks:
        print(f"{result.chip_ids[p]}\t{result.predictions[p]:.3f}")
    return 0


def _cmd_labelsets(args: argparse.Namespace) -> int:
    ws = Workspace(args.workspace)
    names = list_label_sets(ws, check_name(args.aoi, "AOI name"))
    if not names:
        print(f"no label sets for AOI {args.aoi!r} in {ws.labelsets_dir(args.aoi)}")
    for name in names:
        ls = load_label_set(ws, args.aoi, name)
        print(f"{name}\t{ls.kind}\t{len(ls)} labels\t" + ", ".join(f"{k} {v}" for k, v in ls.counts().items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `python -m core.mapping` argument parser."""
    ap = argparse.ArgumentParser(
        prog="python -m core.mapping",
        description="Few-shot mapping on your own labels: fit a probe on labelled chips of an AOI (a CSV/Parquet/"
        "GeoJSON file with chip_id and label columns, or a label set saved by the app), map every chip, "
        "suggest which chips to label next, export the map with provenance. Needs the AOI's embeddings "
        "(`python -m core.pipeline build`).")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--aoi", required=True, help="AOI name (a store in the workspace)")
        p.add_argument("--labels", required=True, help="label file (.csv/.parquet/.geojson with chip_id, label) "
                       "or the name of a saved label set")
        p.add_argument("--representation", default="fused",
                       help="representation (core.representations): fused, s2rgb, s1amp, coh, random-init, "
                            "hand-crafted, or an external representation's name (python -m data.ingest embeddings)")
        p.add_argument("--estimator", default="logistic", choices=MAP_ESTIMATORS,
                       help="logistic (ridge on fraction labels), random_forest, knn, ridge")
        p.add_argument("--model-name", default="tiny-sim", help="embeddings' model name (default tiny-sim)")
        p.add_argument("--workspace", default=None, help="workspace directory (default $EO_WORKSPACE or ./workspace)")
        p.add_argument("--seed", type=int, default=0, help="seed of the CV folds, forest and clustering")

    train = sub.add_parser("train", help="fit, print the CV score and detections, write the prediction map",
                           description="Fit on the labels, print the number of labels, the cross-validated score "
                           "and the number of detections; with --out write the map (GeoJSON/GeoParquet/CSV by "
                           "suffix) with provenance.")
    common(train)
    train.add_argument("--threshold", type=float, default=None, help="detection threshold (default 0.5)")
    train.add_argument("--out", default=None, help="predictions.geojson | .parquet | .csv")
    train.add_argument("--detections-only", action="store_true", help="export only detected chips")
    train.set_defaults(func=_cmd_train)

    suggest = sub.add_parser("suggest", help="print chip ids to label next (uncertain and diverse)",
                             description="Fit on the labels and print k chip ids to label next, with their "
                             "current prediction: the most uncertain chip of each of k k-means clusters.")
    common(suggest)
    suggest.add_argument("-k", type=int, default=12, help="how many chips (default 12)")
    suggest.set_defaults(func=_cmd_suggest)

    lsets = sub.add_parser("labelsets", help="list the saved label sets of an AOI with their counts")
    lsets.add_argument("--aoi", required=True, help="AOI name")
    lsets.add_argument("--workspace", default=None, help="workspace directory")
    lsets.set_defaults(func=_cmd_labelsets)
    return ap


@command_line(also=(ValueError, KeyError))  # a label file's unknown chip ids / bad values
def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; errors print one line and exit 2."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
