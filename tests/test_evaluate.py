"""core.evaluate: the paper-style report on a tiny workspace (csv, markdown, PNGs, dropout table) and its checks."""

from __future__ import annotations

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
    run_evaluation,
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


def test_quick_cli_writes_report(tiny_ws, capsys):
    ws, ckpt = tiny_ws
    assert main(["--workspace", str(ws.root), "--checkpoint", str(ckpt), "--quick", "--quiet"]) == 0
    out = ws.root / "evaluations" / "ckpt-test-ridge-quick"
    assert "Few-shot evaluation (SIMULATED AOIs)" in capsys.readouterr().out
    res = pd.read_csv(out / "results.csv")
    for col in ("aoi", "task", "observable", "model", "representation", "budget", "n_train", "r2_mean", "r2_std",
                "pearson_r_mean", "mae_mean", "r2_full", "ratio_to_full"):
        assert col in res.columns, col
    assert set(res.model) == {"pretrained", "random-init", "handcrafted"}
    assert set(res[res.model == "pretrained"].representation) == {"s2rgb", "s1amp", "coh", "fused"}
    assert set(res.task) == {"vegetation", "builtup", "cropland", "water"}
    # 56 chips -> a pool of ~38: budget 100 cannot be drawn, 10 and 'all' can.
    assert set(res.budget.astype(str)) == {"10", "all"}
    full = res[res.budget.astype(str) == "all"]
    assert (full.n_train == full.n_pool).all()
    pos = full[full.r2_mean > 0]
    np.testing.assert_allclose(pos.ratio_to_full, 1.0)
    assert res.mae_mean.between(0, 1).all() and res.pearson_r_mean.dropna().between(-1, 1).all()
    pngs = sorted(p.name for p in (out / "curves").glob("*.png"))
    assert pngs == [f"conus_{t}.png" for t in sorted(["vegetation", "builtup", "cropland", "water"])]
    assert all((out / "curves" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    summary = (out / "summary.md").read_text()
    assert "| AOI | task | observable |" in summary and "## Targets" in summary
    drop = pd.read_csv(out / "dropout.csv")
    assert {"none", "modality s2rgb", "modality s1amp", "modality coh"} <= set(drop.missing)
    assert (drop[drop.missing == "none"].r2_change.abs() < 1e-12).all()


def test_channel_dropout_table(tiny_ws):
    ws, ckpt = tiny_ws
    out = run_evaluation(ws, checkpoint=ckpt, run_name="drops", budgets=(5,), repeats=2, tasks=["cropland"],
                         dropout_budget=20, progress=False)
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
    from core.evaluate import self_rank1

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
