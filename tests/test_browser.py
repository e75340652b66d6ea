"""The app in a real browser: Debian's chromium driven by Playwright clicks chips on the similarity map.

Starts `streamlit run app.py` on a free port against a test workspace whose first AOI holds 2,025 chips
(the size at which deck.gl polygon picking dropped clicks under SwiftShader), opens the similarity page,
clicks the score map and checks that every click searches from the chip under it. Screenshots go to
tests/artifacts/ (git-ignored). Needs /usr/bin/chromium (`apt-get install -y chromium`); never
`playwright install`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.grid import ChipGrid
from data.workspace import Workspace
from tests.browser import ARTIFACTS, launch_browser, serve_app
from tests.test_app import CHECKPOINT_NAME, build_app_workspace

MAP_GRID = (45, 45, 16)
"""conus: 45 x 45 = 2,025 chips of 16 px (small chips keep the build fast; the map's size is what matters)."""


@pytest.fixture(scope="module")
def app_workspace(tmp_path_factory) -> Path:
    """The workspace of tests/test_app.py (2 simulated AOIs, tiny untrained checkpoint), conus at 2,025 chips."""
    root, _ = build_app_workspace(tmp_path_factory.mktemp("browserws"), {"conus": MAP_GRID})
    return root


@pytest.fixture(scope="module")
def server(app_workspace: Path):
    """A streamlit server on a free port serving app.py on the test workspace."""
    with serve_app(app_workspace, CHECKPOINT_NAME, "streamlit-server.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    """Headless Debian chromium (WebGL through SwiftShader)."""
    with launch_browser() as b:
        yield b


def test_click_a_chip_shows_similar_chips(server: str, browser, app_workspace: Path) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/", wait_until="domcontentloaded")
    page.get_by_text("Pipeline").first.wait_for(timeout=90_000)
    page.wait_for_timeout(1_000)
    page.screenshot(path=str(ARTIFACTS / "home.png"), full_page=True)

    page.goto(server + "/similarity", wait_until="domcontentloaded")
    image = page.locator(".eo-img")  # the score map (one pixel per chip), inside the component's shadow root
    image.wait_for(state="visible", timeout=90_000)
    page.get_by_text("Click a chip on the map").first.wait_for(timeout=60_000)
    assert page.get_by_text("Simulated data").first.is_visible(), "simulated AOI not marked as simulated"
    assert page.get_by_text("2,025 chips").first.is_visible()
    page.screenshot(path=str(ARTIFACTS / "similarity-before-click.png"), full_page=True)

    store = Workspace(app_workspace).open_store("conus")
    grid = ChipGrid.from_index(store.index, store.meta.crs)
    box = image.bounding_box()
    assert box and box["width"] > 200 and box["height"] > 200, f"map image too small: {box}"
    # Every click must register the first time (no retries): three chips, each the query in turn.
    for fx, fy in [(0.5, 0.5), (0.13, 0.77), (0.91, 0.08)]:
        assert image.bounding_box() == box, "the map moved between clicks"
        page.mouse.click(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
        expected = grid.chip_at(*grid.lonlat_at_fraction(fx, fy))
        assert expected is not None
        page.get_by_text(f"Query chip {expected}").first.wait_for(timeout=30_000)
        page.locator(".eo-mark.query").first.wait_for(timeout=10_000)
    gallery = page.get_by_text("Top results").first
    gallery.wait_for(timeout=30_000)
    page.get_by_text("Sentinel-2 RGB").first.wait_for(timeout=30_000)
    page.wait_for_timeout(1_500)
    page.screenshot(path=str(ARTIFACTS / "similarity-after-click.png"), full_page=True)
    page.get_by_text("Sentinel-2 RGB").first.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "similarity-results-gallery.png"))
    thumbs = page.locator(".eo-gallery img")
    assert thumbs.count() >= 3, "the results gallery shows no thumbnails"
    decoded = thumbs.evaluate_all("imgs => imgs.filter(i => i.complete && i.naturalWidth > 0).length")
    assert decoded == thumbs.count(), f"only {decoded} of {thumbs.count()} thumbnails were drawn"
    assert not page.get_by_text("Traceback").count(), "a traceback reached the page"

    # The rest of the main flow: a live probe, then the embedding explorer.
    page.goto(server + "/probes", wait_until="domcontentloaded")
    page.get_by_text("of full-label score").first.wait_for(timeout=90_000)
    page.locator("[data-testid='stVegaLiteChart']").first.wait_for(timeout=90_000)  # the learning curve
    page.wait_for_timeout(1_500)
    page.screenshot(path=str(ARTIFACTS / "probes.png"), full_page=True)
    page.goto(server + "/explorer", wait_until="domcontentloaded")
    page.locator("[data-testid='stVegaLiteChart']").first.wait_for(timeout=120_000)  # the UMAP scatter
    page.wait_for_timeout(1_500)
    page.screenshot(path=str(ARTIFACTS / "explorer.png"), full_page=True)
    assert not page.get_by_text("Traceback").count(), "a traceback reached the page"
    assert not errors, f"JavaScript errors: {errors}"
