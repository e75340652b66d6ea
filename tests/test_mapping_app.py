"""The "Label & map" page in AppTest: label chips on the map and from suggestions, train, threshold, export, reload.

Each test gets its own copy of a small workspace (1 simulated AOI x 100 chips of 32 px, an untrained tiny
checkpoint, embeddings and indexes built by core.pipeline), so label sets written by one test never leak
into another. Map clicks are injected as what the raster map component sends: where the click landed on the
image (fractions across and down), resolved to the chip under it by the page.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from core import pipeline
from core.checkpoint import save_checkpoint
from core.grid import ChipGrid
from core.model import ModelConfig, MultiModalViT
from data.labelsets import load_label_set, list_label_sets
from data.simulate import simulate_store
from data.workspace import Workspace
from tests.test_app import click_score_map as click_at, gallery_rows

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
PAGE = "pages/mapping.py"
AOI = "conus"
CHECKPOINT_NAME = "test-tiny"
TIMEOUT = 120


def build_workspace(root: Path, side: int, blocks: int, chip_size: int, steps: list[str]) -> Path:
    """1 SIMULATED AOI of side x side chips, an untrained tiny checkpoint, and the pipeline `steps` built."""
    torch.set_num_threads(1)
    ws = Workspace(root)
    simulate_store(ws.store_path(AOI), AOI, side, side, blocks, chip_size=chip_size, progress=False)
    cfg = ModelConfig(name=CHECKPOINT_NAME, chip_size=32, patch_size=8, width=32, depth=1, heads=2, embed_dim=32)
    torch.manual_seed(0)
    ckpt = ws.root / "checkpoints" / CHECKPOINT_NAME
    save_checkpoint(ckpt, MultiModalViT(cfg), cfg, meta={"simulated_training_data": True, "step": 0})
    pipeline.build(ws, [AOI], steps, checkpoint=ckpt, progress=False)
    return ws.root


@pytest.fixture(scope="module")
def template_ws(tmp_path_factory) -> Path:
    """Built once: 1 SIMULATED AOI of 100 chips, an untrained tiny checkpoint, embeddings and indexes."""
    return build_workspace(tmp_path_factory.mktemp("mapws"), 10, 1, 32, ["store", "embeddings", "index"])


@pytest.fixture
def ws(template_ws, tmp_path, monkeypatch) -> Workspace:
    """A private copy of the template workspace for one test, with EO_WORKSPACE / EO_CHECKPOINT set."""
    root = tmp_path / "ws"
    shutil.copytree(template_ws, root)
    monkeypatch.setenv("EO_WORKSPACE", str(root))
    monkeypatch.setenv("EO_CHECKPOINT", CHECKPOINT_NAME)
    return Workspace(root)


def assert_clean(at: AppTest) -> None:
    """No exception element and no error box reached the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def open_mapping(query_params: dict | None = None) -> AppTest:
    """Run app.py like a browser would (optionally with URL query parameters), then the mapping page."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if query_params:
        at.query_params.update(query_params)
    at.run()
    at.switch_page(PAGE).run()
    assert_clean(at)
    return at


def chip_fraction(grid: ChipGrid, chip_id: str) -> tuple[float, float]:
    """Where on the map image the centre of a chip's cell lies (fractions across, down)."""
    pos = int(np.flatnonzero(grid.chip_ids == chip_id)[0])
    r, c = grid.cells_of(np.array([pos]))
    rows, cols = grid.shape
    return (float(c[0]) + 0.5) / cols, (float(r[0]) + 0.5) / rows


def click_chip(at: AppTest, ws: Workspace, chip_id: str) -> AppTest:
    """Click the centre of a chip on the raster map."""
    store = ws.open_store(AOI)
    return click_at(at, *chip_fraction(ChipGrid.from_index(store.index, store.meta.crs), chip_id))


def map_data(at: AppTest) -> dict:
    """What the page sent the raster map: image, grid shape, marks, legend and keys."""
    return json.loads(at.get("bidi_component")[0].proto.json)


def map_values(at: AppTest) -> np.ndarray:
    """The map image's palette indices, one per chip cell (254 = n/a, 255 = no chip)."""
    url = map_data(at)["image"]
    png = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)))


def metric(at: AppTest, label: str) -> str:
    return next(str(m.value) for m in at.metric if m.label == label or m.label.startswith(label))


def create_set(at: AppTest, name: str = "flood") -> AppTest:
    at.text_input(key="map_new_name").input(name)
    at.button(key="map_create").click().run()
    assert_clean(at)
    return at


def test_label_on_the_map_and_from_suggestions_train_threshold_export(ws, deferred):
    store = ws.open_store(AOI)
    ids = store.index["chip_id"].astype(str).tolist()
    at = open_mapping()
    assert any("No label set yet" in str(i.value) for i in at.info)

    create_set(at, "flood")
    assert any("Simulated AOI." in str(c.value) for c in at.caption)  # simulated data is said so beside the map
    assert list_label_sets(ws, AOI) == ["flood"]
    assert at.selectbox(key=f"map_labelset::{AOI}").value == "flood"
    # Before any label the map is coloured by the embeddings' main axis, not grey; the colour bar has numbers.
    levels = map_values(at)
    assert levels.shape == (10, 10) and len(np.unique(levels)) > 10 and (levels < 254).all()
    legend = map_data(at)["legend"]
    assert legend["title"] == "embedding axis 1" and len(legend["ticks"]) == 5 and legend["units"]

    # Click chips with the "present" brush, then the "absent" brush.
    assert at.radio(key="map_brush").value == "present"
    for chip in ids[:2]:
        click_chip(at, ws, chip)
    assert metric(at, "Detections") == "n/a"
    assert any("one present and one absent" in str(i.value) for i in at.info)
    at.radio(key="map_brush").set_value("absent").run()
    for chip in ids[50:52]:
        click_chip(at, ws, chip)
    saved = load_label_set(ws, AOI, "flood")
    assert saved.counts() == {"absent": 2, "present": 2} and set(saved.labels["source"]) == {"map"}
    # Labelled chips are marked in their class colour, the suggestions numbered, the last click on its own;
    # the legend keys list the classes.
    data = map_data(at)
    grid = ChipGrid.from_index(store.index, store.meta.crs)
    cell = {chip: tuple(int(x) for x in np.concatenate(grid.cells_of(np.array([i])))) for i, chip in enumerate(ids)}
    labelled = {(m["r"], m["c"]): (m["label"], tuple(m["color"])) for m in data["marks"] if m["kind"] == "label"}
    assert labelled == {cell[ids[0]]: ("present", (0, 170, 80)), cell[ids[1]]: ("present", (0, 170, 80)),
                        cell[ids[50]]: ("absent", (220, 30, 30)), cell[ids[51]]: ("absent", (220, 30, 30))}
    assert [m["label"] for m in data["marks"] if m["kind"] == "suggested"] == [str(i) for i in range(1, 13)]
    assert [(m["r"], m["c"]) for m in data["marks"] if m["kind"] == "clicked"] == [cell[ids[51]]]
    assert [k["text"] for k in data["keys"]] == ["present", "absent", "label next", "last clicked"]

    # Trained: a detection count and the few-labels warning.
    count = metric(at, "Detections")
    assert count.endswith("of 100") and any("not reliable" in str(w.value) for w in at.warning)
    assert any("chips detected of 100" in str(m.value) for m in at.markdown)

    # Accept one suggestion as present and reject one as absent.
    sug = [b.key for b in at.button if b.key and b.key.startswith("map_sug_present_")]
    assert len(sug) == 12
    first, second = sug[0].removeprefix("map_sug_present_"), sug[1].removeprefix("map_sug_present_")
    assert first not in saved.chip_ids
    at.button(key=f"map_sug_present_{first}").click().run()
    assert_clean(at)
    at.button(key=f"map_sug_absent_{second}").click().run()
    assert_clean(at)
    saved = load_label_set(ws, AOI, "flood")
    assert saved.label_of(first) == "present" and saved.label_of(second) == "absent"
    assert set(saved.labels.loc[saved.labels["chip_id"].isin([first, second]), "source"]) == {"suggestion"}
    assert len(saved) == 6

    # The threshold turns predictions into detections: the count follows it.
    at.slider(key="map_threshold").set_value(0.05).run()
    low = int(metric(at, "Detections").split()[0])
    at.slider(key="map_threshold").set_value(0.95).run()
    high = int(metric(at, "Detections").split()[0])
    assert low > high
    at.radio(key="map_view").set_value("detections").run()
    assert_clean(at)
    assert map_data(at)["legend"]["title"] == "detected"
    assert int((map_values(at) == 253).sum()) == high  # the top colour level: detected

    # Exports carry provenance: the map (GeoJSON, GeoParquet, CSV) and the labels.
    buttons = {b.proto.label: b.proto.deferred_file_id for b in at.get("download_button")}
    assert {"Map (geojson)", "Map (geoparquet)", "Map (csv)", "Labels (geojson)"} <= set(buttons)
    doc = json.loads(deferred[buttons["Map (geojson)"]]())
    prov = doc["provenance"]
    assert prov["label_set"]["name"] == "flood" and prov["threshold"] == pytest.approx(0.95)
    assert prov["n_detections"] == high and prov["simulated"] is True and prov["representation"] == "fused"
    assert len(doc["features"]) == 100 and all(f["properties"]["simulated"] for f in doc["features"])
    table = pq.read_table(io.BytesIO(deferred[buttons["Map (geoparquet)"]]()))
    assert json.loads(table.schema.metadata[b"provenance"])["estimator"] == "logistic"
    csv = deferred[buttons["Map (csv)"]]().decode()
    assert csv.startswith("# provenance: ") and len(pd.read_csv(io.StringIO(csv), comment="#")) == 100
    labels_doc = json.loads(deferred[buttons["Labels (geojson)"]]())
    assert len(labels_doc["features"]) == 6 and labels_doc["provenance"]["label_set"]["name"] == "flood"

    # Detections only: the map export holds just the detected chips.
    at.toggle(key="map_dl_detonly").set_value(True).run()
    buttons = {b.proto.label: b.proto.deferred_file_id for b in at.get("download_button")}
    assert len(json.loads(deferred[buttons["Detections (geojson)"]]())["features"]) == high


def test_reload_with_the_url_restores_the_view(ws):
    at = open_mapping()
    create_set(at, "first")
    create_set(at, "second")
    at.selectbox(key=f"map_labelset::{AOI}").set_value("first").run()
    chip = ws.open_store(AOI).index["chip_id"].iloc[7]
    click_chip(at, ws, chip)
    at.selectbox(key="map_rep").set_value("s2rgb").run()
    at.selectbox(key="map_est").set_value("knn").run()
    at.slider(key="map_threshold").set_value(0.3).run()
    assert_clean(at)
    params = dict(at.query_params)
    flat = {k: (v[0] if isinstance(v, list) else v) for k, v in params.items()}
    assert flat == {"aoi": AOI, "labels": "first", "rep": "s2rgb", "est": "knn", "thr": "0.3", "chip": chip}

    # A new session (a reload of that URL) shows the same view.
    again = open_mapping(flat)
    assert again.selectbox(key=f"map_labelset::{AOI}").value == "first"
    assert again.selectbox(key="map_rep").value == "s2rgb"
    assert again.selectbox(key="map_est").value == "knn"
    assert again.slider(key="map_threshold").value == pytest.approx(0.3)
    assert any(f"Last clicked: {chip}" in str(c.value) for c in again.caption)
    assert load_label_set(ws, AOI, "first").label_of(chip) == "present"


def test_similarity_results_label_into_the_active_set_and_the_query_is_in_the_url(ws):
    at = open_mapping()
    create_set(at, "roads")
    at.switch_page("pages/similarity.py").run()
    assert_clean(at)
    picker = at.selectbox(key=f"sim_chip::{AOI}")
    query = picker.options[12]
    picker.set_value(query).run()
    assert_clean(at)
    flat = {k: (v[0] if isinstance(v, list) else v) for k, v in dict(at.query_params).items()}
    assert flat["aoi"] == AOI and flat["chip"] == query
    # The gallery starts with the query chip itself.
    rows = list(gallery_rows(at).values())
    assert rows and len(rows[0]) == 11 and rows[0][0].startswith("query")
    # Accept a result into the label set that is active on the mapping page.
    assert at.selectbox(key=f"sim_labelset::{AOI}").value == "roads"
    accept = [b.key for b in at.button if b.key and b.key.startswith("sim_lab_present_")]
    assert len(accept) == 10
    at.button(key=accept[0]).click().run()
    assert_clean(at)
    saved = load_label_set(ws, AOI, "roads")
    assert saved.label_of(accept[0].removeprefix("sim_lab_present_")) == "present"
    assert saved.labels["source"].tolist() == ["gallery"]

    # A reload of the similarity URL restores the AOI and the query.
    reload = AppTest.from_file(APP, default_timeout=TIMEOUT)
    reload.query_params.update(flat)
    reload.run()
    reload.switch_page("pages/similarity.py").run()
    assert_clean(reload)
    assert reload.selectbox(key=f"sim_chip::{AOI}").value == query
    assert any(t.value is not None and "score" in t.value.columns for t in reload.table)


def test_labels_without_features_in_a_modality_warn_and_keep_the_map(ws):
    from data.labelsets import LabelSet, save_label_set

    store = ws.open_store(AOI)
    lacking = store.index["chip_id"][~store.available("coh")].tolist()
    having = store.index["chip_id"][store.available("coh")].tolist()
    assert lacking and having, "the simulated AOI should have chips with and without coherence"
    labels = LabelSet(AOI, "partly").add([lacking[0]], "present").add([having[0]], "absent")
    save_label_set(ws, labels, store=store)
    at = open_mapping({"labels": "partly", "rep": "coh"})
    assert at.selectbox(key="map_rep").value == "coh"
    assert any("cannot be trained yet" in str(w.value) for w in at.warning)
    assert len(at.get("bidi_component")) == 1  # the analyst can still label chips on the map
    at.selectbox(key="map_rep").set_value("fused").run()
    assert_clean(at)
    assert metric(at, "Detections").endswith("of 100")


@pytest.fixture(scope="module")
def big_ws(tmp_path_factory) -> Path:
    """1 SIMULATED AOI of 45 x 45 = 2,025 chips of 16 px (the size at which deck.gl picking dropped clicks)."""
    return build_workspace(tmp_path_factory.mktemp("bigmapws"), 45, 3, 16, ["store", "embeddings"])


def test_a_click_on_a_2000_chip_map_labels_exactly_the_chip_under_it(big_ws, monkeypatch):
    monkeypatch.setenv("EO_WORKSPACE", str(big_ws))
    monkeypatch.setenv("EO_CHECKPOINT", CHECKPOINT_NAME)
    ws = Workspace(big_ws)
    store = ws.open_store(AOI)
    grid = ChipGrid.from_index(store.index, store.meta.crs)
    assert len(store) == 2025 and grid.shape == (45, 45)
    at = open_mapping()
    create_set(at, "big")
    data = map_data(at)
    assert (data["rows"], data["cols"]) == (45, 45) and map_values(at).shape == (45, 45)

    # Clicks anywhere on the image, edges included: the chip under each click (its coordinate) is labelled.
    expected = []
    for i, (u, v) in enumerate([(0.37, 0.81), (0.001, 0.001), (0.999, 0.999), (0.5, 0.02)]):
        if i == 2:
            at.radio(key="map_brush").set_value("absent").run()
        click_at(at, u, v)
        chip = grid.chip_at(*grid.lonlat_at_fraction(u, v))
        assert chip is not None
        expected.append((chip, "absent" if i >= 2 else "present"))
        labels = load_label_set(ws, AOI, "big").labels
        assert dict(zip(labels["chip_id"], labels["label"])) == dict(expected)
        assert any(f"Last clicked: {chip}" in str(c.value) for c in at.caption)
    assert expected[0][0] == store.index["chip_id"].iloc[int(grid.positions[int(0.81 * 45), int(0.37 * 45)])]
    mapped = int(metric(at, "Detections").split(" of ")[1])  # two classes labelled: the map retrained
    assert 2000 <= mapped <= 2025  # every chip with a fused embedding

    # A click outside the AOI's image labels nothing and keeps the last clicked chip.
    before = load_label_set(ws, AOI, "big").labels
    for u, v in [(1.2, 0.5), (-0.1, 0.3), (0.5, 1.0)]:
        click_at(at, u, v)
    after = load_label_set(ws, AOI, "big").labels
    pd.testing.assert_frame_equal(before, after)
    assert any(f"Last clicked: {expected[-1][0]}" in str(c.value) for c in at.caption)

    # The same chip clicked again registers again (a click is a trigger, not a sticky selection).
    at.radio(key="map_brush").set_value("remove").run()
    click_at(at, 0.37, 0.81)
    assert load_label_set(ws, AOI, "big").label_of(expected[0][0]) is None
    assert len(load_label_set(ws, AOI, "big")) == 3
