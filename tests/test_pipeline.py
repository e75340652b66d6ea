"""core.pipeline: build is idempotent, status reports built / missing / stale, indexes follow the embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.checkpoint import save_checkpoint
from core.embeddings import load_embeddings
from core.index import ChipIndex
from core.model import ModelConfig, MultiModalViT
from core.pipeline import PipelineError, build, index_dir, main, status
from data.simulate import simulate_store
from data.workspace import Workspace


def _checkpoint(path, seed: int):
    cfg = ModelConfig(name="tiny-test", chip_size=32, patch_size=8, width=32, depth=1, heads=2, embed_dim=16)
    torch.manual_seed(seed)
    save_checkpoint(path, MultiModalViT(cfg), cfg, meta={"note": "random weights for tests"})
    return path


@pytest.fixture
def ws_ckpt(tmp_path):
    torch.set_num_threads(1)
    ws = Workspace(tmp_path / "ws")
    simulate_store(ws.store_path("conus"), "conus", 5, 6, 0, chip_size=32, progress=False)
    # An "ingested" AOI without coherence, like real data.
    simulate_store(ws.store_path("realish"), "china", 3, 4, 0, chip_size=32, progress=False,
                   channels={"s2rgb": None, "s1amp": None})
    return ws, _checkpoint(tmp_path / "ckpts" / "ckpt-test", 1)


def test_build_idempotent_and_status(ws_ckpt, capsys):
    ws, ckpt = ws_ckpt
    aois = ["conus", "realish"]
    before = status(ws, aois=aois, checkpoint=ckpt)
    assert set(before.columns) == {"aoi", "step", "state", "detail"}
    assert (before[before.step == "store"].state == "built").all()
    assert (before[before.step != "store"].state == "missing").all()

    calls = []
    actions = build(ws, aois, checkpoint=ckpt, progress=False,
                    progress_cb=lambda f, msg: calls.append((msg, f)))
    assert len(actions) == 8 and set(actions.action) == {"built"}  # 2 AOIs x embeddings, index, random-init, projection
    assert calls and all(0.0 <= f <= 1.0 for _, f in calls) and calls[-1][1] == 1.0
    after = status(ws, aois=aois, checkpoint=ckpt)
    assert (after.state == "built").all(), after.to_string()

    # Indexes hold exactly the present chips of each key; the AOI without coh has no coh index.
    emb = load_embeddings(ws, "conus", "ckpt-test")
    for key in emb.keys:
        idx = ChipIndex.load(index_dir(ws, "conus", "ckpt-test", key))
        assert list(idx.ids) == list(emb.chip_ids[emb.present[key]])
    assert not index_dir(ws, "realish", "ckpt-test", "coh").exists()
    assert index_dir(ws, "realish", "ckpt-test", "fused").exists()
    steps = ws.manifest["steps"]
    assert "embeddings/conus/ckpt-test/full" in steps and "versions" in steps["indexes/conus/ckpt-test"]

    # Second run: nothing to do, and the CLI says so.
    mtime = (index_dir(ws, "conus", "ckpt-test", "fused") / "index.faiss").stat().st_mtime_ns
    assert build(ws, aois, checkpoint=ckpt, progress=False).empty
    xy = np.load(ws.artifact_dir("projections", "conus", "ckpt-test", "full") / "fused.npy")
    assert xy.shape == (len(emb.chip_ids), 2) and np.isfinite(xy).all()
    assert main(["build", "--workspace", str(ws.root), "--aoi", *aois, "--checkpoint", str(ckpt), "--quiet"]) == 0
    assert "up to date: nothing to build" in capsys.readouterr().out
    assert (index_dir(ws, "conus", "ckpt-test", "fused") / "index.faiss").stat().st_mtime_ns == mtime


def test_stale_after_new_weights(ws_ckpt):
    ws, ckpt = ws_ckpt
    steps = ["embeddings", "index", "projection"]
    build(ws, ["conus"], steps=steps, checkpoint=ckpt, progress=False)
    old = load_embeddings(ws, "conus", "ckpt-test").vectors["fused"]
    _checkpoint(ckpt, 2)  # retrained weights under the same name
    st = status(ws, aois=["conus"], checkpoint=ckpt).set_index("step")
    assert st.loc["embeddings", "state"] == "stale"
    actions = build(ws, ["conus"], steps=steps, checkpoint=ckpt, progress=False)
    assert list(actions.action) == ["rebuilt", "rebuilt", "rebuilt"]
    assert np.abs(load_embeddings(ws, "conus", "ckpt-test").vectors["fused"] - old).max() > 1e-3
    st = status(ws, aois=["conus"], checkpoint=ckpt, steps=steps)
    assert (st.state == "built").all()
    meta = json.loads((index_dir(ws, "conus", "ckpt-test", "fused") / "meta.json").read_text())
    assert meta["embeddings"]["source_sha"] == load_embeddings(ws, "conus", "ckpt-test").meta["source_sha"]


def test_simulated_store_step_and_errors(tmp_path, capsys):
    ws = Workspace(tmp_path / "ws")
    actions = build(ws, ["middle_east"], steps=["store"], chips_per_aoi=4, workers=1, progress=False)
    assert list(actions.action) == ["built"]
    store = ws.open_store("middle_east")
    assert store.meta.simulated and "simulated" in store.meta.title.lower()
    assert build(ws, ["middle_east"], steps=["store"], chips_per_aoi=4, progress=False).empty
    with pytest.raises(PipelineError, match="checkpoint .* is missing"):
        build(ws, ["middle_east"], steps=["embeddings"], checkpoint=tmp_path / "nope", progress=False)
    with pytest.raises(PipelineError, match="data.ingest"):
        build(ws, ["unknown_aoi"], steps=["store"], progress=False)
    with pytest.raises(ValueError, match="unknown pipeline steps"):
        build(ws, ["middle_east"], steps=["umap"], progress=False)
    assert main(["status", "--workspace", str(ws.root), "--aoi", "middle_east", "--checkpoint", str(tmp_path / "nope")]) == 0
    out = capsys.readouterr().out
    assert "middle_east" in out and "missing" in out


def test_store_of_an_older_simulator_is_stale(ws_ckpt):
    ws, ckpt = ws_ckpt
    meta_path = ws.store_path("conus") / "store.json"
    meta = json.loads(meta_path.read_text())
    assert status(ws, aois=["conus"], checkpoint=ckpt, steps=["store"])["state"].tolist() == ["built"]
    meta["meta"]["extra"]["request"]["version"] -= 1
    meta_path.write_text(json.dumps(meta))
    row = status(ws, aois=["conus"], checkpoint=ckpt, steps=["store"]).iloc[0]
    assert row["state"] == "stale" and "simulator version" in row["detail"]


def test_each_store_is_opened_once_per_route(ws_ckpt, monkeypatch):
    from data.store import ChipStore

    ws, ckpt = ws_ckpt
    opened: list[str] = []
    real_open = ChipStore.open.__func__

    def counting_open(cls, path, *args, **kwargs):
        opened.append(Path(path).name)
        return real_open(cls, path, *args, **kwargs)

    monkeypatch.setattr(ChipStore, "open", classmethod(counting_open))
    build(ws, ["conus", "realish"], checkpoint=ckpt, progress=False)
    assert sorted(opened) == ["conus", "realish"]  # store, embeddings, index, random-init, projection: one open
    opened.clear()
    status(ws, aois=["conus", "realish"], checkpoint=ckpt)
    assert sorted(opened) == ["conus", "realish"]


def test_damaged_embeddings_and_index_are_reported_and_rebuilt(ws_ckpt, capsys):
    ws, ckpt = ws_ckpt
    steps = ["embeddings", "index"]
    build(ws, ["conus"], steps=steps, checkpoint=ckpt, progress=False)
    assert (status(ws, aois=["conus"], checkpoint=ckpt, steps=steps).state == "built").all()
    emb_dir = ws.embeddings_dir("conus", "ckpt-test")
    vectors = emb_dir / "fused.npy"
    data = bytearray(vectors.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte: same size, other checksum
    vectors.write_bytes(bytes(data))
    (index_dir(ws, "conus", "ckpt-test", "s1amp") / "ids.npy").unlink()
    st = status(ws, aois=["conus"], checkpoint=ckpt, steps=steps).set_index("step")
    assert st.loc["embeddings", "state"] == "damaged", st
    assert st.loc["embeddings", "detail"].startswith("rebuild with `python -m core.embed")
    assert "fused.npy does not match its checksum" in st.loc["embeddings", "detail"]
    assert st.loc["index", "state"] == "damaged" and "s1amp: ids.npy is missing" in st.loc["index", "detail"]
    assert main(["status", "--workspace", str(ws.root), "--aoi", "conus", "--checkpoint", str(ckpt),
                 "--steps", *steps]) == 0
    assert [line.split()[2] for line in capsys.readouterr().out.splitlines()[1:]] == ["damaged", "damaged"]
    actions = build(ws, ["conus"], steps=steps, checkpoint=ckpt, progress=False)
    assert list(actions.action) == ["rebuilt", "rebuilt"]
    assert (status(ws, aois=["conus"], checkpoint=ckpt, steps=steps).state == "built").all()
