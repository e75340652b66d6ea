"""Real data end to end: a Sen1Floods11 chip ingested, embedded, indexed, searched, probed and opened in the app.

The store has S2 and S1 but no coherence (none exists offline): every step must work with it missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.checkpoint import SHIPPED_CHECKPOINT, read_config
from core.embed import embed_aoi
from core.embeddings import load_embeddings
from core.index import ChipIndex
from core.pipeline import build, status
from core.probes import fit_probe
from data.readers import ingest_bigearthnet, ingest_sen1floods11
from data.samples import shared_data_dir
from data.workspace import Workspace

SHARED = shared_data_dir()
FLOODS = SHARED / "sen1floods11-sample"
BEN = SHARED / "bigearthnet-mm-example"
APP = str(Path(__file__).resolve().parents[1] / "app.py")
MODEL = SHIPPED_CHECKPOINT.name


@pytest.fixture(scope="module")
def flood_ws(tmp_path_factory) -> Workspace:
    """A workspace holding only the real Sen1Floods11 chip, cut at the shipped model's chip size."""
    ws = Workspace(tmp_path_factory.mktemp("realws"))
    chip = read_config(SHIPPED_CHECKPOINT).chip_size
    ingest_sen1floods11(FLOODS, "flood_spain", ws.store_path("flood_spain"), chip_size=chip, progress=False)
    actions = build(ws, aois=["flood_spain"], steps=["store", "embeddings", "index"], progress=False)
    assert set(actions["step"]) <= {"embeddings", "index"}  # a real store is never (re)generated
    return ws


def test_real_store_embeds_with_coherence_missing(flood_ws):
    store = flood_ws.open_store("flood_spain")
    assert not store.meta.simulated and "coh" not in store.modalities
    emb = load_embeddings(flood_ws, "flood_spain", MODEL)
    assert list(emb.chip_ids) == list(store.index["chip_id"])
    assert not emb.present["coh"].any() and np.all(emb.vectors["coh"] == 0)
    assert emb.present["s1amp"].all() and emb.present["fused"].all()
    norms = np.linalg.norm(emb.vectors["fused"], axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4)
    st = status(flood_ws, aois=["flood_spain"], steps=["store", "embeddings", "index"])
    assert (st["state"] == "built").all(), st
    assert "coh" in st.loc[st["step"] == "index", "detail"].iloc[0]  # said plainly: nothing to index for coh


def test_real_store_search_and_probe(flood_ws):
    index = ChipIndex.load(flood_ws.artifact_dir("indexes", "flood_spain", MODEL, "s1amp"))
    store = flood_ws.open_store("flood_spain")
    first = store.index["chip_id"].iloc[0]
    scores, pos = index.search_ids(first, 5)
    assert pos.shape == (1, 5) and (pos >= 0).all() and first not in set(index.chip_ids_of(pos[0]))
    assert np.all(np.diff(scores[0]) <= 1e-6)

    emb = load_embeddings(flood_ws, "flood_spain", MODEL)
    water = store.labels("water")
    assert np.isfinite(water).sum() >= 20 and np.nanstd(water) > 0.02  # flood water: observable here
    res = fit_probe(emb.vectors["fused"], water, task="water", budget=15, repeats=3, seed=0)
    assert res.n_train == 15 and all(np.isfinite(v[0]) for v in res.metrics.values())


def test_app_lists_the_real_store_and_searches_it(flood_ws, monkeypatch):
    monkeypatch.setenv("EO_WORKSPACE", str(flood_ws.root))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception and not at.error
    assert at.dataframe[0].value[["aoi", "kind"]].values.tolist() == [["flood_spain", "real"]]
    at.switch_page("pages/similarity.py").run()
    picker = at.selectbox(key="sim_chip::flood_spain")
    picker.set_value(picker.options[3]).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    res = next(t.value for t in at.table if "score" in t.value.columns)
    assert len(res) == 10 and set(res["kind"]) == {"real"}


def test_store_of_another_chip_size_is_resampled_to_the_model(tmp_path):
    ws = Workspace(tmp_path)
    ingest_bigearthnet(BEN, "ben", ws.store_path("ben"), progress=False)  # 120 px patches, model: 64 px
    store = ws.open_store("ben")
    assert store.meta.chip_size != read_config(SHIPPED_CHECKPOINT).chip_size
    embed_aoi(ws, "ben", SHIPPED_CHECKPOINT, progress=False)
    emb = load_embeddings(ws, "ben", MODEL)
    assert emb.meta["resampled_from"] == store.meta.chip_size
    assert emb.present["s2rgb"].all() and emb.present["s1amp"].all() and not emb.present["coh"].any()
    assert list(emb.chip_ids) == list(store.index["chip_id"])
    assert np.allclose(np.linalg.norm(emb.vectors["fused"], axis=1), 1.0, atol=1e-4)
