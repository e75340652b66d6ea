"""Friendly errors: no traceback ever reaches the user.

Every page body runs inside `page_guard`; an exception there is logged server-side with its traceback
and shown to the user as one short message that says what to do. Code that knows what went wrong
raises `UserError(message, fix)`; everything else gets a generic but still actionable message.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Literal

import streamlit as st

from core.representations import RepresentationError
from core.search import SearchError

log = logging.getLogger("eo.app")

Level = Literal["info", "warning", "error"]


class UserError(Exception):
    """A problem the user can fix: `message` says what is wrong, `fix` how to fix it."""

    def __init__(self, message: str, fix: str = "", level: Level = "warning") -> None:
        super().__init__(message)
        self.message, self.fix, self.level = message, fix, level

    def __str__(self) -> str:
        return f"{self.message} {self.fix}".strip()


def explain(exc: BaseException) -> tuple[Level, str]:
    """The level and the one-paragraph message shown for an exception."""
    if isinstance(exc, UserError):
        return exc.level, str(exc)
    if isinstance(exc, (SearchError, RepresentationError)):
        return "warning", str(exc)  # core's errors that carry their fix read like the app's own
    name = type(exc).__name__
    text = str(exc).strip() or name
    if name == "StoreError":
        # Store errors already carry their fix (how to rebuild the store).
        return "warning", text
    if isinstance(exc, ModuleNotFoundError):
        return "error", (
            f"This page needs the Python module `{exc.name}`, which this installation lacks. "
            "Update the checkout and reinstall the requirements (`make setup`), then reload."
        )
    if isinstance(exc, FileNotFoundError):
        return "info", (
            f"Something this page needs has not been built yet ({_short(text)}). "
            "Build the missing steps on the Home page."
        )
    if isinstance(exc, (KeyError, ValueError, IndexError)):
        return "warning", f"That choice cannot be used here: {_short(text)}. Change it in the controls above."
    if isinstance(exc, MemoryError):
        return "error", "Out of memory for this request. Try a smaller label budget, fewer repeats or a smaller AOI."
    return "error", (
        f"Something went wrong ({name}: {_short(text)}). The details are in the server log; "
        "try another choice, or rebuild the workspace from the Home page."
    )


def _short(text: str, limit: int = 300) -> str:
    """One line, at most `limit` characters, quotes stripped (KeyError reprs its message)."""
    line = " ".join(text.split()).strip("'\"")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def show(exc: BaseException) -> None:
    """Draw the friendly message of an exception with the right st.info/st.warning/st.error."""
    level, message = explain(exc)
    {"info": st.info, "warning": st.warning, "error": st.error}[level](message)


@contextmanager
def page_guard(where: str) -> Iterator[None]:
    """Run a page body; log any exception with its traceback and show a short message instead.

    Streamlit's own control flow (st.rerun, st.stop, switching pages) raises BaseException
    subclasses, which pass through untouched.
    """
    try:
        yield
    except Exception as exc:
        if isinstance(exc, UserError):
            log.info("%s: %s", where, exc)
        else:
            log.exception("%s failed", where)
        show(exc)
