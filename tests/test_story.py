"""Stories (data.stories) and the demo path: the home page's start path, saving a view as a story step,
playing a story, and the fixed legends, plots and messages (AppTest on the app test workspace)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from data.stories import Story, StoryError, StoryStep, delete_story, list_stories, load_story, new_story, save_story
from data.workspace import Workspace
from tests.test_app import APP, TIMEOUT, assert_clean, build_app_workspace, open_page, private_copy, texts


# ----------------------------------------------------------------------------------------- data.stories
def test_story_round_trip_edits_and_atomic_file(tmp_path):
    ws = Workspace(tmp_path)
    story = new_story(ws, "flood_demo", "Floods in five minutes")
    a = StoryStep("pages/similarity.py", {"aoi": "conus", "chip": "r3c4"}, "Similar terrain", "Rivers look alike.")
    b = StoryStep("pages/probes.py", {"aoi": "conus", "budget": 10}, "Few labels")
    c = StoryStep("app.py", {}, "Home")
    story = save_story(ws, story.with_step(a).with_step(b).with_step(c))
    again = load_story(ws, "flood_demo")
    assert again == story and again.steps[1].params["budget"] == "10"  # URL values are text
    assert [s.title for s in again.moved(2, -5).steps] == ["Home", "Similar terrain", "Few labels"]
    assert [s.title for s in again.without_step(0).steps] == ["Few labels", "Home"]
    assert again.with_caption(1, "Ten labels", "Close to all labels.").steps[1].caption == "Close to all labels."
    assert list_stories(ws) == ["flood_demo"]
    assert [p.name for p in ws.stories_dir.iterdir()] == ["flood_demo.json"]  # no temporary file left behind
    assert json.loads(ws.story_path("flood_demo").read_text())["format"] == 1
    with pytest.raises(StoryError, match="already exists"):
        new_story(ws, "flood_demo")
    delete_story(ws, "flood_demo")
    assert list_stories(ws) == []


@pytest.mark.parametrize("make", [
    lambda: Story(name="../evil"),
    lambda: Story(name="a.b"),
    lambda: StoryStep("/etc/passwd.py"),
    lambda: StoryStep("pages/../app.py"),
    lambda: StoryStep("pages/probes.py", {"bad key": "x"}),
    lambda: StoryStep("pages/probes.py", {"aoi": ["conus"]}),
    lambda: StoryStep("pages/probes.py", {"aoi": "x" * 501}),
    lambda: StoryStep("pages/probes.py", title="t" * 121),
])
def test_story_rejects_unsafe_names_pages_and_params(make):
    with pytest.raises(StoryError):
        make()


def test_malformed_story_file_is_one_clear_error(tmp_path):
    ws = Workspace(tmp_path)
    ws.stories_dir.mkdir(parents=True)
    ws.story_path("broken").write_text("{not json")
    with pytest.raises(StoryError, match="not valid JSON"):
        load_story(ws, "broken")
    ws.story_path("odd").write_text(json.dumps({"format": 1, "name": "odd", "steps": [{"page": "http://x"}]}))
    with pytest.raises(StoryError, match="not one of the app's pages"):
        load_story(ws, "odd")
    with pytest.raises(StoryError, match="no story named"):
        load_story(ws, "missing")
    (ws.stories_dir / "bad name.json").write_text("{}")
    assert list_stories(ws) == ["broken", "odd"]  # a file the app could not address is not listed


# ----------------------------------------------------------------------------------------- the app
@pytest.fixture(scope="module")
def story_ws(tmp_path_factory) -> Path:
    """The app tests' workspace (2 simulated AOIs, an untrained tiny checkpoint, everything built)."""
    root, _ = build_app_workspace(tmp_path_factory.mktemp("storyws"))
    return root


@pytest.fixture
def ws(story_ws, tmp_path, monkeypatch) -> Path:
    """A private copy of the workspace for each test (stories and projections are written into it)."""
    return private_copy(story_ws, tmp_path, monkeypatch)


def test_home_says_what_is_simulated_first_then_the_start_path(ws):
    at = open_page()
    shown = [n for n in at.main if n.type not in ("main", "title")]
    assert shown[0].type == "warning", "the simulated/real statement must come before anything else"
    banner = shown[0].value
    assert "Simulated:" in banner and "conus" in banner and "south\\_america" in banner
    assert "Model:** trained on simulated chips only" in banner
    links = [e for e in at.main if e.type == "page_link"] or list(at.get("page_link"))
    targets = json.dumps([e.proto.page for e in links])
    for page in ("similarity", "mapping", "probes", "story"):
        assert page in targets, f"no link to the {page} page in the start path"
    assert any("Start here" in s.value for s in at.subheader)
    # The pipeline status is folded below (built workspace): the first table is the AOIs'.
    assert set(at.dataframe[0].value["aoi"]) == {"conus", "south_america"}
    exp = next(e for e in at.expander if "Status of each step" in e.label)
    assert "all built" in exp.label


def test_save_a_view_as_a_story_step_from_the_sidebar(ws):
    # AppTest shows the sidebar of the entry page only, so the view saved here is home with another AOI; the
    # browser test saves a page's view with its settings.
    at = open_page()
    at.selectbox(key="aoi").set_value("south_america").run()
    at.text_input(key="story_new_name").input("demo")
    at.text_input(key="story_step_title").input("The second area")
    at.text_area(key="story_step_caption").input("Same model, another region.")
    at.button(key="story_save_step").click().run()
    assert_clean(at)
    assert any("step 1 of the story demo" in t for t in texts(at.sidebar.success))
    (step,) = load_story(Workspace(ws), "demo").steps
    assert (step.page, step.params, step.title) == ("app.py", {"aoi": "south_america"}, "The second area")
    assert at.text_input(key="story_step_title").value == ""  # ready for the next step
    # A bad name is one line and nothing is written.
    at.selectbox(key="story_save_to").set_value("New story…").run()
    at.text_input(key="story_new_name").input("../x")
    at.button(key="story_save_step").click().run()
    assert any("Not saved" in t and "story name" in t for t in texts(at.sidebar.warning))
    assert list_stories(Workspace(ws)) == ["demo"]


def test_pages_mirror_their_settings_into_the_url_that_a_step_saves(ws):
    at = open_page("pages/probes.py")
    at.selectbox(key="probe_estimator").set_value("logistic").run()
    at.select_slider(key="probe_budget").set_value(10).run()
    assert_clean(at)
    assert {k: at.query_params[k] for k in ("aoi", "est", "budget")} == {"aoi": "conus", "est": "logistic",
                                                                         "budget": "10"}
    at.switch_page("pages/explorer.py")
    at.run()
    at.selectbox(key="exp_color").set_value("modality availability").run()
    assert at.query_params["color"] == "modality availability"


def _playing(step: int) -> AppTest:
    """Home with the story 'tour' playing at `step`: AppTest reruns the page it last switched to itself (not one the
    app switched to), so each button press of the player starts from a fresh session on home."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["story_play"] = {"name": "tour", "step": step}
    at.run()
    assert_clean(at)
    return at


def test_play_a_two_step_story(ws):
    w = Workspace(ws)
    story = new_story(w, "tour", "A short tour")
    story = story.with_step(StoryStep("app.py", {"aoi": "south_america"}, "Where we are", "**Two** simulated areas."))
    story = story.with_step(StoryStep("pages/probes.py", {"aoi": "conus", "est": "logistic", "budget": "10"},
                                      "Ten labels", "Logistic at 10 labels."))
    save_story(w, story)
    at = open_page("pages/story.py")
    assert any("Ten labels" in t for t in texts(at.markdown))
    at.button(key="story_play_start").click().run()
    assert_clean(at)
    shown = texts(at.markdown)
    assert any("step 1 of 2" in t and "Where we are" in t for t in shown)
    assert any("\\*\\*Two\\*\\* simulated areas" in t for t in shown)  # a shared caption shows as typed
    assert at.session_state["aoi"] == "south_america" and at.button(key="story_prev").disabled

    at = _playing(0)
    at.button(key="story_next").click().run()
    assert_clean(at)
    assert at.session_state["story_play"] == {"name": "tour", "step": 1}
    assert at.selectbox(key="probe_estimator").value == "logistic"
    assert at.select_slider(key="probe_budget").value == 10

    at = _playing(1)
    assert any("step 2 of 2" in t for t in texts(at.markdown)) and at.button(key="story_next").disabled
    at.button(key="story_exit").click().run()
    assert_clean(at)
    assert at.title[0].value == "Stories" and "story_play" not in at.session_state


# ----------------------------------------------------------------------------------------- legends, plots, messages
def _specs(at: AppTest) -> list[str]:
    return [json.dumps(json.loads(e.proto.spec), ensure_ascii=False) for e in at.get("vega_lite_chart")]


def test_probes_mark_the_budget_and_say_what_grey_means_on_the_map(ws):
    at = open_page("pages/probes.py")
    at.select_slider(key="probe_budget").set_value(10).run()
    assert_clean(at)
    assert any("#d62728" in s for s in _specs(at)), "the current budget is not marked on the learning curve"
    assert any("Red line: your budget (10 labelled chips)" in t for t in texts(at.caption))
    assert any("Grey: no prediction" in t for t in texts(at.caption))
    at.toggle(key="probe_map_error").set_value(True).run()
    assert_clean(at)
    assert any("Grey: no label or no prediction" in t and "predicted too low" in t for t in texts(at.caption))


def test_logistic_probe_gets_calibration_and_confusion_not_probability_vs_fraction(ws):
    at = open_page("pages/probes.py")
    at.selectbox(key="probe_estimator").set_value("logistic").run()
    assert_clean(at)
    assert any("Calibration of P(vegetation > 0.05)" in t for t in texts(at.markdown))
    assert not any("Predicted vs true" in t for t in texts(at.markdown))
    assert any("observed share of chips with vegetation > 0.05" in s for s in _specs(at))
    confusion = next(d.value for d in at.dataframe if "predicted present" in d.value.columns)
    assert list(confusion.index) == ["truly present", "truly absent"]
    assert int(confusion.to_numpy().sum()) > 0


def test_degenerate_model_says_so(ws):
    at = open_page("pages/probes.py")
    # Every chip of this AOI holds some cropland: a presence classifier can only answer "present" everywhere.
    at.selectbox(key="probe_task").set_value("cropland").run()
    at.selectbox(key="probe_estimator").set_value("logistic").run()
    assert_clean(at)
    warned = [t for t in texts(at.warning) if "degenerate" in t]
    assert warned and "same value (100%) for every chip" in warned[0] and "raise the label budget" in warned[0]
    # Built-up at 5 labels (6 % of the chips are built up): some draws hold absent chips only.
    at.selectbox(key="probe_task").set_value("builtup").run()
    at.select_slider(key="probe_budget").set_value(5).run()
    assert_clean(at)
    assert any("Some random draws are degenerate" in t and "only absent chips" in t for t in texts(at.warning))
    at.selectbox(key="probe_estimator").set_value("ridge").run()
    assert not any("degenerate" in t for t in texts(at.warning))


def test_explorer_has_no_developer_note_a_map_legend_and_a_selection_per_aoi(ws):
    at = open_page("pages/explorer.py")
    shown = texts(at.markdown) + texts(at.caption)
    assert not any("seeded sample" in t or "sluggish" in t for t in shown)
    legend = json.loads(at.get("bidi_component")[0].proto.json)["legend"]  # the raster map's colour bar
    assert legend["units"] == "share of the chip" and legend["ticks"]
    assert any("Grey: no label for the chip." in t for t in texts(at.caption))
    scatter_id = at.get("vega_lite_chart")[0].proto.id
    assert "exp_chart_conus" in scatter_id  # the selection belongs to this AOI's chart


def test_empty_box_selection_is_zero_selected():
    import pandas as pd

    from ui import charts

    points = pd.DataFrame({"chip_id": ["a", "b"], "x": [0.0, 1.0], "y": [0.0, 1.0]})
    empty = {"selection": {charts.BRUSH_SELECTION: {"x": [5.0, 6.0], "y": [5.0, 6.0]}}}
    assert charts.selection_state(empty, points) == ([], True)
    around_a = {"selection": {charts.BRUSH_SELECTION: {"x": [-0.5, 0.5], "y": [-0.5, 0.5]}}}
    assert charts.selection_state(around_a, points) == (["a"], True)
    assert charts.selection_state({"selection": {}}, points) == ([], False)
