"""Few-shot mapping: fit on a label set, predictions over every chip, suggestions, exports with provenance, CLI."""

from __future__ import annotations

import io
import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from core.embeddings import embeddings_dir, load_embeddings
from core.mapping import (
    MappingError,
    detections,
    export_label_set,
    export_map,
    fit_label_map,
    main,
    map_provenance,
    predict_other,
    representation_features,
    suggest_next,
    uncertainty,
)
from data.labelsets import LabelSet, save_label_set
from data.workspace import Workspace


def separable(n: int = 400, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features whose first coordinate decides the class (plus noise dims), and chip ids c00000.."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim))
    y = X[:, 0] > 0.3
    return X, y, np.array([f"c{i:05d}" for i in range(n)])


def binary_set(ids, y, rows) -> LabelSet:
    rows = np.asarray(rows)
    return (LabelSet("tiny", "t").add(ids[rows[y[rows]]], "present").add(ids[rows[~y[rows]]], "absent"))


@pytest.fixture
def ws_emb(tmp_path, tiny_store):
    """A workspace holding the 50-chip tiny store and hand-written 'fused' embeddings that encode its water label."""
    ws = Workspace(tmp_path / "ws")
    ws.stores_dir.mkdir(parents=True)
    tiny_store.path.rename(ws.store_path("tiny"))
    store = ws.open_store("tiny")
    water = store.labels("water")
    rng = np.random.default_rng(0)
    fused = np.c_[water * 4, rng.normal(size=(len(water), 3))].astype(np.float32)
    present = np.ones(len(water), dtype=bool)
    present[3] = False   # a chip with no vector
    d = embeddings_dir(ws, "tiny", "tiny-sim")
    d.mkdir(parents=True)
    np.save(d / "chip_ids.npy", store.index["chip_id"].to_numpy().astype(str))
    np.save(d / "fused.npy", fused)
    np.savez(d / "present.npz", fused=present)
    (d / "meta.json").write_text(json.dumps({"keys": ["fused"], "dim": 4, "checkpoint": None}))
    return ws, store


def test_fit_separable_predicts_every_valid_chip():
    X, y, ids = separable()
    valid = np.ones(len(X), dtype=bool)
    valid[[0, 1, 2]] = False
    X[1] = np.nan
    ls = binary_set(ids, y, np.arange(3, 83))
    r = fit_label_map(X, valid, ids, ls, seed=0)
    assert r.cv_metric == "roc_auc" and r.cv_mean > 0.95 and r.cv_folds == 5 and r.n_labels == 80
    assert np.isnan(r.predictions[:3]).all() and np.isfinite(r.predictions[3:]).all()
    assert ((r.predictions[3:] >= 0.5) == y[3:]).mean() > 0.9
    assert r.warning is None and r.counts == {"absent": int((~y[3:83]).sum()), "present": int(y[3:83].sum())}
    det = detections(r, 0.5)
    assert det.dtype == bool and not det[:3].any() and det.sum() == (r.predictions[3:] >= 0.5).sum()
    for est in ("random_forest", "knn"):
        assert fit_label_map(X, valid, ids, ls, estimator=est).cv_mean > 0.85


def test_few_labels_warn_and_one_class_refused():
    X, y, ids = separable()
    rows = np.r_[np.flatnonzero(y)[:3], np.flatnonzero(~y)[:3]]
    r = fit_label_map(X, np.ones(len(X), bool), ids, binary_set(ids, y, rows))
    assert r.warning and "only 6 labels" in r.warning and "3 present" in r.warning and "not reliable" in r.warning
    # Pooled out-of-fold score: with one chip per class in a fold a per-fold AUC would be 0 or 1.
    assert r.cv_folds == 3 and r.cv_mean == pytest.approx(1.0)
    two = fit_label_map(X, np.ones(len(X), bool), ids, binary_set(ids, y, np.r_[rows[:2], rows[3:5]]))
    assert two.cv_folds == 2 and 0.0 <= two.cv_mean <= 1.0 and "not reliable" in two.warning
    with pytest.raises(MappingError, match="at least one present and one absent"):
        fit_label_map(X, np.ones(len(X), bool), ids, LabelSet("tiny", "t").add(ids[:5], "present"))
    with pytest.raises(MappingError, match="not chips"):
        fit_label_map(X, np.ones(len(X), bool), ids, LabelSet("tiny", "t").add(["zz"], "present").add(ids[:1], "absent"))


def test_constant_prediction_warns():
    X, y, ids = separable()
    X[:] = 1.0
    r = fit_label_map(X, np.ones(len(X), bool), ids, binary_set(ids, y, np.arange(40)))
    assert "same for every chip" in r.warning


def test_fraction_and_multiclass():
    X, _, ids = separable()
    frac = np.clip(X[:, 0] / 4 + 0.5, 0, 1)
    ls = LabelSet("tiny", "f", kind="fraction")
    for i in range(60):
        ls = ls.add([ids[i]], float(frac[i]))
    r = fit_label_map(X, np.ones(len(X), bool), ids, ls)
    assert r.cv_metric == "r2" and r.cv_mean > 0.9 and r.estimator == "ridge" and r.predictions.max() <= 1
    cls = np.digitize(X[:, 0], [-0.5, 0.5])
    m = LabelSet("tiny", "m", kind="multiclass", classes=["low", "mid", "high"])
    for name in range(3):
        m = m.add(ids[:90][cls[:90] == name], ["low", "mid", "high"][name])
    r = fit_label_map(X, np.ones(len(X), bool), ids, m)
    assert r.cv_metric == "balanced_accuracy" and (r.classes_pred == cls).mean() > 0.8
    assert np.all((r.predictions > 0.3) & (r.predictions <= 1))


def test_suggest_next_excludes_is_deterministic_and_targets_uncertainty():
    X, y, ids = separable(n=600)
    valid = np.ones(len(X), dtype=bool)
    valid[::7] = False
    labelled_rows = np.arange(1, 41)
    r = fit_label_map(X, valid, ids, binary_set(ids, y, labelled_rows))
    picks = suggest_next(X, valid, r.labelled, r.predictions, k=12, seed=0)
    assert len(picks) == 12 and len(set(picks)) == 12
    assert valid[picks].all() and not r.labelled[picks].any()
    assert np.array_equal(picks, suggest_next(X, valid, r.labelled, r.predictions, k=12, seed=0))
    cand = np.flatnonzero(valid & ~r.labelled)
    rand = np.random.default_rng(0).choice(cand, 12, replace=False)
    assert set(picks) != set(rand)
    u = uncertainty(r.predictions)
    assert u[picks].mean() > u[cand].mean() + 0.3, "suggestions sit near the decision boundary"
    # No model yet: diversity only (cluster representatives), still never labelled or invalid.
    first = suggest_next(X, valid, labelled_rows, None, k=10, seed=1)
    assert len(first) == 10 and valid[first].all() and not np.isin(first, labelled_rows).any()
    assert np.array_equal(first, suggest_next(X, valid, labelled_rows, None, k=10, seed=1))
    assert len(suggest_next(X[:5], np.ones(5, bool), np.ones(5, bool), None, k=3)) == 0


def test_exports_carry_provenance_and_simulated(ws_emb, tmp_path):
    ws, store = ws_emb
    X, valid, ids = representation_features(ws, "tiny", "tiny-sim", "fused")
    water = store.labels("water") > 0.5
    ls = binary_set(ids, water, np.arange(0, 30))
    r = fit_label_map(X, valid, ids, ls)
    prov = map_provenance(checkpoint=None, representation="fused", modalities=["s2rgb", "s1amp"], label_set=ls,
                          result=r, threshold=0.5, store=store)
    for key in ("checkpoint_sha256", "representation", "modalities", "label_set", "estimator", "cv", "threshold",
                "created", "aoi", "simulated", "tool_version"):
        assert key in prov
    assert prov["simulated"] is True and prov["label_set"]["kind"] == "binary"

    gj = json.loads(export_map(r, store, ls, threshold=0.5, provenance=prov, fmt="geojson"))
    assert gj["provenance"]["cv"]["metric"] == "roc_auc" and len(gj["features"]) == len(store)
    props = gj["features"][3]["properties"]
    assert props["prediction"] is None and props["detected"] is False and props["simulated"] is True
    assert {"chip_id", "prediction", "detected", "label", "simulated"} <= set(props)

    pq_bytes = export_map(r, store, ls, threshold=0.5, provenance=prov, fmt="geoparquet", detections_only=True)
    meta = json.loads(pq.read_schema(io.BytesIO(pq_bytes)).metadata[b"provenance"])
    gdf = gpd.read_parquet(io.BytesIO(pq_bytes))
    assert meta["aoi"] == "tiny" and gdf["detected"].all() and gdf["simulated"].all() and len(gdf) == detections(r, 0.5).sum()

    text = export_map(r, store, ls, threshold=0.5, provenance=prov, fmt="csv").decode()
    assert text.startswith("# provenance: ") and json.loads(text.splitlines()[0][len("# provenance: "):])["simulated"]
    table = pd.read_csv(io.StringIO(text), comment="#")
    assert list(table.columns) == ["chip_id", "prediction", "detected", "label", "simulated", "geometry"]
    assert table["simulated"].all() and table["label"].notna().sum() == 30

    lab = json.loads(export_label_set(ls, store, "geojson"))
    assert lab["provenance"]["simulated"] is True and len(lab["features"]) == 30
    assert all(f["properties"]["simulated"] for f in lab["features"])
    with pytest.raises(MappingError, match="format"):
        export_map(r, store, ls, threshold=0.5, provenance=prov, fmt="shp")


def test_cli_train_suggest_labelsets(ws_emb, tmp_path, capsys):
    ws, store = ws_emb
    water = store.labels("water") > 0.5
    ids = store.index["chip_id"].to_numpy()
    labels = tmp_path / "water.csv"
    pd.DataFrame({"chip_id": ids[:30], "label": np.where(water[:30], "present", "absent")}).to_csv(labels, index=False)
    out = tmp_path / "pred.geojson"
    rc = main(["train", "--aoi", "tiny", "--labels", str(labels), "--workspace", str(ws.root), "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "cross-validated: roc_auc" in text and "detections at threshold 0.5" in text
    doc = json.loads(out.read_text())
    assert doc["provenance"]["simulated"] is True and len(doc["features"]) == len(store)

    save_label_set(ws, LabelSet("tiny", "lakes").add(ids[:20][water[:20]], "present").add(ids[:20][~water[:20]], "absent"),
                   store=store)
    assert main(["suggest", "--aoi", "tiny", "--labels", "lakes", "--workspace", str(ws.root), "-k", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and all(line.split("\t")[0] in set(ids[20:]) for line in lines)
    assert main(["labelsets", "--aoi", "tiny", "--workspace", str(ws.root)]) == 0
    assert "lakes\tbinary\t20 labels" in capsys.readouterr().out


def test_cli_help_and_bad_input(ws_emb, tmp_path, capsys):
    ws, _ = ws_emb
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "few-shot mapping" in capsys.readouterr().out.lower()
    rc = main(["train", "--aoi", "tiny", "--labels", "no_such_set", "--workspace", str(ws.root)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: no label set") and err.count("\n") == 1
    labels = tmp_path / "l.csv"
    pd.DataFrame({"chip_id": ["tiny-00000", "tiny-00001"], "label": [1, 0]}).to_csv(labels, index=False)
    rc = main(["train", "--aoi", "tiny", "--labels", str(labels), "--representation", "coh", "--workspace", str(ws.root)])
    err = capsys.readouterr().err
    assert rc == 2 and "no representation 'coh'" in err and err.count("\n") == 1
    rc = main(["train", "--aoi", "nowhere", "--labels", "x", "--workspace", str(ws.root)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    rc = main(["train", "--aoi", "../etc", "--labels", "x", "--workspace", str(ws.root)])
    assert rc == 2 and "only letters" in capsys.readouterr().err
    assert load_embeddings(ws, "tiny").keys == ["fused"]


@pytest.mark.parametrize("estimator", ["logistic", "random_forest"])
def test_predict_other_applies_the_fitted_map_like_the_fit(estimator):
    X, y, ids = separable(200)
    valid = np.ones(len(X), dtype=bool)
    valid[7] = False
    result = fit_label_map(X, valid, ids, binary_set(ids, y, np.arange(0, 200, 5)), estimator=estimator)
    same = predict_other(result, X, valid)
    np.testing.assert_allclose(same, result.predictions, equal_nan=True)
    assert np.isnan(same[7])
    # Another "AOI": new chips of the same representation; a non-finite vector gets no prediction.
    other, other_y, _ = separable(50, seed=1)
    other[3, 0] = np.nan
    pred = predict_other(result, other, np.ones(50, dtype=bool))
    assert np.isnan(pred[3]) and np.isfinite(np.delete(pred, 3)).all()
    ok = np.isfinite(pred)
    assert ((pred[ok] >= 0.5) == other_y[ok]).mean() > 0.8
    with pytest.raises(MappingError, match="dimensions"):
        predict_other(result, other[:, :4], np.ones(50, dtype=bool))


def test_predict_other_keeps_fraction_and_multiclass_semantics():
    X, _, ids = separable(120)
    every = np.ones(len(X), dtype=bool)
    frac = np.clip(X[:, 0] / 4 + 0.5, 0, 1)
    ls = LabelSet("tiny", "f", kind="fraction")
    for i in range(20):
        ls = ls.add([ids[i]], float(frac[i]))
    r = fit_label_map(X, every, ids, ls)
    np.testing.assert_allclose(predict_other(r, X, every), r.predictions)
    cls = np.digitize(X[:, 0], [-0.5, 0.5])
    m = LabelSet("tiny", "m", kind="multiclass", classes=["low", "mid", "high"])
    for name in range(3):
        m = m.add(ids[:60][cls[:60] == name], ["low", "mid", "high"][name])
    r = fit_label_map(X, every, ids, m)
    np.testing.assert_allclose(predict_other(r, X, every), r.predictions)   # the top class's probability
    assert predict_other(r, X[:0], every[:0]).shape == (0,)
