"""The app's shared choices: workspace, AOI and checkpoint, picked once in the sidebar (app.py).

Pages never draw their own pickers; they call `context()`, which reads the choices from
`st.session_state`. The workspace root comes from `$EO_WORKSPACE` (default ./workspace) and is not
editable from the browser, so every path the app touches stays inside it or inside the repository's
`checkpoints/` folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection

import streamlit as st

from data.workspace import Workspace
from ui import cache

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO / "checkpoints" / "tiny-sim"
AOI_KEY = "aoi"
CHECKPOINT_KEY = "checkpoint"
ENTRY_KEY = "_entered_via_app"
GOTO_KEY = "_goto_page"
GOTO_PARAMS_KEY = "_goto_query_params"
URL_KEY = "_url_written"
"""Session key of the query parameters this session wrote itself (anything else in the URL came from a reload or a link)."""
PAGES_KEY = "_pages"
CURRENT_PAGE_KEY = "_current_page"
HOME = "app.py"
PAGES: tuple[tuple[str, str, str], ...] = (
    (HOME, "Home", ":material/home:"),
    ("pages/similarity.py", "Similarity search", ":material/travel_explore:"),
    ("pages/explorer.py", "Embedding explorer", ":material/scatter_plot:"),
    ("pages/probes.py", "Few-shot probes", ":material/model_training:"),
    ("pages/mapping.py", "Label & map", ":material/edit_location_alt:"),
    ("pages/story.py", "Stories", ":material/slideshow:"),
)
"""The app's pages, in menu order: (file, title, icon). The home page is a function of app.py."""
PAGE_TITLES = {file: title for file, title, _ in PAGES}
CHECKPOINT_ENV = "EO_CHECKPOINT"
"""Server-side choice of the default checkpoint (a folder name under checkpoints/ of the repo or workspace)."""


@dataclass(frozen=True)
class AppContext:
    """What every page works on: the workspace, its AOIs, the chosen AOI and model checkpoint."""

    workspace: Workspace
    aois: list[str]
    aoi: str | None
    checkpoint: Path | None

    @property
    def root(self) -> str:
        """The workspace root as a string (a hashable cache key)."""
        return str(self.workspace.root)


def checkpoint_choices(workspace: Workspace) -> list[Path]:
    """Checkpoint folders the app may load: the repository's `checkpoints/*` and the workspace's."""
    found: list[Path] = []
    for parent in (REPO / "checkpoints", workspace.root / "checkpoints"):
        if parent.is_dir():
            found += sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    # The default first: $EO_CHECKPOINT (by folder name or path) if it names one found, else tiny-sim.
    wanted = os.environ.get(CHECKPOINT_ENV, "").strip()
    preferred = [p for p in found if wanted and (p.name == wanted or str(p) == str(Path(wanted).resolve()))]
    first = preferred[0] if preferred else (DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT in found else None)
    if first is not None:
        found.remove(first)
        found.insert(0, first)
    return found


def _checkpoint_label(path: Path, workspace: Workspace) -> str:
    for base, tag in ((REPO, ""), (workspace.root, "workspace: ")):
        try:
            return tag + str(path.relative_to(base))
        except ValueError:
            continue
    return path.name


def render_sidebar() -> AppContext:
    """Draw the workspace/AOI/checkpoint pickers once (called by app.py before the page runs)."""
    workspace = Workspace()
    aois = workspace.list_stores()
    sb = st.sidebar
    sb.caption(f"Workspace: `{workspace.root}` (set `EO_WORKSPACE` to use another)")
    aoi = None
    if aois:
        from_url("aoi", AOI_KEY, allowed=aois)  # a reload or a shared link restores the AOI
        if st.session_state.get(AOI_KEY) not in aois:
            st.session_state[AOI_KEY] = aois[0]
        aoi = sb.selectbox(
            "Area of interest",
            aois,
            key=AOI_KEY,
            format_func=lambda a: cache.aoi_label(str(workspace.root), a),
            help="Chip store of one AOI. Simulated AOIs are procedurally generated, never real observations.",
        )
        if cache.aoi_summary(str(workspace.root), aoi)["simulated"]:
            # Every page shows this: simulated chips must never be mistaken for observations.
            sb.warning("**Simulated data.** This AOI is procedurally generated at real coordinates "
                       "(`data.simulate`); it is not a satellite observation.", icon="⚠️")
    else:
        sb.info("No AOI in this workspace yet: build one on the Home page.")
    choices = checkpoint_choices(workspace)
    checkpoint = None
    if choices:
        labels = {str(p): _checkpoint_label(p, workspace) for p in choices}
        if st.session_state.get(CHECKPOINT_KEY) not in labels:
            st.session_state[CHECKPOINT_KEY] = str(choices[0])
        checkpoint = Path(
            sb.selectbox("Model checkpoint", list(labels), key=CHECKPOINT_KEY, format_func=labels.__getitem__)
        )
    else:
        sb.info(f"No model checkpoint found (expected `{DEFAULT_CHECKPOINT.relative_to(REPO)}`).")
    return AppContext(workspace, aois, aoi, checkpoint)


def context() -> AppContext:
    """The current choices, as picked in the sidebar (pages call this; it draws nothing)."""
    workspace = Workspace()
    aois = workspace.list_stores()
    aoi = st.session_state.get(AOI_KEY)
    ckpt = st.session_state.get(CHECKPOINT_KEY)
    if aoi not in aois:
        aoi = aois[0] if aois else None
    choices = checkpoint_choices(workspace)
    checkpoint = Path(ckpt) if ckpt in {str(p) for p in choices} else (choices[0] if choices else None)
    return AppContext(workspace, aois, aoi, checkpoint)


def mark_entrypoint() -> None:
    """Record that app.py ran in this session (it drew the sidebar and declared the pages)."""
    st.session_state[ENTRY_KEY] = True


def follow_deep_link() -> None:
    """After app.py declared the pages: go on to the page a first request asked for (see require_entrypoint)."""
    target = st.session_state.pop(GOTO_KEY, None)
    params = st.session_state.pop(GOTO_PARAMS_KEY, None)
    if target:
        st.switch_page(target, query_params=params or None)  # keep the link's view (AOI, label set, chip)


def require_entrypoint(page_file: str) -> None:
    """Make sure a page runs through app.py.

    Streamlit wraps an app that has a `pages/` folder in its old automatic navigation until
    `st.navigation` has been called once in the process; a fresh server's very first request for a
    page URL therefore runs that page file alone, without app.py's sidebar and page config. Send
    such a request through app.py, which then switches back to the page.
    """
    if not st.session_state.get(ENTRY_KEY):
        st.session_state[GOTO_KEY] = page_file
        st.session_state[GOTO_PARAMS_KEY] = st.query_params.to_dict()
        st.switch_page("app.py")


def from_url(param: str, session_key: str, *, allowed: Collection[str] | None = None,
             cast: Callable[[str], Any] = str) -> None:
    """Copy a URL query parameter into a session key when the URL changed from outside (a reload, a shared link).

    Values this session wrote to the URL itself (`to_url`) are skipped, so a widget the user has just
    changed keeps its new value; unknown or malformed values are ignored.
    """
    raw = st.query_params.get(param)
    written = st.session_state.setdefault(URL_KEY, {})
    if raw is None or written.get(param) == raw or (allowed is not None and raw not in allowed):
        return
    try:
        value = cast(raw)
    except (TypeError, ValueError):
        return
    st.session_state[session_key] = value
    written[param] = raw


def to_url(**params: Any) -> None:
    """Mirror a page's current choices into the URL so that a reload (or a copied link) shows the same view."""
    written = st.session_state.setdefault(URL_KEY, {})
    for name, value in params.items():
        if value is None or value == "":
            if name in st.query_params:
                del st.query_params[name]
            written.pop(name, None)
            continue
        text = f"{value:g}" if isinstance(value, float) else str(value)
        if st.query_params.get(name) != text:  # unchanged values are not rewritten (no extra browser history)
            st.query_params[name] = text
        written[name] = text


# ----------------------------------------------------------------------------------------- pages and views (stories)
def register_pages(pages: dict[str, Any], current: Any) -> None:
    """Remember this run's st.Page objects by file (a page made from a function can only be reached through
    its Page object) and which page is about to run."""
    st.session_state[PAGES_KEY] = pages
    st.session_state[CURRENT_PAGE_KEY] = next((f for f, p in pages.items() if p.url_path == current.url_path), HOME)


def page_target(page_file: str) -> Any:
    """What st.switch_page / st.page_link take for a page file: its registered Page object, else the path."""
    return st.session_state.get(PAGES_KEY, {}).get(page_file, page_file)


def current_page() -> str:
    """The file of the page shown in this run (app.py for home)."""
    return st.session_state.get(CURRENT_PAGE_KEY, HOME)


def current_view() -> tuple[str, dict[str, str]]:
    """The view on screen as (page file, URL query parameters): what a story step saves.

    The query parameters are those the page mirrored into the URL (`to_url`: AOI, query chip, label set,
    settings); the sidebar's AOI is added when the page did not write it.
    """
    params = {k: str(v) for k, v in st.query_params.to_dict().items()}
    aoi = st.session_state.get(AOI_KEY)
    if aoi and "aoi" not in params:
        params["aoi"] = str(aoi)
    return current_page(), params
