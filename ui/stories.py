"""Story mode widgets: save the view on screen as a story step (sidebar), and the player bar of a story.

A story is workspace state (`data.stories`); a step is a page and its URL state (`state.current_view`).
Playing a story switches to each step's page with the step's URL, so the page itself restores the view
(AOI, query chip, label set, settings) exactly as a shared link would; the player bar above the page
shows the caption and the previous/next buttons, and the sidebar is collapsed.
"""

from __future__ import annotations

import streamlit as st

from data.stories import Story, StoryError, StoryStep, list_stories, load_story, new_story, save_story
from data.workspace import Workspace
from ui import state
from ui.text import md_escape

PLAY_KEY = "story_play"
"""Session key of the story being played: {"name": story name, "step": 0-based step}."""
STORY_PAGE = "pages/story.py"
NEW_STORY = "New story…"
SAVE_TO_KEY, NEW_NAME_KEY = "story_save_to", "story_new_name"
STEP_TITLE_KEY, STEP_CAPTION_KEY = "story_step_title", "story_step_caption"
MESSAGE_KEY = "story_message"


def playing() -> bool:
    """Whether a story is being played in this session."""
    return bool(st.session_state.get(PLAY_KEY))


def describe(step: StoryStep) -> str:
    """A one-line summary of a step's view for the story table: the page and its URL settings."""
    page = state.PAGE_TITLES.get(step.page, step.page)
    settings = ", ".join(f"{k} = {v}" for k, v in sorted(step.params.items()))
    return f"{page}" + (f" ({settings})" if settings else "")


# ----------------------------------------------------------------------------------------- saving a view
def _save_step(root: str) -> None:
    """Button callback: append the view on screen to the chosen (or a new) story."""
    ws = Workspace(root)
    choice = st.session_state.get(SAVE_TO_KEY)
    page, params = state.current_view()
    try:
        if choice == NEW_STORY or choice is None:
            story = new_story(ws, (st.session_state.get(NEW_NAME_KEY) or "").strip())
        else:
            story = load_story(ws, choice)
        step = StoryStep(page=page, params=params, title=(st.session_state.get(STEP_TITLE_KEY) or "").strip(),
                         caption=(st.session_state.get(STEP_CAPTION_KEY) or "").strip())
        story = save_story(ws, story.with_step(step))
    except StoryError as e:
        st.session_state[MESSAGE_KEY] = ("warning", f"Not saved: {e}.")
        return
    st.session_state[SAVE_TO_KEY] = story.name
    st.session_state[STEP_TITLE_KEY] = st.session_state[STEP_CAPTION_KEY] = st.session_state[NEW_NAME_KEY] = ""
    st.session_state[MESSAGE_KEY] = ("success", f"Saved as step {len(story)} of the story {story.name}.")


def save_view_control(ws: Workspace) -> None:
    """Sidebar: save the view on screen (page, AOI, query, label set, settings) as a step of a story."""
    with st.sidebar.expander("Save this view as a story step", icon=":material/bookmark_add:"):
        names = list_stories(ws)
        if st.session_state.get(SAVE_TO_KEY) not in [*names, NEW_STORY]:
            st.session_state[SAVE_TO_KEY] = names[0] if names else NEW_STORY
        choice = st.selectbox("Story", [*names, NEW_STORY], key=SAVE_TO_KEY)
        if choice == NEW_STORY:
            st.text_input("New story name", key=NEW_NAME_KEY, placeholder="e.g. flood_demo",
                          help="Letters, digits, '_' and '-'. Stories are saved in the workspace.")
        st.text_input("Step title", key=STEP_TITLE_KEY, placeholder="e.g. Rivers look alike")
        st.text_area("Caption shown while playing", key=STEP_CAPTION_KEY, height=90,
                     placeholder="What the audience should notice in this view.")
        st.button("Save step", key="story_save_step", on_click=_save_step, args=(str(ws.root),),
                  help="Saves this page with its current settings (as in its URL) at the end of the story.")
        message = st.session_state.pop(MESSAGE_KEY, None)
        if message:
            getattr(st, message[0])(message[1])


# ----------------------------------------------------------------------------------------- playing
def start(story: Story, step: int = 0) -> None:
    """Play `story` from `step`: switch to that step's page with its URL state."""
    if not story.steps:
        raise StoryError(f"the story {story.name} has no step yet; save a view from the sidebar first")
    step = min(max(step, 0), len(story) - 1)
    st.session_state[PLAY_KEY] = {"name": story.name, "step": step}
    target = story.steps[step]
    st.switch_page(state.page_target(target.page), query_params=target.params or None)


def stop(name: str | None) -> None:
    """Leave the player and go back to the story page."""
    st.session_state.pop(PLAY_KEY, None)
    st.switch_page(state.page_target(STORY_PAGE), query_params={"story": name} if name else None)


def player_bar(ws: Workspace) -> None:
    """Above the page, while a story plays: the story title, step n of N, its caption, previous/next/exit."""
    play = st.session_state.get(PLAY_KEY)
    if not play:
        return
    try:
        story = load_story(ws, play["name"])
        if not story.steps:
            raise StoryError(f"the story {story.name} has no steps left")
    except StoryError as e:
        st.session_state.pop(PLAY_KEY, None)
        st.warning(f"The story stopped: {e}.")
        return
    i = min(max(int(play.get("step", 0)), 0), len(story) - 1)
    step = story.steps[i]
    with st.container(border=True, key="story_player"):
        c1, c2, c3, c4 = st.columns([6, 1.3, 1.3, 1.3], vertical_alignment="center")
        c1.markdown(f"**{md_escape(story.title or story.name)}** · step {i + 1} of {len(story)}"
                    + (f": {md_escape(step.title)}" if step.title else ""))
        back = c2.button("Previous", key="story_prev", icon=":material/arrow_back:", disabled=i == 0, width="stretch")
        forward = c3.button("Next", key="story_next", icon=":material/arrow_forward:", type="primary",
                            disabled=i == len(story) - 1, width="stretch")
        leave = c4.button("Exit story", key="story_exit", icon=":material/close:", width="stretch")
        if step.caption:
            # A story file is shared data: its caption is shown as typed, never rendered as Markdown/HTML.
            st.markdown(md_escape(step.caption), help=None)
    if back:
        start(story, i - 1)
    if forward:
        start(story, i + 1)
    if leave:
        stop(story.name)
