"""The app in a real browser: Debian's chromium driven by Playwright clicks a chip on the deck.gl map.

Starts `streamlit run app.py` on a free port against the small test workspace, opens the similarity
page, clicks the map canvas and waits for the results gallery. Screenshots go to tests/artifacts/
(git-ignored). Needs /usr/bin/chromium (`apt-get install -y chromium`); never `playwright install`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.browser import ARTIFACTS, launch_browser, serve_app
from tests.test_app import CHECKPOINT_NAME, build_app_workspace


@pytest.fixture(scope="module")
def app_workspace(tmp_path_factory) -> Path:
    """The same small workspace as tests/test_app.py (2 simulated AOIs, tiny untrained checkpoint)."""
    root, _ = build_app_workspace(tmp_path_factory.mktemp("browserws"))
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


def test_click_a_chip_shows_similar_chips(server: str, browser) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/", wait_until="domcontentloaded")
    page.get_by_text("Pipeline").first.wait_for(timeout=90_000)
    page.wait_for_timeout(1_000)
    page.screenshot(path=str(ARTIFACTS / "home.png"), full_page=True)

    page.goto(server + "/similarity", wait_until="domcontentloaded")
    canvas = page.locator("canvas").first
    canvas.wait_for(state="visible", timeout=90_000)
    page.get_by_text("Click a chip on the map").first.wait_for(timeout=60_000)
    page.wait_for_timeout(2_000)  # let deck.gl draw the polygons once
    assert page.get_by_text("Simulated data").first.is_visible(), "simulated AOI not marked as simulated"
    page.screenshot(path=str(ARTIFACTS / "similarity-before-click.png"), full_page=True)

    box = canvas.bounding_box()
    assert box and box["width"] > 200 and box["height"] > 200, f"map canvas too small: {box}"
    gallery = page.get_by_text("Top results").first
    # deck.gl picks from an offscreen render that SwiftShader may finish late on a busy machine:
    # click again (on neighbouring chips) until the click registers, at most 5 times.
    for attempt, (fx, fy) in enumerate([(0.5, 0.5), (0.45, 0.55), (0.55, 0.45), (0.4, 0.4), (0.6, 0.6)]):
        page.mouse.click(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
        try:
            gallery.wait_for(timeout=25_000)
            break
        except PlaywrightTimeout:
            page.screenshot(path=str(ARTIFACTS / f"similarity-click-{attempt}-not-registered.png"))
    gallery.wait_for(timeout=30_000)
    page.get_by_text("Sentinel-2 RGB").first.wait_for(timeout=30_000)
    page.wait_for_timeout(1_500)
    page.screenshot(path=str(ARTIFACTS / "similarity-after-click.png"), full_page=True)
    page.get_by_text("Sentinel-2 RGB").first.scroll_into_view_if_needed()
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "similarity-results-gallery.png"))
    thumbs = page.locator("[data-testid='stImage'] img, [data-testid='stImageContainer'] img")
    assert thumbs.count() >= 3, "the results gallery shows no thumbnails"
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
