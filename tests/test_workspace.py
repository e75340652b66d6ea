"""data.workspace: one owner of the layout, the name rules (full match), scenario names and the step stamp."""

from __future__ import annotations

import os
import re

import pytest

from data.labelsets import LabelSet, LabelSetError, label_set_path
from data.workspace import (
    SCENARIO_FULL,
    SCENARIO_RANDOM,
    Workspace,
    WorkspaceNameError,
    check_name,
    drop_scenario,
    parse_scenario,
)

BAD_NAMES = ["a\n", ".hidden", "a.b", "../x", "", "a/b", "a b", "ä", None]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_aoi_and_label_set_names_get_one_clear_error(tmp_path, name):
    ws = Workspace(tmp_path)
    want = "is not allowed: use only letters, digits, '_' and '-'"
    with pytest.raises(WorkspaceNameError, match=want):
        check_name(name)
    with pytest.raises(WorkspaceNameError, match=want):
        ws.store_path(name)
    with pytest.raises(WorkspaceNameError, match=want):
        ws.labelsets_dir(name)
    with pytest.raises(WorkspaceNameError, match=want):
        ws.embeddings_dir(name, "m")
    with pytest.raises(LabelSetError, match=want):  # data.labelsets uses the same rule and message
        label_set_path(ws, "ok", name)
    with pytest.raises(LabelSetError, match=want):
        label_set_path(ws, name, "ok")
    with pytest.raises(LabelSetError, match=want):
        LabelSet(name if name is not None else 1, "ok")


def test_trailing_newline_is_refused_although_re_match_dollar_would_accept_it():
    assert re.match(r"^[A-Za-z0-9_-]+$", "a\n")  # why the rule is a full match
    with pytest.raises(WorkspaceNameError):
        check_name("a\n")
    assert check_name("conus_2026-a") == "conus_2026-a"


def test_layout_has_one_owner(tmp_path):
    ws = Workspace(tmp_path)
    r = ws.root
    assert ws.store_path("conus") == r / "stores" / "conus"
    assert ws.embeddings_dir("conus", "tiny-sim") == r / "embeddings" / "conus" / "tiny-sim" / "full"
    assert ws.embeddings_dir("conus", "m", "drop-coh-VV_12d+VV_36d").name == "drop-coh-VV_12d+VV_36d"
    assert ws.index_dir("conus", "m", "s2rgb") == r / "indexes" / "conus" / "m" / "s2rgb"
    assert ws.projection_dir("all-aois", "m") == r / "projections" / "all-aois" / "m" / "full"
    assert ws.representation_dir("conus", "alphaearth") == r / "representations" / "conus" / "alphaearth"
    assert ws.evaluation_dir("run-1.5") == r / "evaluations" / "run-1.5"
    assert ws.features_cache_dir("conus") == r / "evaluations" / "_features" / "conus"
    assert ws.label_set_path("conus", "water") == r / "labelsets" / "conus" / "water.parquet"
    with pytest.raises(ValueError, match="unknown scenario"):
        ws.embeddings_dir("conus", "m", "nonsense")
    for bad in ("../x", ".hidden", "a\n"):
        with pytest.raises(WorkspaceNameError):
            ws.index_dir("conus", bad, "fused")
    with pytest.raises(ValueError, match="outside the workspace"):
        ws.confine("../elsewhere")


def test_scenario_names_round_trip():
    assert parse_scenario(SCENARIO_FULL) == {} and parse_scenario(SCENARIO_RANDOM) == {}
    name = drop_scenario("coh", ["VV_36d", "VV_12d"])
    assert name == "drop-coh-VV_12d+VV_36d"  # channels sorted: one name per set of channels
    assert parse_scenario(name) == {"coh": ["VV_12d", "VV_36d"]}
    assert parse_scenario(drop_scenario("s1amp", ["VH"])) == {"s1amp": ["VH"]}
    for bad in ("drop-", "drop-s1amp", "drop-s1amp-", "fullx"):
        with pytest.raises(ValueError, match="unknown scenario"):
            parse_scenario(bad)
    with pytest.raises(ValueError):
        drop_scenario("s1amp", [])


def test_step_stamp_changes_when_a_step_is_rebuilt(tmp_path):
    ws = Workspace(tmp_path)
    before = ws.step_stamp(["conus"], "m")
    assert ws.step_stamp(["conus"], "m") == before  # stat calls only, stable
    meta = ws.embeddings_dir("conus", "m") / "meta.json"
    meta.parent.mkdir(parents=True)
    meta.write_text("{}")
    after_embed = ws.step_stamp(["conus"], "m")
    assert after_embed != before
    index = ws.index_dir("conus", "m", "fused") / "meta.json"
    index.parent.mkdir(parents=True)
    index.write_text("{}")
    assert ws.step_stamp(["conus"], "m") != after_embed
    ws.record("store/conus", action="built")
    stamp = ws.step_stamp(["conus"], "m")
    os.utime(ws.manifest_path, ns=(1, 1))
    assert ws.step_stamp(["conus"], "m") != stamp
