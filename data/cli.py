"""One way for every command line to report a known error: one line on stderr, exit status 2, no traceback.

A known error is one whose message already says what is wrong and how to fix it: any `KnownError` (the
domain errors of `data` and `core` derive from it: StoreError, IngestError, CheckpointError, EmbeddingError,
ProbeError, ...) and the built-in errors of a user's path (`USER_PATH_ERRORS`). Anything else is a bug and
keeps its traceback. Every CLI's `main` is wrapped with `@command_line`.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, Sequence

EXIT_KNOWN_ERROR = 2  # the status argparse uses for bad arguments
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class KnownError(Exception):
    """An error whose message says what is wrong and the fix: CLIs print it as one line (no traceback)."""


class CliError(KnownError):
    """A command-line setting that cannot be used (checked by a `main`, not by argparse): the message says why."""


# A user's path that is missing, already there, unreadable or of the wrong kind.
USER_PATH_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError,
)
KNOWN_ERRORS: tuple[type[BaseException], ...] = (KnownError, *USER_PATH_ERRORS)


def error_line(exc: BaseException) -> str:
    """The exception's message on one line (KeyError's quotes dropped; the class name if it has none)."""
    msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(msg.split()) or type(exc).__name__


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None,
            also: tuple[type[BaseException], ...] = ()) -> int:
    """Run a CLI's `main`; a known error (or one of `also`) prints `error: <message>` and returns 2."""
    try:
        return main(argv)
    except (*KNOWN_ERRORS, *also) as e:
        print(f"error: {error_line(e)}", file=sys.stderr, flush=True)
        return EXIT_KNOWN_ERROR
    except KeyboardInterrupt:
        # Every step writes atomically and resumes (or is cleaned by the next run): nothing to report.
        print("interrupted: nothing half-written was kept; rerun the command to continue", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


def command_line(main: Callable[[Sequence[str] | None], int] | None = None, *,
                 also: tuple[type[BaseException], ...] = ()) -> Callable:
    """Decorator of a CLI `main(argv) -> int`: known errors become one line and exit status 2 (see `run_cli`).

    `also` adds built-in error types that this CLI's own inputs raise (e.g. ValueError from settings checks).
    """
    def wrap(func: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
        @functools.wraps(func)
        def wrapper(argv: Sequence[str] | None = None) -> int:
            return run_cli(func, argv, also)
        return wrapper

    return wrap(main) if main is not None else wrap
