"""core.evaluate: the paper-style report on a tiny workspace (csv, markdown, PNGs, dropout table) and its checks."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from core.checkpoint import save_checkpoint
from core.evaluate import (
    EvaluationError,
    main,
    observability,
    parse_budgets,
    probe_rows,
    run_evaluation,
    self_rank1,
    task_splits,
)
from core.model import ModelConfig, MultiModalViT
from data.simulate import simulate_store
from data.workspace import Workspace


@pytest.fixture(scope="module")
def tiny_ws(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evalws")
    ws = Workspace(root / "ws")
    simulate_store(ws.store_path("conus"), "conus", 7, 8, 0, chip_size=32, progress=False)
    cfg = ModelConfig(name="tiny-test", chip_size=32, patch_size=8, width=32, depth=1, heads=2, embed_dim=16)
    torch.manual_seed(1)
    ckpt = root / "ckpt-test"
    save_checkpoint(ckpt, MultiModalViT(cfg), cfg, meta={"note": "random weights for tests"})
    return ws, ckpt


def test_quick_cli_writes_report(tiny_ws, capsys, tmp_path):
    ws, ckpt = tiny_ws
    docs = tmp_path / "EVALUATION.md"
    assert main(["--workspace", str(ws.root), "--checkpoint", str(ckpt), "--quick", "--quiet", "--block", "2",
                 "--docs", str(docs)]) == 0
    out = ws.root / "evaluations" / "ckpt-test-ridge-quick"
    assert "Few-shot evaluation (SIMULATED AOIs)" in capsys.readouterr().out
    res = pd.read_csv(out / "results.csv")
    for col in ("aoi", "task", "observable", "model", "checkpoint", "representation", "series", "budget", "n_train",
                "n_pool", "n_test", "n_test_split", "split_seeds", "draws", "r2_mean", "r2_std", "pearson_r_mean",
                "mae_mean", "r2_full", "ratio_to_full"):
        assert col in res.columns, col
    assert set(res.model) == {"pretrained", "random-init", "handcrafted"}
    assert set(res[res.model == "pretrained"].representation) == {"s2rgb", "s1amp", "coh", "fused"}
    assert set(res[res.model == "random-init"].representation) == {"fused"}
    assert set(res[res.model == "handcrafted"].representation) == {"stats", "hist", "hist-q", "texture", "combined"}
    assert set(res.task) == {"vegetation", "builtup", "cropland", "water"}
    # 56 chips -> a pool of ~39: budget 100 cannot be drawn, 10 and 'all' can.
    assert set(res.budget.astype(str)) == {"10", "all"}
    full = res[res.budget.astype(str) == "all"]
    assert (full.n_train == full.n_pool).all()
    # the same split for every representation of a task: a representation sees a subset of its test chips
    for task, g in full.groupby("task"):
        assert g.n_test_split.nunique() == 1 and (g.n_test <= g.n_test_split).all()
    pos = full[full.r2_mean > 0]
    np.testing.assert_allclose(pos.ratio_to_full, 1.0)
    assert res.mae_mean.between(0, 1).all() and res.pearson_r_mean.dropna().between(-1, 1).all()
    pngs = sorted(p.name for p in (out / "curves").glob("*.png"))
    assert pngs == [f"conus_{t}.png" for t in sorted(["vegetation", "builtup", "cropland", "water"])]
    assert all((out / "curves" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    summary = (out / "summary.md").read_text()
    for heading in ("## (a) Mean R^2 by label budget", "## (b) pretrained fused vs the best baseline",
                    "## (c) pretrained fused: share of the full-label score", "## (d) Observability filter",
                    "## (e) Pool and test sizes", "blocked splits: whole 2 x 2-chip squares"):
        assert heading in summary, heading
    assert "| pretrained fused |" in summary and "| hist |" in summary
    assert "beats the best baseline:" in summary
    # The targets are checked by the code, each one stated as met or missed.
    targets = summary.split("### Targets for pretrained fused")[1].split("##")[0]
    assert targets.count("**met**") + targets.count("**missed**") == 5
    page = docs.read_text()
    assert page.startswith("# Few-shot evaluation") and "SIMULATED data" in page and "--docs" in page
    assert "### (a) Mean R^2 by label budget" in page and "#### Targets for pretrained fused" in page
    drop = pd.read_csv(out / "dropout.csv")
    assert {"none", "modality s2rgb", "modality s1amp", "modality coh"} <= set(drop.missing)
    assert (drop[drop.missing == "none"].r2_change.abs() < 1e-12).all()
    run = __import__("json").loads((out / "run.json").read_text())
    assert run["block"] == 2 and run["split_seeds"] == [0] and run["chips_per_aoi"] == {"conus": 56}


def test_same_test_chips_for_every_representation(tiny_ws):
    ws, _ = tiny_ws
    store = ws.open_store("conus")
    y = store.labels("cropland").astype(np.float64)
    splits = task_splits(store, y, [0, 1, 2], block=2)
    assert len(splits) == 3 and len({tuple(s.test) for s in splits}) == 3   # seeds differ
    rng = np.random.default_rng(0)
    X1, X2 = rng.normal(size=(len(y), 6)), rng.normal(size=(len(y), 9))
    sees_all = np.ones(len(y), dtype=bool)
    sees_some = sees_all.copy()
    sees_some[splits[0].test[:3]] = False
    kw = dict(budgets=[5, None], task="cropland", estimator="ridge", repeats=2)
    a, b = probe_rows(X1, y, sees_all, splits, **kw), probe_rows(X2, y, sees_some, splits, **kw)
    assert [r["n_test_split"] for r in a] == [r["n_test_split"] for r in b]
    n_split = np.mean([len(s.test) for s in splits])
    assert a[-1]["n_test"] == round(n_split) and a[-1]["n_test_min"] == min(len(s.test) for s in splits)
    assert b[-1]["n_test"] == round(np.mean([sees_some[s.test].sum() for s in splits]))   # the test chips it sees
    assert b[-1]["n_test"] < a[-1]["n_test"]
    assert a[0]["draws"] == 6 and a[-1]["draws"] == 3  # split seeds x draws; 'all' one fit per seed


def test_two_checkpoints_and_representation_subset(tiny_ws, tmp_path):
    ws, ckpt = tiny_ws
    other = tmp_path / "ckpt-two"
    shutil.copytree(ckpt, other)
    out = run_evaluation(ws, checkpoint=[ckpt, other], budgets=(5,), repeats=2, tasks=["cropland"],
                         split_seeds=[0, 1], block=2, representations=["fused", "hist"], dropout=False,
                         progress=False)
    assert out.name == "ckpt-test_ckpt-two-ridge"  # the default run name is a valid workspace folder name
    res = pd.read_csv(out / "results.csv")
    assert set(res.series) == {"pretrained[ckpt-test] fused", "pretrained[ckpt-two] fused", "hist"}
    assert (res.split_seeds == 2).all()
    summary = (out / "summary.md").read_text()
    assert summary.count("## (b) pretrained[") == 2


def test_channel_dropout_table(tiny_ws):
    ws, ckpt = tiny_ws
    out = run_evaluation(ws, checkpoint=ckpt, run_name="drops", budgets=(5,), repeats=2, tasks=["cropland"],
                         dropout_budget=20, progress=False, block=2, representations=["fused", "stats"])
    drop = pd.read_csv(out / "dropout.csv")
    assert {"channel s1amp-VH", "channel coh-VV_12d", "channel s2rgb-B4"} <= set(drop.missing)
    vh = drop[(drop.missing == "channel s1amp-VH")]
    assert set(vh.representation) == {"fused", "s1amp"}
    assert (ws.root / "embeddings" / "conus" / "ckpt-test" / "drop-s1amp-VH" / "meta.json").is_file()
    assert "channel s1amp-VH" in (out / "dropout.md").read_text()
    assert (drop[drop.missing == "none"].self_rank1 == 1.0).all()  # nothing missing: every chip finds itself
    assert drop.self_rank1.between(0, 1).all() and "Self-retrieval" in (out / "dropout.md").read_text()
    res = pd.read_csv(out / "results.csv")
    assert set(res.budget.astype(str)) == {"5", "all"}, "'all' is always added as the reference"


def test_observability_and_errors(tiny_ws, tmp_path):
    ws, ckpt = tiny_ws
    assert observability(np.r_[np.zeros(50), np.full(25, 0.5)])[0]
    assert not observability(np.full(100, 0.3))[0]
    assert not observability(np.r_[np.zeros(90), np.full(5, 0.9)])[0]
    assert parse_budgets(["5", "all"]) == (5, None)
    with pytest.raises(EvaluationError, match="positive integer"):
        parse_budgets(["many"])
    with pytest.raises(EvaluationError, match="unknown estimator"):
        run_evaluation(ws, checkpoint=ckpt, estimator="svm", progress=False)
    with pytest.raises(EvaluationError, match="core.pipeline build"):
        run_evaluation(Workspace(tmp_path / "empty"), checkpoint=ckpt, progress=False)


def test_self_rank1_counts_own_nearest_neighbour():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 8))
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    present = np.ones(50, dtype=bool)
    assert self_rank1(ref, present, ref, present, block=7) == 1.0
    shuffled = ref[np.r_[1:50, 0]]  # every chip now looks like its neighbour
    assert self_rank1(shuffled, present, ref, present) == 0.0
    present[:10] = False
    assert self_rank1(ref, present, ref, present) == 1.0
    assert np.isnan(self_rank1(ref, np.zeros(50, dtype=bool), ref, present))


def test_logistic_report_speaks_f1(tiny_ws):
    """The presence classifier has no R^2: the tables, targets, ratios, dropout and curves use its F1."""
    ws, ckpt = tiny_ws
    out = run_evaluation(ws, checkpoint=ckpt, run_name="logistic", budgets=(10,), repeats=2, tasks=["cropland"],
                         estimator="logistic", dropout_budget=20, progress=False, block=2,
                         representations=["fused", "stats"])
    res = pd.read_csv(out / "results.csv")
    assert "f1_mean" in res.columns and "r2_mean" not in res.columns
    assert res.ratio_to_full.notna().all()
    summary = (out / "summary.md").read_text()
    assert "Mean F1 by label budget" in summary and "R^2" not in summary
    drop = pd.read_csv(out / "dropout.csv")
    assert "f1_change" in drop.columns and (out / "dropout.md").read_text().count("|") > 10
    assert list((out / "curves").glob("*.png"))
