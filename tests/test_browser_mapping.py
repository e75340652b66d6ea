"""Label & map in a real browser, on a REAL scene with no label raster: click chips, train, see the detections.

A Sen1Floods11 chip (S1 + S2, real, no coherence; the page ignores its hand labels) is ingested, embedded with the
shipped checkpoint and served by `streamlit run app.py`; Debian's chromium (Playwright, SwiftShader WebGL)
creates a label set, clicks chips on the raster map (one pixel per chip) with the "present" and "absent"
brushes, and waits for the trained map's detection count. Every click must label the chip under it the
FIRST time (no retry). Screenshots: tests/artifacts/mapping-*.png (git-ignored).
"""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from core.checkpoint import SHIPPED_CHECKPOINT, read_config
from core.grid import ChipGrid
from core.pipeline import build
from data.labelsets import list_label_sets, load_label_set
from data.readers import ingest_sen1floods11
from data.workspace import Workspace
from tests.browser import ARTIFACTS, launch_browser, serve_app
from tests.test_real_flow import FLOODS

AOI = "flood_real"
SET = "flooded"


@pytest.fixture(scope="module")
def real_ws(tmp_path_factory) -> Workspace:
    """Only the real Sen1Floods11 scene: the page never reads its hand water labels (an analyst's scene, no label raster)."""
    ws = Workspace(tmp_path_factory.mktemp("realmapws"))
    chip = read_config(SHIPPED_CHECKPOINT).chip_size
    ingest_sen1floods11(FLOODS, AOI, ws.store_path(AOI), chip_size=chip, progress=False)
    build(ws, aois=[AOI], steps=["store", "embeddings", "index"], progress=False)
    store = ws.open_store(AOI)
    assert not store.meta.simulated and len(store) >= 16
    return ws


@pytest.fixture(scope="module")
def server(real_ws: Workspace):
    """streamlit run app.py on a free port, on the real workspace and the shipped checkpoint."""
    with serve_app(real_ws.root, SHIPPED_CHECKPOINT.name, "streamlit-mapping-server.log", OMP_NUM_THREADS="1") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium (WebGL through SwiftShader)."""
    with launch_browser() as b:
        yield b


def _counts(ws: Workspace) -> dict[str, int]:
    return load_label_set(ws, AOI, SET).counts() if SET in list_label_sets(ws, AOI) else {}


def _settle(page: Page) -> None:
    """Wait until Streamlit has finished running the script (its status widget is gone)."""
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)
    page.wait_for_timeout(500)


def _click_labels(page: Page, ws: Workspace, grid: ChipGrid, cls: str, fx: float, fy: float) -> None:
    """Click the map image once at fractions (fx across, fy down): the chip under the click must be labelled `cls`."""
    _settle(page)
    image = page.locator(".eo-img")
    image.evaluate("e => e.scrollIntoView({block: 'center'})")  # the whole map in the viewport
    page.wait_for_timeout(300)
    box = image.bounding_box()
    assert box and box["width"] > 200 and box["height"] > 200, f"map image too small: {box}"
    chip = grid.chip_at(*grid.lonlat_at_fraction(fx, fy))
    assert chip is not None, f"no chip at {fx}, {fy}"
    page.mouse.click(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
    deadline = time.monotonic() + 20  # waiting for the server's answer, not clicking again
    while time.monotonic() < deadline:
        if SET in list_label_sets(ws, AOI) and load_label_set(ws, AOI, SET).label_of(chip) == cls:
            break
        page.wait_for_timeout(200)
    else:
        page.screenshot(path=str(ARTIFACTS / f"mapping-click-{cls}-not-registered.png"), full_page=True)
        raise AssertionError(f"a click on the map did not label chip {chip} {cls!r} the first time")
    # The page redraws the map with the new label marked.
    n = len(load_label_set(ws, AOI, SET))
    while time.monotonic() < deadline + 20 and page.locator(".eo-mark.label").count() != n:
        page.wait_for_timeout(200)
    assert page.locator(".eo-mark.label").count() == n, "the new label is not marked on the map"


def test_label_a_real_scene_on_the_map_and_train(server: str, browser, real_ws: Workspace) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/", wait_until="domcontentloaded")
    page.get_by_text("Pipeline").first.wait_for(timeout=90_000)
    page.goto(server + "/mapping", wait_until="domcontentloaded")
    page.get_by_text("No label set yet").first.wait_for(timeout=90_000)

    # Create a label set (saved in the workspace).
    page.get_by_label("New label set (present / absent)").fill(SET)
    page.get_by_role("button", name="Create").click()
    page.get_by_text("Label at least one present and one absent chip").first.wait_for(timeout=60_000)
    assert list_label_sets(real_ws, AOI) == [SET]
    assert not page.get_by_text("Simulated AOI").count(), "a real scene must not be called simulated"
    page.locator(".eo-img").wait_for(state="visible", timeout=60_000)  # the raster map, in the component's shadow root
    page.wait_for_timeout(1_000)
    page.screenshot(path=str(ARTIFACTS / "mapping-before-labels.png"), full_page=True)

    # The "present" brush is on: click two chips; then the "absent" brush and two chips far from them.
    store = real_ws.open_store(AOI)
    grid = ChipGrid.from_index(store.index, store.meta.crs)
    _click_labels(page, real_ws, grid, "present", 0.2, 0.2)
    _click_labels(page, real_ws, grid, "present", 0.35, 0.2)
    page.locator("[data-testid='stRadio']").first.get_by_text("absent", exact=True).click()
    _click_labels(page, real_ws, grid, "absent", 0.8, 0.8)
    _click_labels(page, real_ws, grid, "absent", 0.65, 0.8)
    assert _counts(real_ws) == {"absent": 2, "present": 2}
    assert page.locator(".eo-mark.label").count() == 4  # the labelled chips are marked on the map

    # Trained on every label change: the detection count is shown, the map is recoloured by prediction.
    try:
        page.get_by_text("chips detected of").first.wait_for(timeout=60_000)
    except PlaywrightTimeout:
        page.screenshot(path=str(ARTIFACTS / "mapping-no-count.png"), full_page=True)
        raise
    page.wait_for_timeout(2_000)
    page.screenshot(path=str(ARTIFACTS / "mapping-trained.png"), full_page=True)
    page.get_by_text("Label these next").first.scroll_into_view_if_needed()
    page.wait_for_timeout(1_000)
    page.screenshot(path=str(ARTIFACTS / "mapping-suggestions.png"))
    assert page.get_by_role("button", name="✓ present").count() >= 6, "no accept buttons under the suggestions"
    assert "mapping" in page.url and f"labels={SET}" in page.url, page.url  # the view is in the URL
    assert not page.get_by_text("Traceback").count(), "a traceback reached the page"
    assert not errors, f"JavaScript errors: {errors}"
