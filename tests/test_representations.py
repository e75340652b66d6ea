"""core.representations: names -> per-chip vectors (model embeddings with inputs dropped, random-init,
hand-crafted), the drop rules, availability, and the extension point for external embeddings (#17)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core import representations
from core.checkpoint import save_checkpoint
from core.embed import embed_aoi
from core.embeddings import load_embeddings
from core.features import handcrafted_features
from core.model import ModelConfig, MultiModalViT, fuse
from core.representations import (
    HAND_CRAFTED,
    RANDOM_INIT,
    Request,
    RepresentationError,
    RepresentationVectors,
    availability,
    list_representations,
    load_representation,
    normalise_drops,
    register_source,
    source_files,
)
from data.simulate import simulate_store
from data.workspace import SCENARIO_FULL, SCENARIO_RANDOM, Workspace, drop_scenario

MODEL = "ckpt-rep"


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    """One 30-chip simulated AOI embedded full, random-init and without s1amp VH by an untrained tiny model."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rep")
    ws = Workspace(root / "ws")
    simulate_store(ws.store_path("conus"), "conus", 5, 6, 0, chip_size=32, progress=False)
    cfg = ModelConfig(name="tiny-test", chip_size=32, patch_size=8, width=32, depth=1, heads=2, embed_dim=16)
    torch.manual_seed(0)
    ckpt = root / MODEL
    save_checkpoint(ckpt, MultiModalViT(cfg), cfg, meta={"note": "random weights for tests"})
    for scenario in (SCENARIO_FULL, SCENARIO_RANDOM, drop_scenario("s1amp", ["VH"])):
        embed_aoi(ws, "conus", ckpt, scenario, progress=False, device="cpu")
    return ws


def test_list_names_what_is_built(ws):
    names = list_representations(ws, "conus", MODEL)
    assert names[0] == "fused" and {"s2rgb", "s1amp"} <= set(names)
    assert "fused" in names and RANDOM_INIT in names and HAND_CRAFTED in names and "stats" in names
    assert list_representations(ws, "conus", "no-such-model") == [HAND_CRAFTED, "stats", "hist", "hist-q", "texture", "combined"]


def test_model_embeddings_with_modalities_and_channels_dropped(ws):
    full = load_embeddings(ws, "conus", MODEL)
    rep = load_representation(ws, "conus", MODEL, "fused")
    assert isinstance(rep, RepresentationVectors)
    np.testing.assert_array_equal(rep.chip_ids, full.chip_ids)
    np.testing.assert_array_equal(rep.X, full.get("fused")[0])
    np.testing.assert_array_equal(rep.valid, full.get("fused")[1])

    ids, X, valid = load_representation(ws, "conus", MODEL, "fused", dropped_modalities=["s2rgb"])
    want_x, want_valid = full.fused_without(["s2rgb"])
    np.testing.assert_allclose(X, want_x, rtol=1e-6)
    np.testing.assert_array_equal(valid, want_valid)

    # s1amp without VH: its vectors come from the drop scenario, the fused vector is re-made with them.
    drop = load_embeddings(ws, "conus", MODEL, drop_scenario("s1amp", ["VH"]))
    s1 = load_representation(ws, "conus", MODEL, "s1amp", dropped_channels=[("s1amp", "VH")])
    np.testing.assert_array_equal(s1.X, drop.vectors["s1amp"])
    fused = load_representation(ws, "conus", MODEL, "fused", dropped_channels=[("s1amp", "VH")])
    mods = {m: (drop if m == "s1amp" else full) for m in full.modalities}
    x, p = fuse({m: e.vectors[m] for m, e in mods.items()}, {m: e.present[m] for m, e in mods.items()})
    np.testing.assert_allclose(fused.X, x, rtol=1e-6)
    assert not np.allclose(fused.X[fused.valid], full.vectors["fused"][fused.valid])

    gone = load_representation(ws, "conus", MODEL, "s2rgb", dropped_modalities=["s2rgb"])
    assert not gone.valid.any()


def test_baselines(ws):
    rnd = load_representation(ws, "conus", MODEL, RANDOM_INIT)
    emb = load_embeddings(ws, "conus", MODEL, SCENARIO_RANDOM)
    np.testing.assert_array_equal(rnd.X, emb.get("fused")[0])
    np.testing.assert_array_equal(load_representation(ws, "conus", MODEL, "random-init:s2rgb").X, emb.get("s2rgb")[0])
    hand = load_representation(ws, "conus", MODEL, HAND_CRAFTED)
    np.testing.assert_array_equal(hand.X, handcrafted_features(ws.open_store("conus")))
    assert hand.valid.all() and np.isfinite(hand.X).all()
    assert len(load_representation(ws, "conus", MODEL, "stats").X) == len(hand.X)


def test_refusals_say_what_to_do(ws):
    with pytest.raises(RepresentationError, match="Unknown representation 'nope'"):
        load_representation(ws, "conus", MODEL, "nope")
    with pytest.raises(RepresentationError, match="cannot be computed with modalities or channels dropped"):
        load_representation(ws, "conus", MODEL, HAND_CRAFTED, dropped_modalities=["s2rgb"])
    with pytest.raises(RepresentationError, match="not built yet.*--scenario drop-s2rgb-B4"):
        load_representation(ws, "conus", MODEL, "fused", dropped_channels=[("s2rgb", "B4")])
    with pytest.raises(RepresentationError, match="Cannot drop"):
        load_representation(ws, "conus", MODEL, "fused", dropped_modalities=["radar"])


def test_source_files_key_the_caches(ws):
    files = source_files(ws, "conus", MODEL, "fused", [("s1amp", "VH")])
    assert ws.embeddings_dir("conus", MODEL) / "meta.json" in files
    assert ws.embeddings_dir("conus", MODEL, "drop-s1amp-VH") / "meta.json" in files
    assert source_files(ws, "conus", MODEL, HAND_CRAFTED) == [ws.store_path("conus") / "store.json"]


def test_drop_rules():
    channels = {"s2rgb": ["B4", "B3", "B2"], "s1amp": ["VV", "VH"]}
    mods = ["s2rgb", "s1amp"]
    assert normalise_drops(mods, channels, [], [("s1amp", "VH")]) == ((), (("s1amp", "VH"),))
    # Every channel of a modality unchecked is that modality missing.
    assert normalise_drops(mods, channels, [], [("s1amp", "VH"), ("s1amp", "VV")]) == (("s1amp",), ())
    assert normalise_drops(mods, channels, ["s2rgb"], [("s2rgb", "B4")]) == (("s2rgb",), ())
    with pytest.raises(RepresentationError, match="nothing left to embed"):
        normalise_drops(mods, channels, ["s2rgb", "s1amp"], [])


def test_availability_names_what_each_chip_has():
    present = {"s2rgb": np.array([1, 1, 0, 0], bool), "s1amp": np.array([1, 0, 1, 0], bool),
               "coh": np.array([1, 0, 0, 0], bool)}
    assert availability(present).tolist() == ["all present", "only s2rgb", "only s1amp", "none"]
    present["coh"] = np.array([0, 1, 1, 0], bool)
    assert availability(present).tolist()[:3] == ["no coh", "no s1amp", "no s2rgb"]


class _External:
    """What issue #17 adds: vectors pooled per chip, stored under <workspace>/representations/<aoi>/<name>/."""

    def names(self, ws: Workspace, aoi: str, model: str) -> list[str]:
        root = ws.artifact_dir("representations", aoi)
        return sorted(p.name for p in root.iterdir()) if root.is_dir() else []

    def owns(self, name: str) -> bool:
        return name.startswith("ext_")

    def load(self, req: Request) -> RepresentationVectors:
        d = req.ws.representation_dir(req.aoi, req.name)
        return RepresentationVectors(np.load(d / "chip_ids.npy"), np.load(d / "vectors.npy"), np.load(d / "valid.npy"))

    def source_files(self, ws: Workspace, aoi: str, model: str, name: str, dropped_channels) -> list[Path]:
        return [ws.representation_dir(aoi, name) / "vectors.npy"]


def test_an_external_source_plugs_in_without_touching_callers(ws, monkeypatch):
    monkeypatch.setattr(representations, "_SOURCES", list(representations._SOURCES))  # registered for this test only
    ids = ws.open_store("conus").index["chip_id"].to_numpy().astype(str)
    d = ws.representation_dir("conus", "ext_alphaearth")
    d.mkdir(parents=True)
    np.save(d / "chip_ids.npy", ids)
    np.save(d / "vectors.npy", np.ones((len(ids), 4), np.float32))
    np.save(d / "valid.npy", np.ones(len(ids), bool))
    register_source(_External())
    assert "ext_alphaearth" in list_representations(ws, "conus", MODEL)
    rep = load_representation(ws, "conus", MODEL, "ext_alphaearth")
    assert rep.X.shape == (len(ids), 4) and rep.valid.all()
