"""The Streamlit app: AppTest drives home and every page on a small real workspace; ui helpers unit-tested.

The workspace (2 simulated AOIs x 100 chips of 32 px, an untrained tiny model saved as a real
checkpoint, embeddings and FAISS indexes built by core.pipeline) is built once per module; a test that
changes it (builds a step, saves labels, writes a projection) works on its own copy (`own_ws`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from shapely.geometry import box
from streamlit.testing.v1 import AppTest

from core import pipeline
from core.checkpoint import save_checkpoint
from core.model import ModelConfig, MultiModalViT
from data.simulate import simulate_store
from data.workspace import Workspace
from ui import maps
from ui.errors import UserError, explain

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "app.py")
APP_AOIS = (("conus", 1), ("south_america", 2))
CHECKPOINT_NAME = "test-tiny"
TIMEOUT = 120


def build_app_workspace(root: Path, grids: dict[str, tuple[int, int, int]] | None = None) -> tuple[Path, Path]:
    """A small real workspace: 2 SIMULATED AOIs x 100 chips of 32 px (or `grids`: AOI -> rows, cols, chip
    size), an untrained tiny model saved as a checkpoint (real weights, random init), embeddings (full +
    random-init) and indexes via core.pipeline."""
    torch.set_num_threads(1)
    ws = Workspace(root)
    for aoi, seed in APP_AOIS:
        rows, cols, size = (grids or {}).get(aoi, (10, 10, 32))
        simulate_store(ws.store_path(aoi), aoi, rows, cols, seed, chip_size=size, progress=False)
    cfg = ModelConfig(name=CHECKPOINT_NAME, chip_size=32, patch_size=8, width=32, depth=1, heads=2, embed_dim=32)
    torch.manual_seed(0)
    ckpt = ws.root / "checkpoints" / CHECKPOINT_NAME
    meta = {
        "training_data": {"source": "simulated (data.simulate)", "aois": [a for a, _ in APP_AOIS], "seeds": [1, 2]},
        "simulated_training_data": True,
        "heldout_retrieval": {"s2rgb<->s1amp": {"top1": 0.03, "chance": 0.01, "n": 100}},
        "step": 0,
    }
    save_checkpoint(ckpt, MultiModalViT(cfg), cfg, meta=meta)
    pipeline.build(ws, ws.list_stores(), list(pipeline.STEPS), checkpoint=ckpt, progress=False)
    return ws.root, ckpt


@pytest.fixture(scope="module")
def app_ws(tmp_path_factory) -> Path:
    """The test workspace, with EO_WORKSPACE / EO_CHECKPOINT pointing at it for the module."""
    root, _ = build_app_workspace(tmp_path_factory.mktemp("appws"))
    mp = pytest.MonkeyPatch()
    mp.setenv("EO_WORKSPACE", str(root))
    mp.setenv("EO_CHECKPOINT", CHECKPOINT_NAME)
    yield root
    mp.undo()


def private_copy(built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of a built workspace that the app uses for one test (so no test depends on another's order)."""
    root = tmp_path / "ws"
    shutil.copytree(built, root)
    monkeypatch.setenv("EO_WORKSPACE", str(root))
    monkeypatch.setenv("EO_CHECKPOINT", CHECKPOINT_NAME)
    return root


@pytest.fixture
def own_ws(app_ws, tmp_path, monkeypatch) -> Path:
    """A private copy of the built workspace, for a test that changes it."""
    return private_copy(app_ws, tmp_path, monkeypatch)


def open_page(page: str | None = None) -> AppTest:
    """Run app.py (and switch to a page) like a browser session would."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    assert_clean(at)
    return at


def assert_clean(at: AppTest) -> None:
    """No exception element and no error box reached the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def gallery_rows(at: AppTest) -> dict[str, list[str]]:
    """The thumbnail gallery's rows on the page: {row title: the captions of its thumbnails, in order}."""
    rows: dict[str, list[str]] = {}
    for element in at.get("html"):
        body = element.proto.body
        if 'class="eo-gallery"' not in body:
            continue
        for title, row in re.findall(r'<div class="eo-row-title">(.*?)</div><div class="eo-row">(.*?)</div>', body, re.S):
            rows[html.unescape(title)] = [html.unescape(c.replace("<br>", "\n"))
                                          for c in re.findall(r"<figcaption>(.*?)</figcaption>", row, re.S)]
    return rows


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


# ----------------------------------------------------------------------------------------- home
def test_home_shows_aois_model_card_and_pipeline(app_ws):
    at = open_page()
    assert "Few-shot Earth observation" in at.title[0].value
    aois = at.dataframe[0].value
    assert set(aois["aoi"]) == {"conus", "south_america"} and set(aois["kind"]) == {"simulated"}
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Parameters"].replace(",", "").isdigit() and metrics["Embedding dim"] == "32"
    assert any("SIMULATED" in t for t in texts(at.markdown))
    assert any("Simulated data" in t for t in texts(at.sidebar.warning))  # shown on every page
    retrieval = next(d.value for d in at.dataframe if "top-1" in d.value.columns)
    assert retrieval["top-1"].iloc[0] == pytest.approx(0.03) and retrieval["chance"].iloc[0] == pytest.approx(0.01)
    assert at.button(key="home_build").disabled  # everything built


def test_home_build_button_builds_the_missing_step(own_ws):
    ws = Workspace(own_ws)
    shutil.rmtree(ws.artifact_dir("indexes", "conus", CHECKPOINT_NAME, "s1amp"))
    at = open_page()
    button = at.button(key="home_build")
    assert not button.disabled and "(1)" in button.label
    button.click().run()
    assert_clean(at)
    built = [d.value for d in at.dataframe if "action" in d.value.columns]
    assert built and built[0][["aoi", "step", "action"]].values.tolist() == [["conus", "index", "built"]]
    status = pipeline.status(Workspace(own_ws), aois=["conus"], checkpoint=own_ws / "checkpoints" / CHECKPOINT_NAME)
    assert (status["state"] == "built").all()


# ----------------------------------------------------------------------------------------- similarity
def _results(at: AppTest) -> pd.DataFrame:
    """The similarity results table (a static st.table) as a DataFrame."""
    return next(t.value for t in at.table if "score" in t.value.columns)


def test_similarity_pick_a_chip_shows_results_and_gallery(app_ws, deferred):
    at = open_page("pages/similarity.py")
    assert any("Click a chip" in t for t in texts(at.info))
    at.selectbox(key="sim_colour_task").set_value("cropland").run()
    assert_clean(at)
    picker = at.selectbox(key="sim_chip::conus")
    picker.set_value(picker.options[12]).run()
    assert_clean(at)
    res = _results(at)
    assert len(res) == 10 and res["score"].is_monotonic_decreasing
    assert picker.options[12] not in set(res["chip_id"])  # the query itself is not a result
    assert set(res["kind"]) == {"simulated"}
    assert "Top results" in texts(at.subheader)
    rows = gallery_rows(at)
    assert [len(r) for r in rows.values()] == [11, 11, 11]  # one row per modality: the query and 10 results
    assert all(r[0].startswith("query") for r in rows.values())
    buttons = {b.proto.label: b.proto.deferred_file_id for b in at.get("download_button")}
    assert set(buttons) == {"Download GeoJSON", "Download CSV"}
    # The files are built when the button is pressed: the results with their polygons, marked simulated.
    doc = json.loads(deferred[buttons["Download GeoJSON"]]())
    assert [f["properties"]["chip_id"] for f in doc["features"]] == res["chip_id"].tolist()
    assert all(f["properties"]["simulated"] for f in doc["features"])
    csv = pd.read_csv(io.BytesIO(deferred[buttons["Download CSV"]]()))
    assert csv["chip_id"].astype(str).tolist() == res["chip_id"].tolist() and "geometry_wkt" in csv

    # Cross-modal: query with SAR, search optical -> other scores.
    at.selectbox(key="sim_query_space").set_value("s1amp").run()
    at.selectbox(key="sim_target_space").set_value("s2rgb").run()
    assert_clean(at)
    cross = _results(at)
    assert not np.allclose(cross["score"].to_numpy(), res["score"].to_numpy())

    # All AOIs: the other AOI's chips compete.
    at.selectbox(key="sim_query_space").set_value("fused").run()
    at.selectbox(key="sim_target_space").set_value("fused").run()
    at.radio(key="sim_scope").set_value("all AOIs").run()
    at.slider(key="sim_k").set_value(40).run()
    assert_clean(at)
    assert set(_results(at)["aoi"]) <= {"conus", "south_america"} and len(_results(at)) == 40
    # ... and are placed on an overview map of every AOI (a pydeck map beside the score raster, not clickable).
    decks = at.get("deck_gl_json_chart")
    assert len(decks) == 1
    overview = {layer["id"]: layer for layer in json.loads(decks[0].proto.json)["layers"]}
    assert {r["aoi"] for r in overview[maps.OVERVIEW_AOI_LAYER]["data"]} == {"conus", "south_america"}
    assert len(overview[maps.OVERVIEW_POINT_LAYER]["data"]) == 40
    assert overview[maps.OVERVIEW_QUERY_LAYER]["data"][0]["id"] == picker.options[12]
    assert any("Results per AOI" in t and "Simulated AOIs." in t for t in texts(at.caption))

    # Refine with a negative: the query moves, the scores change.
    at.radio(key="sim_scope").set_value("this AOI").run()
    assert len(at.get("deck_gl_json_chart")) == 0  # the overview is for the all-AOIs scope only
    before = _results(at)
    neg = at.multiselect(key="sim_neg::conus")
    neg.select(neg.options[0]).run()
    assert_clean(at)
    after = _results(at)
    assert neg.options[0] not in {f"{a}:{c}" for a, c in zip(after["aoi"], after["chip_id"])}
    assert not np.allclose(after["score"].to_numpy()[:5], before["score"].to_numpy()[:5])


def click_score_map(at: AppTest, u: float, v: float) -> AppTest:
    """Send what a click on the score map sends: where it landed on the image (fractions across, down)."""
    maps_ = at.get("bidi_component")
    assert len(maps_) == 1, "the page should draw exactly one score map"
    states = at._tree.get_widget_states()
    w = states.widgets.add()
    w.id = f"$$STREAMLIT_INTERNAL_KEY_{maps_[0].proto.id}__events"
    w.json_trigger_value = json.dumps([{"event": "click", "value": {"u": u, "v": v}}])
    at._run(states)
    assert_clean(at)
    return at


def score_map_data(at: AppTest) -> dict:
    return json.loads(at.get("bidi_component")[0].proto.json)


def test_similarity_click_on_the_score_map_searches_from_the_chip_under_it(app_ws):
    from core.grid import ChipGrid

    store = Workspace(app_ws).open_store("conus")
    grid = ChipGrid.from_index(store.index, store.meta.crs)
    at = open_page("pages/similarity.py")
    data = score_map_data(at)
    assert (data["rows"], data["cols"]) == grid.shape == (10, 10)
    assert data["image"].startswith("data:image/png;base64,") and data["marks"] == []
    assert [t["text"] for t in data["legend"]["ticks"]][::4] == ["0", "1"] and "fraction" in data["legend"]["units"]
    click_score_map(at, 0.37, 0.81)  # column 3, row 8 of the raster
    lon, lat = grid.lonlat_at_fraction(0.37, 0.81)
    expected = grid.chip_at(lon, lat)
    assert expected == store.index["chip_id"].iloc[int(grid.positions[8, 3])]
    assert at.selectbox(key="sim_chip::conus").value == expected
    res = _results(at)
    assert len(res) == 10 and expected not in set(res["chip_id"])
    data = score_map_data(at)
    kinds = [m["kind"] for m in data["marks"]]
    assert kinds.count("query") == 1 and kinds.count("result") == 10
    query = next(m for m in data["marks"] if m["kind"] == "query")
    assert (query["r"], query["c"]) == (8, 3)
    assert data["legend"]["title"] == "similarity"
    # A negative is drawn too; a click outside the image changes nothing.
    neg = at.multiselect(key="sim_neg::conus")
    neg.select(neg.options[0]).run()
    assert [m["kind"] for m in score_map_data(at)["marks"]].count("negative") == 1
    click_score_map(at, 1.2, 0.5)
    assert at.selectbox(key="sim_chip::conus").value == expected
    click_score_map(at, 0.05, 0.05)
    assert at.selectbox(key="sim_chip::conus").value == store.index["chip_id"].iloc[int(grid.positions[0, 0])]


def test_mapping_applied_to_all_aois_counts_detections_per_aoi(own_ws):
    from data.labelsets import LabelSet, save_label_set

    ws = Workspace(own_ws)
    store = ws.open_store("conus")
    water = store.labels("water")
    ids = store.index["chip_id"].astype(str).to_numpy()
    order = np.argsort(water)
    labels = LabelSet("conus", "all_aois_check").add(ids[order[-4:]], "present").add(ids[order[:4]], "absent")
    save_label_set(ws, labels, store=store)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params.update({"aoi": "conus", "labels": "all_aois_check"})
    at.run()
    at.switch_page("pages/mapping.py").run()
    assert_clean(at)
    assert len(at.get("bidi_component")) == 1 and not at.get("deck_gl_json_chart")  # off by default: one map
    at.toggle(key="map_all_aois").set_value(True).run()
    assert_clean(at)
    table = next(d.value for d in at.dataframe if "detections" in d.value.columns)
    assert table["AOI"].tolist() == ["conus", "south_america"] and set(table["data"]) == {"simulated"}
    assert (table["chips mapped"] > 0).all()
    here = int(str(next(m.value for m in at.metric if m.label == "Detections")).split()[0])
    assert int(table.loc[table["AOI"] == "conus", "detections"].iloc[0]) == here  # the same map on its own AOI
    # One raster map per AOI (one pixel per chip), coloured by the prediction from the threshold up.
    overviews = [json.loads(c.proto.json) for c in at.get("bidi_component")[1:]]
    assert len(overviews) == 2 and not at.get("deck_gl_json_chart")
    for data, (_, row) in zip(overviews, table.iterrows()):
        levels = np.asarray(Image.open(io.BytesIO(base64.b64decode(data["image"].split(",", 1)[1]))))
        assert levels.size == 100 and int((levels < 254).sum()) == row["chips mapped"]  # 254: n/a, 255: no chip
        assert int(((levels > 0) & (levels < 254)).sum()) <= row["detections"]  # below the threshold: level 0
        assert data["legend"]["title"] == "prediction" and data["legend"]["ticks"][0]["text"] == "0.5"
    assert any("applied to every AOI" in t and "Simulated AOIs." in t for t in texts(at.caption))
    # A higher threshold: fewer (or as many) detections in every AOI.
    at.slider(key="map_threshold").set_value(0.9).run()
    assert_clean(at)
    high = next(d.value for d in at.dataframe if "detections" in d.value.columns)
    assert (high["detections"].to_numpy() <= table["detections"].to_numpy()).all()


def test_similarity_missing_modality_is_a_message_not_a_traceback(app_ws):
    store = Workspace(app_ws).open_store("conus")
    lacking = np.flatnonzero(~store.available("coh"))
    assert lacking.size, "the simulated AOI should have chips without coherence"
    at = open_page("pages/similarity.py")
    at.selectbox(key="sim_query_space").set_value("coh").run()
    at.selectbox(key="sim_chip::conus").set_value(store.index["chip_id"].iloc[int(lacking[0])]).run()
    assert not at.exception
    assert any("has no" in t and "Choose another" in t for t in texts(at.warning))


def test_empty_workspace_explains_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("EO_WORKSPACE", str(tmp_path / "empty"))
    at = open_page()
    assert any("holds no AOI yet" in t for t in texts(at.info))
    table = next(d.value for d in at.dataframe if "store" in d.value.columns)
    assert set(table["store"]) == {"⬜ missing"} and len(table) == 5  # the simulated demo AOIs, to be built
    for page in ("pages/similarity.py", "pages/explorer.py", "pages/probes.py", "pages/mapping.py"):
        at.switch_page(page).run()
        assert not at.exception and not at.error
        assert any("Build the simulated AOIs on the Home page" in t for t in texts(at.info))


def test_real_store_is_marked_real_and_missing_steps_are_explained(tmp_path, monkeypatch):
    from data.store import ChipStoreWriter
    from tests.conftest import make_batch, make_meta

    ws = Workspace(tmp_path / "real")
    meta = make_meta("my_scene", chip_size=8)
    meta.simulated, meta.title, meta.source = False, "My Sentinel-2 scene", "data.ingest (user GeoTIFFs)"
    with ChipStoreWriter(ws.store_path("my_scene"), meta) as w:
        w.append(*make_batch(meta, 0, 12))
    monkeypatch.setenv("EO_WORKSPACE", str(ws.root))
    at = open_page()
    table = at.dataframe[0].value
    assert table[["aoi", "kind"]].values.tolist() == [["my_scene", "real"]]
    assert at.selectbox(key="aoi").format_func("my_scene") == "My Sentinel-2 scene (real)"
    assert not any("Simulated" in t for t in texts(at.sidebar.warning))
    status = next(d.value for d in at.dataframe if "store" in d.value.columns)
    assert status.index.tolist() == ["my_scene"]  # a workspace of ingested data is not nagged about demo AOIs
    at.switch_page("pages/similarity.py").run()
    assert not at.exception and not at.error
    assert any("not built yet" in t or "checkpoint" in t.lower() for t in texts(at.info) + texts(at.warning))


# ----------------------------------------------------------------------------------------- ui helpers
def _index(n: int = 30) -> gpd.GeoDataFrame:
    rng = np.random.default_rng(0)
    return gpd.GeoDataFrame(
        {
            "chip_id": [f"t-{i:03d}" for i in range(n)],
            "water": rng.uniform(size=n).astype(np.float32),
            "builtup": np.full(n, np.nan, dtype=np.float32),
        },
        geometry=[box(10 + (i % 6) * 0.05, 45 + (i // 6) * 0.05, 10.05 + (i % 6) * 0.05, 45.05 + (i // 6) * 0.05) for i in range(n)],
        crs=4326,
    )


def test_fast_layer_data_matches_naive_records():
    index = _index()
    values = np.linspace(-0.2, 0.9, len(index))
    values[4] = np.nan
    scale = maps.color_scale("similarity", *maps.robust_range(values))
    fast = json.loads(maps.chip_data_json(maps.ChipGeometry.from_index(index), values, scale))
    naive = maps.naive_chip_records(index, values, scale)
    assert len(fast) == len(naive) == len(index)
    for f, n in zip(fast, naive):
        assert f["id"] == n["id"] and f["c"] == n["c"] and f["t"] == n["t"]
        # The fast path drops the closing vertex (deck.gl closes rings).
        np.testing.assert_allclose(f["p"], n["p"][:-1], atol=5.1e-5)  # 4 decimals
    assert fast[4]["v"] == "n/a" and fast[4]["c"] == list(maps.NAN_RGBA)
    assert fast[0]["t"].startswith("water ") and "built" not in fast[0]["t"]


def test_deck_json_is_valid_and_has_no_basemap():
    index = _index()
    geom = maps.ChipGeometry.from_index(index)
    deck = maps.chip_deck(
        geom, np.arange(len(index), dtype=float), maps.color_scale("water"), value_name="water",
        highlights=maps.outline_records(geom, [0, 3], maps.QUERY_RGBA, ["query", "#1"]),
    )
    spec = json.loads(deck.to_json())
    assert spec["mapStyle"] == "__MAP_STYLE__" and "mapProvider" not in spec
    layers = {layer["id"]: layer for layer in spec["layers"]}
    assert len(layers[maps.CHIP_LAYER]["data"]) == len(index)
    assert [r["id"] for r in layers[maps.HIGHLIGHT_LAYER]["data"]] == ["t-000", "t-003"]
    assert layers[maps.CHIP_LAYER]["pickable"] is True
    # Deck stays reusable: serialising twice gives the same spec.
    assert json.loads(deck.to_json()) == spec


def test_overview_deck_outlines_every_aoi_and_colours_the_points():
    here = maps.ChipGeometry.from_index(_index())
    far = _index(12)
    far["chip_id"] = [f"f-{i:03d}" for i in range(12)]
    far = far.set_geometry(far.geometry.translate(-60, -50))
    there = maps.ChipGeometry.from_index(far)
    points = pd.DataFrame({"aoi": ["a", "b", "b"], "chip_id": ["t-002", "f-001", "f-005"], "position": [2, 1, 5],
                           "value": [0.9, 0.2, np.nan]})
    scale = maps.color_scale("similarity", 0.0, 1.0)
    deck = maps.overview_deck({"a": here, "b": there}, points, scale, value_name="score", query=("a", 0))
    spec = json.loads(deck.to_json())
    assert spec["mapStyle"] == "__MAP_STYLE__" and "mapProvider" not in spec  # no basemap, nothing fetched
    layers = {layer["id"]: layer for layer in spec["layers"]}
    assert [r["aoi"] for r in layers[maps.OVERVIEW_AOI_LAYER]["data"]] == ["a", "b"]
    dots = {r["id"]: r for r in layers[maps.OVERVIEW_POINT_LAYER]["data"]}
    assert set(dots) == {"t-002", "f-001", "f-005"}
    np.testing.assert_allclose(dots["f-001"]["p"], there.centroids[1], atol=1e-4)
    assert dots["t-002"]["c"] == scale.rgba(np.array([0.9]))[0].tolist() and dots["t-002"]["v"] == "0.900"
    assert dots["f-005"]["v"] == "n/a" and dots["f-005"]["c"] == list(maps.NAN_RGBA)
    assert layers[maps.OVERVIEW_QUERY_LAYER]["data"][0]["id"] == "t-000"
    assert {"{aoi}", "{id}", "{v}"} <= set(re.findall(r"\{\w+\}", deck._tooltip["text"]))  # st.pydeck_chart sends it
    # The view holds both AOIs: its centre lies between them.
    assert -50 < spec["initialViewState"]["longitude"] < 10
    # Beyond max_points only the highest values are drawn.
    top = json.loads(maps.overview_deck({"a": here, "b": there}, points, scale, value_name="score",
                                        max_points=1).to_json())
    assert [r["id"] for layer in top["layers"] if layer["id"] == maps.OVERVIEW_POINT_LAYER
            for r in layer["data"]] == ["t-002"]


def test_clicked_chip_reads_the_selection():
    event = {"selection": {"indices": {maps.CHIP_LAYER: [2]}, "objects": {maps.CHIP_LAYER: [{"id": "t-002"}]}}}
    assert maps.clicked_chip(event) == "t-002"
    assert maps.clicked_chip({"selection": {"indices": {}, "objects": {}}}) is None
    assert maps.clicked_chip(None) is None


def test_errors_are_explained_without_tracebacks():
    level, text = explain(UserError("No embeddings yet.", "Build them on the Home page."))
    assert level == "warning" and text == "No embeddings yet. Build them on the Home page."
    level, text = explain(RuntimeError("boom"))
    assert level == "error" and "server log" in text and "Traceback" not in text
    assert explain(FileNotFoundError("x.npy"))[0] == "info"


# ----------------------------------------------------------------------------------------- explorer, probes
def test_explorer_projects_and_colours(own_ws):
    at = open_page("pages/explorer.py")
    charts_ = at.get("vega_lite_chart")
    assert charts_, "no UMAP scatter drawn"
    spec = json.loads(charts_[0].proto.spec)
    assert "vegetation" in json.dumps(spec["encoding"]["color"]) or spec["encoding"]["color"]
    at.selectbox(key="exp_color").set_value("modality availability").run()
    assert_clean(at)
    spec2 = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert spec2["encoding"]["color"] != spec["encoding"]["color"]
    proj = list(Workspace(own_ws).artifact_dir("projections").rglob("*"))
    assert proj, "the UMAP projection is not stored in the workspace"

    # All AOIs in one UMAP, coloured by AOI: both AOIs' chips are drawn.
    at.radio(key="exp_scope").set_value("all AOIs").run()
    at.selectbox(key="exp_color").set_value("AOI").run()
    assert_clean(at)
    spec3 = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert "AOI" in json.dumps(spec3["encoding"]["color"])
    assert (Workspace(own_ws).artifact_dir("projections", "all-aois") / CHECKPOINT_NAME / "full" / "fused.npy").is_file()
    n_joint = len(np.load(Workspace(own_ws).artifact_dir("projections", "all-aois") / CHECKPOINT_NAME / "full" / "fused.npy"))
    assert n_joint == sum(len(Workspace(own_ws).open_store(a)) for a in ("conus", "south_america"))


def _metric_values(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_probes_budget_and_missing_modality_change_the_scores(own_ws):
    at = open_page("pages/probes.py")
    before = _metric_values(at)
    assert "R²" in before and "±" in before["R²"]
    at.select_slider(key="probe_budget").set_value(10).run()
    assert_clean(at)
    small = _metric_values(at)
    assert small["R²"] != before["R²"]
    at.checkbox(key="probe_mod_s2rgb").uncheck().run()
    assert_clean(at)
    dropped = _metric_values(at)
    assert dropped["R²"] != small["R²"]
    assert len(at.get("vega_lite_chart")) == 2, "learning curve / predicted-vs-true charts missing"

    # A missing channel needs its own embeddings: the page offers to build them, then scores change.
    at.checkbox(key="probe_mod_s2rgb").check().run()
    at.checkbox(key="probe_ch_s1amp_VH").uncheck().run()
    assert_clean(at)
    build = at.button(key="probe_build_drop-s1amp-VH")
    build.click().run()
    assert_clean(at)
    assert Workspace(own_ws).artifact_dir("embeddings", "conus", CHECKPOINT_NAME, "drop-s1amp-VH").is_dir()
    assert _metric_values(at)["R²"] != small["R²"]
    assert Workspace(own_ws).artifact_dir("embeddings", "conus", CHECKPOINT_NAME, "random-init").is_dir()


def test_probes_logistic_is_shown_as_a_presence_probability(app_ws):
    at = open_page("pages/probes.py")
    at.selectbox(key="probe_estimator").set_value("logistic").run()
    assert_clean(at)
    assert "F1" in _metric_values(at)
    assert any("P(vegetation > 0.05)" in t and "over the AOI" in t for t in texts(at.markdown))
    at.toggle(key="probe_map_error").set_value(True).run()
    assert_clean(at)


def test_unreadable_store_is_neither_real_nor_simulated(tmp_path, monkeypatch):
    from tests.conftest import make_batch, make_meta
    from data.store import ChipStoreWriter

    ws = Workspace(tmp_path / "broken")
    meta = make_meta("odd", chip_size=8)
    with ChipStoreWriter(ws.store_path("odd"), meta) as w:
        w.append(*make_batch(meta, 0, 4))
    (ws.store_path("odd") / "store.json").write_text("{not json")
    monkeypatch.setenv("EO_WORKSPACE", str(ws.root))
    at = open_page()
    table = at.dataframe[0].value
    assert table["kind"].tolist() == ["unknown"]


def test_store_and_checkpoint_strings_show_literally(tmp_path, monkeypatch):
    """Markdown/HTML in a store title or source and in checkpoint fields is shown as typed, never rendered."""
    from data.store import ChipStoreWriter
    from tests.conftest import make_batch, make_meta

    evil = "**bold** [x](javascript:alert(1)) <b>html</b>"
    ws = Workspace(tmp_path / "evil")
    meta = make_meta("evil_scene", chip_size=8)
    meta.simulated, meta.title, meta.source = False, evil, evil
    with ChipStoreWriter(ws.store_path("evil_scene"), meta) as w:
        w.append(*make_batch(meta, 0, 12))
    cfg = ModelConfig(name=evil, chip_size=32, patch_size=8, width=32, depth=1, heads=2, embed_dim=32)
    save_checkpoint(ws.root / "checkpoints" / CHECKPOINT_NAME, MultiModalViT(cfg), cfg,
                    meta={"training_data": {"source": evil, "aois": [evil], "seeds": [1]}})
    monkeypatch.setenv("EO_WORKSPACE", str(ws.root))
    monkeypatch.setenv("EO_CHECKPOINT", CHECKPOINT_NAME)
    at = open_page()
    table = at.dataframe[0].value
    assert table["title"].tolist() == [evil] and table["source"].tolist() == [evil]  # a table shows text as is
    shown = texts(at.markdown) + texts(at.caption) + texts(at.sidebar.markdown) + texts(at.sidebar.caption)
    card = [t for t in shown if "bold" in t]
    assert len(card) >= 2, "the model card should show the checkpoint's name and training data source"
    for t in card:  # every Markdown character of the untrusted string is escaped
        assert "**bold**" not in t and "](javascript" not in t and "<b>" not in t
        assert r"\*\*bold\*\* \[x\]\(javascript\:alert\(1\)\) \<b\>html\<" in t


def spy_progress(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the text of every st.progress bar (created or updated) while the real bars are drawn."""
    import streamlit as st

    seen: list[str] = []
    real = st.progress

    class Bar:
        """The real bar, recording every text it is given."""

        def __init__(self, value, text):
            seen.append(text or "")
            self._bar = real(value, text=text)

        def progress(self, value, text=None):
            seen.append(text or "")
            return self._bar.progress(value, text=text)

        def empty(self):
            return self._bar.empty()

    monkeypatch.setattr(st, "progress", lambda value=0, text=None: Bar(value, text))
    return seen


def test_probes_progress_counts_fits_and_repeats_and_cached_reruns_agree(own_ws, monkeypatch):
    """The learning curves count estimator fits and the probe counts its repeats while they are fitted; a rerun
    from the cache, and more repeats (only the new draws fitted), give the numbers core.probes gives."""
    seen = spy_progress(monkeypatch)
    at = open_page("pages/probes.py")
    # 100 chips: budgets 5, 10, 25, 50 x 5 repeats + all labels = 21 fits per curve, 3 curves
    curves = [t for t in seen if t.startswith("Learning curves:")]
    assert curves[0].startswith("Learning curves: 0 of 63 fits"), curves
    assert any(re.match(r"Learning curves: \d+ of 63 fits \(budget 25 x 5 repeats, random-init embeddings\)", t)
               for t in curves), curves
    assert any("hand-crafted features" in t for t in curves) and "Learning curves: 63 of 63 fits" in curves[-1]
    probe = [t for t in seen if t.startswith("Probe (ridge, 50 labels)")]
    assert any("2 of 5 repeats fitted, now repeat 3" in t for t in probe), probe
    assert not at.get("progress") or all(not p.proto.text for p in at.get("progress"))  # bars gone when done
    first = _metric_values(at)

    seen.clear()
    at.run()  # everything is cached now: the same numbers
    assert_clean(at)
    assert _metric_values(at) == first

    at.number_input(key="probe_repeats").set_value(8).run()
    assert_clean(at)
    assert any("5 of 8 repeats fitted, now repeat 6" in t for t in seen), seen
    eight = _metric_values(at)
    assert eight["R²"] != first["R²"]

    # The page's numbers are core.probes.fit_probe's on the same inputs (features, labels, blocked split).
    from core.probes import fit_probe

    rep, y, pool, test = _probe_inputs(own_ws, "conus", "fused")
    ref = fit_probe(rep.X, y, task="vegetation", budget=50, repeats=8, seed=0, pool=pool, test=test, valid=rep.valid)
    mean, std = ref.metrics["r2"]
    assert eight["R²"] == f"{mean:.3f} ± {std:.3f}"


def _probe_inputs(root: Path, aoi: str, representation: str):
    """What the probes page fits on for the vegetation task: (representation, labels, pool, test) as the page splits them."""
    from core.probes import probe_split
    from core.representations import load_representation

    ws = Workspace(root)
    rep = load_representation(ws, aoi, CHECKPOINT_NAME, representation)
    chips = ws.open_store(aoi)
    y = chips.labels("vegetation").astype(np.float64)
    pool, test, _ = probe_split(chips.index["row"].to_numpy(), chips.index["col"].to_numpy(),
                                np.isfinite(y) & rep.valid, seed=0)
    return rep, y, pool, test


def test_cached_probe_and_curve_equal_core_probes(app_ws):
    """ui.cache.probe (cached per draw) and ui.cache.curve (per budget) return core.probes' results exactly."""
    from core.probes import fit_probe, learning_curve
    from ui import cache

    rep, y, pool, test = _probe_inputs(app_ws, "south_america", "random-init")
    for estimator in ("ridge", "knn", "logistic"):
        calls: list[tuple[int, int, str]] = []
        got = cache.probe(str(app_ws), "south_america", CHECKPOINT_NAME, task="vegetation", estimator=estimator,
                          budget=10, repeats=4, representation="random-init",
                          progress=lambda *a: calls.append(a))
        ref = fit_probe(rep.X, y, task="vegetation", estimator=estimator, budget=10, repeats=4, seed=0, pool=pool,
                        test=test, valid=rep.valid)
        assert [c[:2] for c in calls] == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
        assert got["metrics"] == ref.metrics
        np.testing.assert_array_equal(got["all_predictions"], ref.all_predictions)
        np.testing.assert_array_equal(got["train_idx"], ref.train_idx)
        table = cache.curve(str(app_ws), "south_america", CHECKPOINT_NAME, task="vegetation", estimator=estimator,
                            budgets=(5, 25, 500), repeats=3, representation="random-init")
        ref_table = learning_curve(rep.X, y, task="vegetation", estimator=estimator, budgets=(5, 25, 500), repeats=3,
                                   seed=0, pool=pool, test=test, valid=rep.valid)
        pd.testing.assert_frame_equal(table, ref_table)
        assert table.attrs["skipped"] == [500]


def select_in_umap(at: AppTest, chip_ids: list[str]) -> AppTest:
    """Send what clicking points in the explorer's UMAP sends: the selected points' fields."""
    from ui import charts

    chart = at.get("vega_lite_chart")[0]
    states = at._tree.get_widget_states()
    w = states.widgets.add()
    w.id = chart.proto.id
    w.string_value = json.dumps({"selection": {charts.POINT_SELECTION: [{"chip_id": c} for c in chip_ids]}})
    at._run(states)
    assert_clean(at)
    return at


def test_explorer_map_is_a_raster_with_the_selected_chips_marked(app_ws):
    """The explorer's map is the score raster (one pixel per chip, like the probes map), the UMAP's selected
    chips marked on it; nothing is drawn as polygons."""
    at = open_page("pages/explorer.py")
    assert not at.get("deck_gl_json_chart"), "the explorer map should be a raster, not a pydeck polygon map"
    data = score_map_data(at)
    store = Workspace(app_ws).open_store("conus")
    assert (data["rows"], data["cols"]) == (10, 10) and data["marks"] == []
    assert data["legend"]["units"] == "share of the chip" and "vegetation" in data["legend"]["title"]
    picked = store.index["chip_id"].tolist()[:3]
    select_in_umap(at, picked)
    data = score_map_data(at)
    assert [m["kind"] for m in data["marks"]] == ["selected"] * 3
    want = {(int(r) - data["row0"], int(c) - data["col0"])
            for r, c in store.index.set_index("chip_id").loc[picked, ["row", "col"]].itertuples(index=False)}
    assert {(m["r"], m["c"]) for m in data["marks"]} == want
    assert any("Selected chips: 3" in t for t in texts(at.subheader))


def test_explorer_all_aois_umap_counts_progress_and_samples_large_sets(own_ws, monkeypatch):
    """All AOIs: reading the embeddings is counted per AOI and, above the fit sample (here shrunk to 60 chips),
    UMAP is fitted on a sample and the other chips placed with transform, the bar counting them; stored with
    the method and sample size, and said in a caption."""
    from core import project

    monkeypatch.setattr(project, "UMAP_FIT_SAMPLE", 60)
    monkeypatch.setattr(project, "TRANSFORM_BATCH", 50)
    seen = spy_progress(monkeypatch)
    at = open_page("pages/explorer.py")
    assert any(t.startswith("UMAP of conus (fused): placed 60 of 100 chips") for t in seen), seen
    seen.clear()
    at.radio(key="exp_scope").set_value("all AOIs").run()
    assert_clean(at)
    assert "Reading embeddings: 1 of 2 AOIs, now south_america" in seen, seen
    placed = [t for t in seen if t.startswith("UMAP of 2 AOIs (fused): placed")]
    assert placed[:3] == [f"UMAP of 2 AOIs (fused): placed {n} of 200 chips" for n in (60, 110, 160)], seen
    assert placed[-1] == "UMAP of 2 AOIs (fused): placed 200 of 200 chips"
    assert any("UMAP fitted on a random 60 of the 200 chips" in t for t in texts(at.caption))
    folder = Workspace(own_ws).artifact_dir("projections", "all-aois") / CHECKPOINT_NAME / "full"
    entry = json.loads((folder / "meta.json").read_text())["fused"]
    assert entry["params"]["fit_sample"] == 60 and entry["method"] == "fit on a sample + transform"
    xy = np.load(folder / "fused.npy")
    assert xy.shape == (200, 2) and np.isfinite(xy).sum() > 150
