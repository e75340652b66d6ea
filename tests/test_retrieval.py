"""core.retrieval: top-k accuracy against brute force and core.loss.retrieval_top1; the CLI on a tiny checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.checkpoint import save_checkpoint
from core.loss import retrieval_top1
from core.model import ModelConfig, MultiModalViT
from core.retrieval import RetrievalError, main, run_retrieval, topk_accuracy


def brute(za, zb, k):
    s = za @ zb.T
    hits = 0
    for i in range(len(za)):
        order = np.argsort(-s[i], kind="stable")
        hits += i in order[:k] and (s[i] > s[i, i]).sum() + (s[i] == s[i, i]).sum() - 1 < k
    return hits / len(za)


def test_topk_matches_brute_force_and_model_top1():
    rng = np.random.default_rng(0)
    za = rng.normal(size=(60, 8)).astype(np.float32)
    zb = za + rng.normal(scale=0.8, size=za.shape).astype(np.float32)
    za /= np.linalg.norm(za, axis=1, keepdims=True)
    zb /= np.linalg.norm(zb, axis=1, keepdims=True)
    acc = topk_accuracy(za, zb, ks=(1, 5), block=7)
    assert acc[1] == pytest.approx(brute(za, zb, 1)) and acc[5] == pytest.approx(brute(za, zb, 5))
    assert acc[1] == pytest.approx(retrieval_top1(torch.from_numpy(za), torch.from_numpy(zb)), abs=1e-6)
    assert 0 < acc[1] <= acc[5] <= 1
    assert topk_accuracy(za, za, ks=(1,))[1] == 1.0
    same = np.ones((10, 4), np.float32)               # a collapsed embedding: ties count against the query
    assert topk_accuracy(same, same, ks=(1, 5)) == {1: 0.0, 5: 0.0}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.set_num_threads(1)
    cfg = ModelConfig(name="tiny-ret", chip_size=32, patch_size=8, width=32, depth=1, heads=2, embed_dim=16)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ret") / "ckpt-ret"
    meta = {"train_config": {"data": {"seeds": [1, 2], "heldout_seed": 7, "aois": ["conus", "china"]}}}
    save_checkpoint(path, MultiModalViT(cfg), cfg, meta=meta)
    return path


def test_cli_writes_table_and_json(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "ret.json"
    assert main(["--checkpoint", str(tiny_ckpt), "--chips", "24", "--json", str(out),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    text = capsys.readouterr().out
    assert "| s2rgb -> s1amp |" in text and "| s1amp -> s2rgb |" in text and "top-5" in text
    data = json.loads(out.read_text())
    assert data["settings"]["seed"] == 7 and data["settings"]["never_trained_on"] is True
    assert data["settings"]["aois"] == ["conus", "china"] and data["settings"]["chips"] == 24
    pairs = {(p["query"], p["target"]) for p in data["pairs"]}
    assert {("s2rgb", "coh"), ("coh", "s2rgb"), ("s1amp", "coh"), ("coh", "s1amp")} <= pairs
    for p in data["pairs"]:
        assert 0 <= p["top1"] <= p["top5"] <= 1 and p["chance_top1"] == pytest.approx(1 / p["n"])


def test_training_seed_is_refused(tiny_ckpt, capsys):
    with pytest.raises(RetrievalError, match="training seeds"):
        run_retrieval(tiny_ckpt, seed=2, chips=8)
    assert main(["--checkpoint", str(tiny_ckpt), "--seed", "1", "--chips", "8"]) == 2
    assert "training seeds" in capsys.readouterr().err


def test_heldout_chips_are_pretrainings_heldout_chips(tiny_ckpt, tmp_path):
    """The held-out set equals what training.pretrain builds (same stores, same pick, same model inputs)."""
    from core.embed import load_model
    from core.retrieval import embed_heldout, heldout_stores
    from training.config import DataConfig
    from training.data import TrainingChips, simulated_stores

    model = load_model(tiny_ckpt)
    cfg = model.cfg
    chans = {k: list(v) for k, v in cfg.channels.items()}
    mine = heldout_stores(["conus", "china"], 7, 10, chip_size=cfg.chip_size, channels=chans, cache_dir=tmp_path / "a")
    d = DataConfig(aois=["conus", "china"], cache_dir=str(tmp_path / "b"), seeds=[1], heldout_seed=7, heldout_chips=10)
    theirs = simulated_stores(d, cfg.chip_size, chans, [7], 5, progress=False)
    assert [len(s) for s in mine] == [len(s) for s in theirs]
    v, p = embed_heldout(model, mine, 10)
    src = TrainingChips(theirs, chans, in_memory=False)
    batch = src.get_batch(np.linspace(0, len(src) - 1, 10).round().astype(np.int64))
    with torch.no_grad():
        out = model.eval().encode(batch)
    for k in ("s2rgb", "s1amp", "coh", "fused"):
        np.testing.assert_allclose(v[k], out[k].numpy(), atol=1e-5)
        assert np.array_equal(p[k], out[f"{k}_present"].numpy())
