"""Stories: order saved views into a story, caption them, and play the story back full-screen."""

from __future__ import annotations

import json
import zlib

import streamlit as st

from data.stories import StoryError, delete_story, list_stories, load_story, new_story, save_story
from data.workspace import Workspace
from ui import state, stories
from ui.errors import UserError, page_guard
from ui.text import md_escape

state.require_entrypoint("pages/story.py")
ctx = state.context()
st.title("Stories")
st.caption("A story is a sequence of saved views, each with a caption. Save the view on any page with "
           "*Save this view as a story step* in the sidebar, order the steps here, then play them full-screen. "
           "Stories are files in the workspace (its stories folder): share the workspace and they come along.")

PICK_KEY, CREATE_KEY, MESSAGE_KEY = "story_pick", "story_create_name", "story_page_message"


def _create(root: str) -> None:
    """Button callback: a new, empty story."""
    try:
        story = new_story(Workspace(root), (st.session_state.get(CREATE_KEY) or "").strip())
    except StoryError as e:
        st.session_state[MESSAGE_KEY] = ("warning", f"Not created: {e}.")
        return
    st.session_state[PICK_KEY], st.session_state[CREATE_KEY] = story.name, ""
    st.session_state[MESSAGE_KEY] = ("success", f"Created {story.name}: now save views into it from the sidebar.")


def _edit(root: str, name: str, action: str, i: int) -> None:
    """Button callback: move a step up or down, or remove it, and save the story."""
    ws = Workspace(root)
    try:
        story = load_story(ws, name)
        story = {"up": lambda: story.moved(i, -1), "down": lambda: story.moved(i, 1),
                 "remove": lambda: story.without_step(i)}[action]()
        save_story(ws, story)
    except StoryError as e:
        st.session_state[MESSAGE_KEY] = ("warning", f"Not changed: {e}.")


def _save_caption(root: str, name: str, i: int, title_key: str, caption_key: str) -> None:
    """Button callback: save the edited title and caption of step i."""
    ws = Workspace(root)
    try:
        story = load_story(ws, name)
        save_story(ws, story.with_caption(i, st.session_state.get(title_key, ""), st.session_state.get(caption_key, "")))
    except StoryError as e:
        st.session_state[MESSAGE_KEY] = ("warning", f"Not saved: {e}.")
        return
    st.session_state[MESSAGE_KEY] = ("success", f"Saved step {i + 1}.")


def _delete(root: str, name: str) -> None:
    delete_story(Workspace(root), name)
    st.session_state.pop(PICK_KEY, None)
    st.session_state[MESSAGE_KEY] = ("success", f"Deleted the story {name}.")


with page_guard("stories"):
    names = list_stories(ctx.workspace)
    c1, c2, c3 = st.columns([3, 2, 1], vertical_alignment="bottom")
    c2.text_input("New story", key=CREATE_KEY, placeholder="e.g. flood_demo",
                  help="Letters, digits, '_' and '-'.")
    c3.button("Create", key="story_create", on_click=_create, args=(ctx.root,))
    message = st.session_state.pop(MESSAGE_KEY, None)
    if message:
        getattr(st, message[0])(message[1])
    if not names:
        raise UserError("No story in this workspace yet.", "Create one above, or open any page and use "
                        "'Save this view as a story step' in the sidebar.", "info")
    state.from_url("story", PICK_KEY, allowed=names)  # a shared link opens its story
    if st.session_state.get(PICK_KEY) not in names:
        st.session_state[PICK_KEY] = names[0]
    name = c1.selectbox("Story", names, key=PICK_KEY)
    state.to_url(story=name)
    story = load_story(ctx.workspace, name)

    if st.button("Play full screen", key="story_play_start", type="primary", icon=":material/play_arrow:",
                 disabled=not story.steps):
        stories.start(story)
    if not story.steps:
        st.info("This story has no step yet: open a page, set the view, and press *Save step* in the sidebar.")
    for i, step in enumerate(story.steps):
        with st.container(border=True):
            c1, c2, c3, c4, c5 = st.columns([6, 1, 1, 1, 1.4], vertical_alignment="center")
            c1.markdown(f"**{i + 1}. {md_escape(step.title or 'Untitled step')}**  \n{md_escape(stories.describe(step))}")
            if step.caption:
                c1.caption(md_escape(step.caption))
            c2.button("Up", key=f"story_up_{i}", icon=":material/arrow_upward:", disabled=i == 0,
                      on_click=_edit, args=(ctx.root, name, "up", i))
            c3.button("Down", key=f"story_down_{i}", icon=":material/arrow_downward:", disabled=i == len(story) - 1,
                      on_click=_edit, args=(ctx.root, name, "down", i))
            c4.button("Remove", key=f"story_remove_{i}", icon=":material/delete:",
                      on_click=_edit, args=(ctx.root, name, "remove", i))
            if c5.button("Play from here", key=f"story_play_{i}"):
                stories.start(story, i)
            with st.expander("Edit the title and caption"):
                # Keys carry the step's content, so a reordered or re-saved step never shows stale text.
                tag = f"{name}_{i}_{zlib.crc32(json.dumps(step.to_json(), sort_keys=True).encode()):08x}"
                title_key, caption_key = f"story_edit_title_{tag}", f"story_edit_caption_{tag}"
                st.text_input("Title", value=step.title, key=title_key)
                st.text_area("Caption", value=step.caption, key=caption_key)
                st.button("Save", key=f"story_edit_save_{i}", on_click=_save_caption,
                          args=(ctx.root, name, i, title_key, caption_key))
    with st.expander("Delete this story"):
        sure = st.checkbox(f"Yes, delete {name} from the workspace", key="story_delete_sure")
        st.button("Delete", key="story_delete", disabled=not sure, on_click=_delete, args=(ctx.root, name))
