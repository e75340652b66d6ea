"""data.samples: the real samples are found beside this checkout, beside the one it was cloned from, or by env."""

from __future__ import annotations

import subprocess

from data import samples


def test_env_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("EO_SHARED_DATA", str(tmp_path))
    assert samples.shared_data_dir() == tmp_path


def test_found_beside_the_origin_of_a_local_clone(monkeypatch, tmp_path):
    origin = tmp_path / "work" / "main"
    (tmp_path / "work" / "shared" / "data").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(origin)], check=True)
    clone = tmp_path / "elsewhere" / "x"
    clone.parent.mkdir()
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True, capture_output=True)
    monkeypatch.delenv("EO_SHARED_DATA", raising=False)
    monkeypatch.setattr(samples, "REPO", clone)
    assert samples.shared_data_dir() == tmp_path / "work" / "shared" / "data"


def test_the_real_samples_are_reachable_from_this_checkout():
    # The ingest tests read these; a checkout that cannot see them must fail loudly, not skip.
    assert (samples.shared_data_dir() / "sen1floods11-sample").is_dir(), samples.shared_data_dir()
