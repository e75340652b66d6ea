"""Command lines: known errors are one line and exit 2; one writer per workspace; killed runs' temps are cleaned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from data.atomic import temp_sibling
from data.cli import CliError, KnownError, run_cli
from data.store import StoreError
from data.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


def _python(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


# (module, arguments; {ws} is an empty workspace, {tmp} the test folder) -> what the one line says
CASES = [
    ("core.embed", ["--workspace", "{ws}", "--aoi", "nowhere", "--quiet"], "no chip store at"),
    ("core.embed", ["--workspace", "{ws}", "--quiet"], "no chip stores in"),
    ("training.pretrain", ["--config", "nosuch"], "config 'nosuch' is neither a file nor one of the named configs"),
    ("core.pipeline", ["build", "--workspace", "{ws}", "--aoi", "bad.name", "--quiet"], "AOI name 'bad.name' is not allowed"),
    ("core.pipeline", ["build", "--workspace", "{ws}", "--aoi", "nowhere", "--steps", "store", "--quiet"],
     "no usable store for AOI(s) ['nowhere']"),
    ("core.evaluate", ["--workspace", "{ws}", "--quiet"], "no chip stores in"),
    ("core.evaluate", ["--workspace", "{ws}", "--budgets", "1", "--quiet"], "budget 1 is too small"),
    ("data.ingest", ["geotiff", "--aoi", "x", "--workspace", "{ws}", "--s2", "{tmp}/nope.tif", "--quiet"],
     "nope.tif: no such file"),
    ("data.ingest", ["geotiff", "--aoi", "a.b", "--workspace", "{ws}", "--s2", "{tmp}/nope.tif", "--quiet"],
     "AOI name 'a.b' is not allowed"),
    ("data.simulate", ["--workspace", "{ws}", "--aoi", "conus", "--chips-per-aoi", "0", "--workers", "1"],
     "the number of chips must be positive"),
    ("data.simulate", ["--workspace", "{ws}", "--missing", "s2rgb=lots"], "--missing rates must be numbers"),
    ("core.mapping", ["labelsets", "--aoi", "../x", "--workspace", "{ws}"], "AOI name '../x' is not allowed"),
    ("core.retrieval", ["--checkpoint", "{tmp}/nockpt"], "is not a checkpoint: config.yaml is missing"),
]


# Runs each case as `python -m <module>` would (runpy, run_name="__main__") in ONE interpreter: 13 separate
# start-ups importing torch cost minutes on a loaded machine. The serialise test below runs a real `python -m`.
_HARNESS = """
import contextlib, io, json, runpy, sys, traceback, warnings
warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)  # re-running a module
out = []
for module, argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    sys.argv = [module, *argv]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code
        except BaseException:
            code, _ = "raised", traceback.print_exc(file=err)
    out.append([code, err.getvalue()])
print(json.dumps(out))
"""


def test_every_cli_says_a_known_error_in_one_line_and_exits_2(tmp_path):
    ws = tmp_path / "ws"
    cases = [[module, [a.format(ws=ws, tmp=tmp_path) for a in args]] for module, args, _ in CASES]
    proc = _python("-c", _HARNESS, json.dumps(cases))
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    for (module, args, expected), (code, text) in zip(CASES, json.loads(out.splitlines()[-1])):
        what = f"python -m {module} {' '.join(args)}"
        assert code == 2, f"{what}: exit {code}\n{text}"
        assert "Traceback" not in text and len(text.strip().splitlines()) == 1, f"{what}:\n{text}"
        assert text.startswith("error: ") and expected in text, f"{what}: {text}"


def test_run_cli_keeps_the_traceback_of_unknown_errors(capsys):
    def known(argv):
        raise StoreError("chunk 3 is gone;\n  rebuild with `python -m data.simulate`")

    assert run_cli(known) == 2
    assert capsys.readouterr().err == "error: chunk 3 is gone; rebuild with `python -m data.simulate`\n"
    assert run_cli(lambda argv: (_ for _ in ()).throw(CliError("bad"))) == 2 and issubclass(CliError, KnownError)
    assert run_cli(lambda argv: (_ for _ in ()).throw(FileNotFoundError(2, "No such file", "x.tif"))) == 2
    with pytest.raises(ZeroDivisionError):  # a bug, not a known error: the traceback stays
        run_cli(lambda argv: 1 / 0)
    with pytest.raises(ValueError):  # plain ValueError only where a CLI declares it (`also=`)
        run_cli(lambda argv: int("x"))
    assert run_cli(lambda argv: int("x"), also=(ValueError,)) == 2


def test_two_builds_of_one_workspace_serialise(tmp_path):
    ws = Workspace(tmp_path / "ws")
    with ws.lock("test build"):
        proc = _python("-m", "data.simulate", "--workspace", str(ws.root), "--aoi", "conus", "--chips-per-aoi", "4",
                       "--workers", "1")
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
        reader.start()
        deadline = time.time() + 120
        while not any("waiting for another build" in line for line in lines) and proc.poll() is None:
            assert time.time() < deadline, "the second build never said it waits"
            time.sleep(0.1)
        time.sleep(0.5)
        assert proc.poll() is None, "the second build ran while the first held the lock"
        assert not ws.store_path("conus").exists()
    out = proc.stdout.read()
    assert proc.wait(timeout=240) == 0
    reader.join(timeout=10)
    waiting = next(line for line in lines if "waiting for another build" in line)
    assert waiting.strip() == f"waiting for another build of this workspace (pid {os.getpid()}: test build)..."
    assert "built" in out and ws.open_store("conus").verify() == "ok"


def test_lock_is_reentrant_and_serialises_threads(tmp_path):
    ws = Workspace(tmp_path / "ws")
    said: list[str] = []
    order: list[str] = []
    with ws.lock("outer"):
        with ws.lock("inner"):  # the same thread: no wait, no deadlock
            order.append("inner")
        t = threading.Thread(target=lambda: ws.lock("other", on_wait=said.append).__enter__() or order.append("thread"))
        t.start()
        time.sleep(0.3)
        assert order == ["inner"] and said and "another thread" in said[0]
    t.join(timeout=10)
    assert order == ["inner", "thread"]


def test_killed_runs_temp_folders_are_cleaned_by_the_next_run(tmp_path):
    ws = Workspace(tmp_path / "ws")
    target = ws.store_path("conus")
    # A run killed inside an atomic write leaves its temp sibling behind.
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys; from pathlib import Path; from data.atomic import atomic_dir\n"
        f"with atomic_dir(Path({str(target)!r})) as tmp:\n"
        "    (tmp / 'arrays.zarr').mkdir(); (tmp / 'arrays.zarr' / 'chunk').write_bytes(b'x' * 100)\n"
        "    print(tmp.name, flush=True); os.kill(os.getpid(), signal.SIGKILL)\n")],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    orphan = target.parent / killed.stdout.strip()
    assert orphan.is_dir() and orphan.name.startswith(".conus.tmp-")
    emb = ws.embeddings_dir("conus", "m")
    emb.parent.mkdir(parents=True)
    orphan_file = temp_sibling(emb.parent / "meta.json")
    orphan_file = orphan_file.with_name(orphan_file.name.replace(f"-{os.getpid()}-", f"-{_dead_pid()}-"))
    orphan_file.write_text("{}")
    live = temp_sibling(ws.label_set_path("conus", "water"))  # e.g. the app saving a label set right now
    live.parent.mkdir(parents=True)
    live.write_text("x")
    work = emb.parent / ".work-full"  # an interrupted embedding's resumable parts: not a temp
    work.mkdir()
    legacy_old, legacy_new = target.parent / ".old.tmp-0123abcd", target.parent / ".new.tmp-4567cdef"
    legacy_old.mkdir(), legacy_new.mkdir()
    os.utime(legacy_old, (time.time() - 2 * 86400,) * 2)
    time.sleep(0.05)
    with ws.lock("next run"):  # taking the writer lock is what sweeps the killed runs' temps
        assert ws.lock_path.is_file()
    assert not orphan.exists() and not orphan_file.exists() and not legacy_old.exists()
    assert live.exists() and work.is_dir() and legacy_new.exists()


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def test_ingest_into_a_workspace_waits_for_its_lock(tmp_path, capsys):
    from data.ingest import main as ingest_main

    ws = Workspace(tmp_path / "ws")
    codes: list[int] = []
    argv = ["geotiff", "--aoi", "site", "--workspace", str(ws.root), "--s2", str(tmp_path / "nope.tif"), "--quiet"]
    with ws.lock("test build"):
        t = threading.Thread(target=lambda: codes.append(ingest_main(argv)))
        t.start()
        time.sleep(0.5)
        assert t.is_alive() and not codes  # waiting for the lock, not failing on the missing file yet
    t.join(timeout=60)
    err = capsys.readouterr().err
    assert codes == [2] and "waiting for another build of this workspace" in err and "nope.tif: no such file" in err
