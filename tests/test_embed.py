"""core.embed: alignment with chip ids, presence, fusion, scenarios, resume, torchrun sharding, load errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.checkpoint import SHIPPED_CHECKPOINT, save_checkpoint
from core.embed import embed_aoi, embed_positions, embed_store, load_model
from core.embeddings import EmbeddingError, embeddings_state, load_embeddings
from core.index import ChipIndex
from core.model import ModelConfig, MultiModalViT, fuse
from data.simulate import simulate_store
from data.workspace import Workspace, parse_scenario

REPO = Path(__file__).resolve().parents[1]


def tiny_config() -> ModelConfig:
    """A width-32, depth-1 model on 32 px chips: real architecture, trained or not, fast on CPU."""
    return ModelConfig(name="tiny-test", chip_size=32, patch_size=8, width=32, depth=1, heads=2, embed_dim=16)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Workspace, Path]:
    """A workspace with a 6x6-chip simulated store (32 px) and a randomly initialised checkpoint."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ws")
    ws = Workspace(root / "ws")
    simulate_store(ws.store_path("conus"), "conus", 6, 6, 0, chip_size=32, progress=False,
                   missing_rates={"s2rgb": 0.1, "s1amp": 0.1, "coh": 0.15})
    cfg = tiny_config()
    torch.manual_seed(1)
    ckpt = root / "ckpt-test"
    save_checkpoint(ckpt, MultiModalViT(cfg), cfg, meta={"note": "random weights for tests"})
    return ws, ckpt


def test_rows_aligned_with_store_and_presence(setup):
    ws, ckpt = setup
    store = ws.open_store("conus")
    model = load_model(ckpt)
    emb = embed_store(store, model, batch_size=7, progress=False, num_threads=1)
    assert list(emb.chip_ids) == store.index["chip_id"].tolist()
    assert set(emb.keys) == {"s2rgb", "s1amp", "coh", "fused"}
    for mod in ("s2rgb", "s1amp", "coh"):
        v, p = emb.get(mod)
        assert v.shape == (len(store), 16) and v.dtype == np.float32
        np.testing.assert_array_equal(p, store.available(mod))
        assert np.all(v[~p] == 0)
        np.testing.assert_allclose(np.linalg.norm(v[p], axis=1), 1.0, atol=1e-5)
    assert (~emb.present["coh"]).any(), "the fixture should have chips without coherence"
    # Row i is chip i: embedding chip 5 alone gives the same vector as row 5 of the batch run.
    one, _ = embed_positions(store, model, np.array([5]), batch_size=1)
    np.testing.assert_allclose(one["s1amp"][0], emb.vectors["s1amp"][5], atol=1e-5)


def test_fused_is_normalised_mean_of_present(setup):
    ws, ckpt = setup
    emb = embed_store(ws.open_store("conus"), load_model(ckpt), progress=False, num_threads=1)
    fused, present = fuse({k: emb.vectors[k] for k in emb.modalities}, {k: emb.present[k] for k in emb.modalities})
    np.testing.assert_allclose(emb.vectors["fused"], fused, atol=1e-5)
    np.testing.assert_array_equal(emb.present["fused"], present)
    # Dropping a modality re-fuses the rest; a chip with only coh left has no fused vector.
    v, p = emb.fused_without(["coh"])
    expect, ep = fuse({k: emb.vectors[k] for k in ("s2rgb", "s1amp")}, {k: emb.present[k] for k in ("s2rgb", "s1amp")})
    np.testing.assert_allclose(v, expect, atol=1e-6)
    np.testing.assert_array_equal(p, emb.present["s2rgb"] | emb.present["s1amp"])
    with pytest.raises(KeyError, match="cannot drop"):
        emb.fused_without(["lidar"])


def test_store_without_coherence(tmp_path, setup):
    """A store like ingested real data (no coh): coh rows are zeros, present False; fused uses the rest."""
    _, ckpt = setup
    store = simulate_store(tmp_path / "nocoh", "conus", 3, 4, 0, chip_size=32, progress=False,
                           channels={"s2rgb": None, "s1amp": None})
    emb = embed_store(store, load_model(ckpt), progress=False, num_threads=1)
    assert not emb.present["coh"].any() and np.all(emb.vectors["coh"] == 0)
    assert emb.present["s1amp"].sum() > 0
    np.testing.assert_array_equal(emb.present["fused"], emb.present["s2rgb"] | emb.present["s1amp"])


def test_drop_channel_scenario(setup):
    ws, ckpt = setup
    store = ws.open_store("conus")
    model = load_model(ckpt)
    assert parse_scenario("drop-s1amp-VH") == {"s1amp": ["VH"]}
    with pytest.raises(ValueError, match="unknown scenario"):
        parse_scenario("nonsense")
    full = embed_store(store, model, progress=False, num_threads=1)
    drop = embed_store(store, model, drop_channels={"s1amp": ["VH"]}, progress=False, num_threads=1)
    np.testing.assert_allclose(drop.vectors["s2rgb"], full.vectors["s2rgb"], atol=1e-6)
    p = full.present["s1amp"]
    assert np.abs(drop.vectors["s1amp"][p] - full.vectors["s1amp"][p]).max() > 1e-3
    # The dropped scenario does not depend on batching or on which positions are asked for.
    batch_vv = embed_positions(store, model, np.arange(4), drop_channels={"s1amp": ["VH"]})[0]["s1amp"]
    np.testing.assert_allclose(batch_vv, drop.vectors["s1amp"][:4], atol=1e-5)
    with pytest.raises(ValueError, match="channels are"):
        embed_store(store, model, drop_channels={"s1amp": ["HH"]}, progress=False)


def test_embed_aoi_skip_resume_and_load(setup, tmp_path):
    ws, ckpt = setup
    out = embed_aoi(ws, "conus", ckpt, "full", batch_size=4, shard_chips=8, progress=False, num_threads=1)
    assert out == ws.root / "embeddings" / "conus" / "ckpt-test" / "full"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["n_chips"] == 36 and meta["scenario"] == "full" and meta["simulated"] is True
    reference = load_embeddings(ws, "conus", "ckpt-test")
    assert embeddings_state(ws, "conus", ckpt)[0] == "built"
    mtime = (out / "fused.npy").stat().st_mtime_ns
    embed_aoi(ws, "conus", ckpt, "full", batch_size=4, shard_chips=8, progress=False, num_threads=1)
    assert (out / "fused.npy").stat().st_mtime_ns == mtime, "an up-to-date run must not rewrite"
    named = embed_aoi(ws, "conus", ckpt, "full", model_name="renamed", progress=False, num_threads=1)
    assert embeddings_state(ws, "conus", ckpt, model_name="renamed")[0] == "built"
    named_mtime = (named / "fused.npy").stat().st_mtime_ns
    embed_aoi(ws, "conus", ckpt, "full", model_name="renamed", progress=False, num_threads=1)
    assert (named / "fused.npy").stat().st_mtime_ns == named_mtime, "a custom model name is skipped when up to date too"

    # Interrupt a fresh run after its second shard, then resume: identical arrays, finished shards reused.
    ws2 = Workspace(tmp_path / "ws2")
    ws2.store_path("conus").parent.mkdir(parents=True)
    os.symlink(ws.store_path("conus"), ws2.store_path("conus"))
    calls = []

    def interrupt(fraction, message):
        calls.append(message)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_aoi(ws2, "conus", ckpt, "full", batch_size=4, shard_chips=8, progress=False, num_threads=1,
                  progress_cb=interrupt)
    work = ws2.root / "embeddings" / "conus" / "ckpt-test" / ".work-full"
    assert len(list(work.glob("part-*.npz"))) == 2
    assert embeddings_state(ws2, "conus", ckpt)[0] == "missing"
    with pytest.raises(EmbeddingError, match="python -m core.embed"):
        load_embeddings(ws2, "conus", "ckpt-test")
    resumed = []
    embed_aoi(ws2, "conus", ckpt, "full", batch_size=4, shard_chips=8, progress=False, num_threads=1,
              progress_cb=lambda f, m: resumed.append(m))
    assert len(resumed) == 3, "only the 3 unfinished shards of 5 are embedded again"
    assert not work.exists()
    again = load_embeddings(ws2, "conus", "ckpt-test")
    for k in reference.keys:
        np.testing.assert_array_equal(again.vectors[k], reference.vectors[k])
        np.testing.assert_array_equal(again.present[k], reference.present[k])


def test_random_init_is_seeded_and_differs(setup):
    ws, ckpt = setup
    a = embed_store(ws.open_store("conus"), load_model(ckpt, "random-init"), progress=False, num_threads=1)
    b = embed_store(ws.open_store("conus"), load_model(ckpt, "random-init"), progress=False, num_threads=1)
    c = embed_store(ws.open_store("conus"), load_model(ckpt), progress=False, num_threads=1)
    np.testing.assert_array_equal(a.vectors["fused"], b.vectors["fused"])
    assert np.abs(a.vectors["fused"] - c.vectors["fused"]).max() > 1e-2


def test_load_errors(setup, tmp_path):
    ws, ckpt = setup
    with pytest.raises(EmbeddingError, match="build them with"):
        load_embeddings(ws, "conus", "ckpt-test", "random-init")
    # Embeddings from another store's chips: loading against this store says to re-embed.
    ws3 = Workspace(tmp_path / "ws3")
    simulate_store(ws3.store_path("conus"), "conus", 2, 3, 0, chip_size=32, progress=False)
    embed_aoi(ws3, "conus", ckpt, progress=False, num_threads=1)
    src = ws3.root / "embeddings" / "conus" / "ckpt-test" / "full"
    dst = ws.root / "embeddings" / "conus" / "ckpt-test" / "drop-coh-VV_12d"
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)
    with pytest.raises(EmbeddingError, match="re-embed"):
        load_embeddings(ws, "conus", "ckpt-test", "drop-coh-VV_12d")
    os.unlink(dst)


def test_torchrun_two_ranks_equal_single_process(setup, tmp_path):
    ws, ckpt = setup
    ws4 = Workspace(tmp_path / "ws4")
    ws4.store_path("conus").parent.mkdir(parents=True)
    os.symlink(ws.store_path("conus"), ws4.store_path("conus"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "core.embed", "--workspace", str(ws4.root), "--aoi", "conus", "--checkpoint", str(ckpt),
           "--batch-size", "4", "--shard-chips", "8", "--threads", "1", "--quiet", "--device", "cpu"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    dist = load_embeddings(ws4, "conus", "ckpt-test")
    assert dist.meta["world_size"] == 2
    single = embed_store(ws.open_store("conus"), load_model(ckpt), batch_size=4, progress=False, num_threads=1)
    np.testing.assert_array_equal(dist.chip_ids, single.chip_ids)
    for k in single.keys:
        np.testing.assert_allclose(dist.vectors[k], single.vectors[k], atol=1e-5)
        np.testing.assert_array_equal(dist.present[k], single.present[k])


def test_cross_modal_search_with_shipped_checkpoint(tmp_path):
    """With the shipped weights, an s2rgb query finds the same chip's s1amp vector first far above chance."""

    store = simulate_store(tmp_path / "xm", "conus", 8, 8, 0, chip_size=64, progress=False)
    emb = embed_store(store, load_model(SHIPPED_CHECKPOINT), progress=False, num_threads=1)
    for query, target in (("s2rgb", "s1amp"), ("s1amp", "coh")):
        both = emb.present[query] & emb.present[target]
        index = ChipIndex.build(emb.vectors[target][both], emb.chip_ids[both], gpu=False)
        _, pos = index.search(emb.vectors[query][both], 1)
        top1 = float((index.ids[pos[:, 0]] == emb.chip_ids[both]).mean())
        chance = 1.0 / both.sum()
        # Measured 0.56 (s2rgb->s1amp) and 0.55 (s1amp->coh) on this 64-chip store; chance is ~0.017.
        assert top1 >= 0.3 and top1 > 15 * chance, (query, target, top1)


def test_embeddings_are_stale_when_any_checkpoint_file_changes(setup, tmp_path):
    """Not only the weights: an edited config or meta (or an added file) makes built embeddings stale."""
    ws, ckpt = setup
    ws5 = Workspace(tmp_path / "ws5")
    ws5.store_path("conus").parent.mkdir(parents=True)
    os.symlink(ws.store_path("conus"), ws5.store_path("conus"))
    mine = tmp_path / "models" / "ckpt-test"
    shutil.copytree(ckpt, mine)
    embed_aoi(ws5, "conus", mine, progress=False, num_threads=1)
    assert embeddings_state(ws5, "conus", mine)[0] == "built"
    meta = json.loads((mine / "meta.json").read_text())
    (mine / "meta.json").write_text(json.dumps({**meta, "note": "retrained elsewhere"}))
    state, detail = embeddings_state(ws5, "conus", mine)
    assert state == "stale" and "checkpoint" in detail
    embed_aoi(ws5, "conus", mine, progress=False, num_threads=1)
    assert embeddings_state(ws5, "conus", mine)[0] == "built"
    (mine / "config.yaml").write_text((mine / "config.yaml").read_text().replace("heads: 2", "heads: 4"))
    assert embeddings_state(ws5, "conus", mine)[0] == "stale"
    with pytest.raises(Exception, match="heads: saved 2, config.yaml 4"):
        embed_aoi(ws5, "conus", mine, progress=False, num_threads=1)
