"""Where the real Earth-observation samples live (`../shared/data` beside the repository; never copied in).

A local clone (`git clone /work/main /tmp/x`) has no `../shared` of its own: it finds the samples
beside the repository it was cloned from. `$EO_SHARED_DATA` overrides both.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _origin_checkout() -> Path | None:
    """The local repository this one was cloned from, if its origin is a folder on this machine."""
    try:
        url = subprocess.run(["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
                             capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    path = Path(url.removeprefix("file://"))
    return path if url and path.is_absolute() and path.is_dir() else None


def shared_data_dir() -> Path:
    """The folder of real samples: $EO_SHARED_DATA, else ../shared/data here or beside the origin checkout."""
    env = os.environ.get("EO_SHARED_DATA")
    if env:
        return Path(env)
    here = REPO.parent / "shared" / "data"
    if here.is_dir():
        return here
    origin = _origin_checkout()
    if origin is not None and (origin.parent / "shared" / "data").is_dir():
        return origin.parent / "shared" / "data"
    return here  # absent: the tests that need it fail on the missing folder, naming it
