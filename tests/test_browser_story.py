"""Story mode in a real browser: save a view from the sidebar, play a two-step story full-screen, and take
screenshots of the home page, each story step and each fixed legend or plot.

`streamlit run app.py` serves the app tests' workspace (2 simulated AOIs, an untrained tiny checkpoint, everything
built); Debian's chromium (Playwright, SwiftShader WebGL) drives it. Screenshots land in tests/artifacts/
(git-ignored): home.png, story-step1.png, story-step2.png, probes-regression.png, probes-logistic.png,
probes-error-map.png, explorer-zero-selected.png, mapping-legend.png.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Page

from data.labelsets import LabelSet, save_label_set
from data.stories import StoryStep, load_story, new_story, save_story
from data.workspace import Workspace
from tests.browser import ARTIFACTS, launch_browser, serve_app
from tests.test_app import CHECKPOINT_NAME, build_app_workspace

WAIT = 90_000


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    """The app tests' workspace, with a two-step story and a small label set on conus."""
    root, _ = build_app_workspace(tmp_path_factory.mktemp("storybrowser"))
    w = Workspace(root)
    story = new_story(w, "tour", "A two-minute tour")
    story = story.with_step(StoryStep("pages/probes.py", {"aoi": "conus", "task": "vegetation", "est": "logistic",
                                                          "budget": "25"},
                                      "Twenty-five labels", "A presence classifier on 25 labelled chips: is it calibrated?"))
    story = story.with_step(StoryStep("pages/explorer.py", {"aoi": "south_america", "color": "vegetation"},
                                      "How the model sees the Amazon", "Chips laid out by their embeddings."))
    save_story(w, story)
    store = w.open_store("conus")
    ids = store.index["chip_id"].astype(str).tolist()
    labels = LabelSet("conus", "fields").add(ids[:3], "present").add(ids[50:53], "absent")
    save_label_set(w, labels, store=store)
    return w


@pytest.fixture(scope="module")
def server(ws: Workspace):
    with serve_app(ws.root, CHECKPOINT_NAME, "streamlit-story-server.log", OMP_NUM_THREADS="1") as url:
        yield url


@pytest.fixture(scope="module")
def page(server):
    with launch_browser() as b:
        p = b.new_page(viewport={"width": 1400, "height": 1000})
        yield p
        p.close()


def _settle(page: Page, ms: int = 1_500) -> None:
    """Wait until Streamlit has finished running the script, then a little for charts and deck.gl to draw."""
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=WAIT)
    page.wait_for_timeout(ms)


def _no_traceback(page: Page) -> None:
    assert not page.get_by_text("Traceback").count(), "a traceback reached the page"
    assert not page.locator("[data-testid='stException']").count()


def test_home_page_leads_with_what_is_simulated(server, page):
    page.goto(server + "/", wait_until="domcontentloaded")
    page.get_by_text("Start here").first.wait_for(timeout=WAIT)
    page.get_by_role("link", name="Open Few-shot probes").wait_for(timeout=WAIT)
    _settle(page, 4_000)  # the AOI table is drawn on a canvas after the script ends
    page.screenshot(path=str(ARTIFACTS / "home.png"), full_page=True)
    banner = page.locator("[data-testid='stMain'] [data-testid='stAlert']").first
    assert "Simulated:" in banner.inner_text()
    assert page.get_by_role("link", name="Open Similarity search").count() == 1
    _no_traceback(page)


def test_save_a_view_from_the_sidebar(server, ws, page):
    page.goto(server + "/probes?aoi=conus&est=ridge&budget=10", wait_until="domcontentloaded")
    page.get_by_text("Learning curve").first.wait_for(timeout=WAIT)
    _settle(page)
    page.screenshot(path=str(ARTIFACTS / "probes-regression.png"), full_page=True)
    page.get_by_text("Save this view as a story step").click()
    page.get_by_label("Story", exact=True).click()
    page.get_by_role("option", name="tour").click()
    page.get_by_label("Step title").fill("Ridge at 10 labels")
    page.get_by_label("Step title").press("Enter")
    page.get_by_role("button", name="Save step").click()
    page.get_by_text("Saved as step 3 of the story tour").wait_for(timeout=WAIT)
    step = load_story(ws, "tour").steps[-1]
    assert step.page == "pages/probes.py" and step.params["budget"] == "10" and step.params["est"] == "ridge"
    assert step.title == "Ridge at 10 labels"
    page.get_by_text("Show the error (predicted - true) instead").click()
    _settle(page)
    page.get_by_text("predicted too low").first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "probes-error-map.png"), full_page=True)
    _no_traceback(page)


def test_play_a_two_step_story_full_screen(server, page):
    page.goto(server + "/story?story=tour", wait_until="domcontentloaded")
    page.get_by_role("button", name="Play full screen").wait_for(timeout=WAIT)
    _settle(page, 500)
    page.get_by_role("button", name="Play full screen").click()
    page.get_by_text("step 1 of ").first.wait_for(timeout=WAIT)
    page.get_by_text("Calibration of P(vegetation").first.wait_for(timeout=WAIT)
    _settle(page, 2_500)
    page.screenshot(path=str(ARTIFACTS / "story-step1.png"), full_page=True)
    sidebar = page.locator("[data-testid='stSidebar']")
    assert sidebar.get_attribute("data-collapsed") == "true", "the sidebar is not collapsed while playing"
    assert page.get_by_text("is it calibrated?").count() == 1
    page.screenshot(path=str(ARTIFACTS / "probes-logistic.png"), full_page=True)
    page.get_by_role("button", name="Next").click()
    page.get_by_text("step 2 of ").first.wait_for(timeout=WAIT)
    page.get_by_text("Selected chips", exact=False).or_(page.get_by_text("Map", exact=True)).first.wait_for(timeout=WAIT)
    _settle(page, 3_000)
    assert "south_america" in page.url
    page.screenshot(path=str(ARTIFACTS / "story-step2.png"), full_page=True)
    page.get_by_role("button", name="Exit story").click()
    page.get_by_role("button", name="Play full screen").wait_for(timeout=WAIT)
    _no_traceback(page)


def test_explorer_empty_box_says_zero_selected(server, page):
    page.goto(server + "/explorer?aoi=conus", wait_until="domcontentloaded")
    chart = page.locator("[data-testid='stVegaLiteChart']").first
    chart.wait_for(timeout=WAIT)
    _settle(page, 2_000)
    box = chart.locator("canvas, svg").first.bounding_box()
    # Drag a small box near the bottom right of the plot area, where this UMAP leaves no point.
    x0, y0 = box["x"] + box["width"] * 0.72, box["y"] + box["height"] * 0.80
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x0 + 15, y0 + 12, steps=5)
    page.mouse.up()
    page.get_by_text("0 selected").first.wait_for(timeout=WAIT)
    _settle(page, 1_000)
    page.screenshot(path=str(ARTIFACTS / "explorer-zero-selected.png"), full_page=True)
    _no_traceback(page)


def test_mapping_legend(server, page):
    page.goto(server + "/mapping?aoi=conus&labels=fields", wait_until="domcontentloaded")
    page.get_by_text("chips detected of").first.wait_for(timeout=WAIT)
    _settle(page, 2_500)
    # The raster map with its colour bar and keys at the bottom of the screen.
    page.locator(".eo-legend").first.evaluate("e => e.scrollIntoView({block: 'end'})")
    page.wait_for_timeout(1_000)
    page.screenshot(path=str(ARTIFACTS / "mapping-legend.png"))
    _no_traceback(page)
