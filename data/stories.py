"""Stories: named sequences of saved app views (page + URL state + caption), kept as files in the workspace.

A story is `<workspace>/stories/<name>.json` (`Workspace.story_path`), written atomically, so it travels
with the workspace: copy the folder and the story plays the same elsewhere. Each step is one view of the
app as its URL describes it (the page file and its query parameters: AOI, query chip, label set,
settings) plus a title and a caption for the audience:

    {"format": 1, "name": "flood_demo", "title": "Flood mapping in five minutes", "created": "...",
     "updated": "...", "steps": [{"page": "pages/similarity.py", "params": {"aoi": "conus", "chip": "r3c4"},
                                  "title": "Similar terrain", "caption": "Click a river chip ..."}]}

Everything read from a file is validated (names, page paths, parameter names and lengths): a story file
is shared data, never trusted to point outside the app's own pages.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Mapping

from data.atomic import atomic_write_json
from data.workspace import Workspace, WorkspaceNameError, check_name

FORMAT_VERSION = 1
HOME_PAGE = "app.py"
# A page is the app's entry point or a file directly under pages/ (no other path can come from a file).
_PAGE = re.compile(r"app\.py|pages/[a-z][a-z0-9_]*\.py")
_PARAM = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}")
MAX_PARAMS = 30
MAX_VALUE_CHARS = 500
MAX_TITLE_CHARS = 120
MAX_CAPTION_CHARS = 2000
MAX_STEPS = 100


class StoryError(ValueError):
    """A story cannot be made, read or written: the one-line message says what to change."""


def now_utc() -> str:
    """The current UTC time as ISO 8601 with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_story_name(name: object) -> str:
    """The workspace name rule (a FULL match of [A-Za-z0-9_-]+), raising a StoryError."""
    try:
        return check_name(name, "story name")
    except WorkspaceNameError as e:
        raise StoryError(str(e)) from None


def _text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise StoryError(f"{what} must be text, got {type(value).__name__}")
    if len(value) > limit:
        raise StoryError(f"{what} is {len(value)} characters long; keep it under {limit}")
    return value


@dataclass(frozen=True)
class StoryStep:
    """One saved view: the page file, its URL query parameters, a title and a caption for the audience."""

    page: str
    params: dict[str, str] = field(default_factory=dict)
    title: str = ""
    caption: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.page, str) or not _PAGE.fullmatch(self.page):
            raise StoryError(f"page {self.page!r} is not one of the app's pages (app.py or pages/<name>.py)")
        if not isinstance(self.params, Mapping):
            raise StoryError("a step's params must be a mapping of names to values")
        if len(self.params) > MAX_PARAMS:
            raise StoryError(f"a step holds {len(self.params)} URL parameters; at most {MAX_PARAMS}")
        clean: dict[str, str] = {}
        for k, v in self.params.items():
            if not isinstance(k, str) or not _PARAM.fullmatch(k):
                raise StoryError(f"URL parameter name {k!r} is not allowed (letters, digits and '_', up to 40)")
            if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                raise StoryError(f"URL parameter {k!r} must be text or a number, got {type(v).__name__}")
            clean[k] = _text(str(v), f"URL parameter {k!r}", MAX_VALUE_CHARS)
        object.__setattr__(self, "params", clean)
        _text(self.title, "step title", MAX_TITLE_CHARS)
        _text(self.caption, "step caption", MAX_CAPTION_CHARS)

    def to_json(self) -> dict[str, Any]:
        """The step as plain JSON data."""
        return {"page": self.page, "params": dict(self.params), "title": self.title, "caption": self.caption}

    @classmethod
    def from_json(cls, data: object) -> "StoryStep":
        """A step from JSON data, validated."""
        if not isinstance(data, Mapping):
            raise StoryError("a story step must be a JSON object")
        unknown = set(data) - {"page", "params", "title", "caption"}
        if unknown:
            raise StoryError(f"unknown fields in a story step: {sorted(unknown)}")
        return cls(page=data.get("page"), params=data.get("params") or {}, title=data.get("title", ""),
                   caption=data.get("caption", ""))


@dataclass(frozen=True)
class Story:
    """A named, ordered list of steps; edits return a new Story (save it with `save_story`)."""

    name: str
    title: str = ""
    steps: tuple[StoryStep, ...] = ()
    created: str = ""
    updated: str = ""

    def __post_init__(self) -> None:
        check_story_name(self.name)
        _text(self.title, "story title", MAX_TITLE_CHARS)
        object.__setattr__(self, "steps", tuple(self.steps))
        if len(self.steps) > MAX_STEPS:
            raise StoryError(f"a story holds at most {MAX_STEPS} steps")
        if not all(isinstance(s, StoryStep) for s in self.steps):
            raise StoryError("story steps must be StoryStep objects")

    def __len__(self) -> int:
        return len(self.steps)

    def _index(self, i: int) -> int:
        if not isinstance(i, int) or not 0 <= i < len(self.steps):
            raise StoryError(f"step {i + 1 if isinstance(i, int) else i!r} does not exist: "
                             f"the story has {len(self.steps)} step(s)")
        return i

    def with_step(self, step: StoryStep) -> "Story":
        """The story with `step` appended."""
        return replace(self, steps=(*self.steps, step))

    def without_step(self, i: int) -> "Story":
        """The story with step i (0-based) removed."""
        i = self._index(i)
        return replace(self, steps=self.steps[:i] + self.steps[i + 1:])

    def moved(self, i: int, offset: int) -> "Story":
        """The story with step i moved `offset` places (clamped to the ends)."""
        i = self._index(i)
        j = min(max(i + offset, 0), len(self.steps) - 1)
        steps = list(self.steps)
        steps.insert(j, steps.pop(i))
        return replace(self, steps=tuple(steps))

    def with_caption(self, i: int, title: str, caption: str) -> "Story":
        """The story with step i's title and caption replaced."""
        i = self._index(i)
        steps = list(self.steps)
        steps[i] = replace(steps[i], title=title, caption=caption)
        return replace(self, steps=tuple(steps))

    def to_json(self) -> dict[str, Any]:
        """The story as plain JSON data (what the file holds)."""
        return {"format": FORMAT_VERSION, "name": self.name, "title": self.title, "created": self.created,
                "updated": self.updated, "steps": [s.to_json() for s in self.steps]}

    @classmethod
    def from_json(cls, data: object) -> "Story":
        """A story from JSON data, validated."""
        if not isinstance(data, Mapping):
            raise StoryError("a story file must hold a JSON object")
        if data.get("format") != FORMAT_VERSION:
            raise StoryError(f"story format {data.get('format')!r} is not supported (this version reads {FORMAT_VERSION})")
        steps = data.get("steps")
        if not isinstance(steps, list):
            raise StoryError("a story's steps must be a JSON list")
        return cls(name=data.get("name"), title=data.get("title", ""), steps=tuple(StoryStep.from_json(s) for s in steps),
                   created=str(data.get("created", "")), updated=str(data.get("updated", "")))


def list_stories(ws: Workspace) -> list[str]:
    """Names of the stories saved in the workspace, sorted."""
    folder = ws.stories_dir
    if not folder.is_dir():
        return []
    names = []
    for p in folder.glob("*.json"):
        try:
            names.append(check_story_name(p.stem))
        except StoryError:
            continue  # a file someone dropped there by hand with a name the app could not address
    return sorted(names)


def load_story(ws: Workspace, name: str) -> Story:
    """Read and validate one story; a missing or malformed file raises a StoryError that says so."""
    path = ws.story_path(check_story_name(name))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoryError(f"no story named {name!r} in this workspace") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise StoryError(f"the story file {path.name} is not valid JSON ({e})") from None
    story = Story.from_json(data)
    if story.name != name:
        story = replace(story, name=name)  # the file name wins: a renamed file is that story
    return story


def save_story(ws: Workspace, story: Story) -> Story:
    """Write a story atomically (stamping created/updated) and return what was written."""
    stamp = now_utc()
    story = replace(story, created=story.created or stamp, updated=stamp)
    atomic_write_json(ws.story_path(story.name), story.to_json())
    return story


def new_story(ws: Workspace, name: str, title: str = "") -> Story:
    """Create and save an empty story; refuses a name already taken."""
    name = check_story_name(name)
    if ws.story_path(name).exists():
        raise StoryError(f"a story named {name!r} already exists; pick another name")
    return save_story(ws, Story(name=name, title=title or name.replace("_", " ")))


def delete_story(ws: Workspace, name: str) -> None:
    """Remove a story file (a missing one is not an error)."""
    ws.story_path(check_story_name(name)).unlink(missing_ok=True)
