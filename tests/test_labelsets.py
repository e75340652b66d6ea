"""Label sets: validation per kind, names, save/load/list/delete, atomic writes, unknown chips, label files."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import data.atomic
from data.labelsets import (
    METADATA_KEY,
    LabelSet,
    LabelSetError,
    delete_label_set,
    label_set_path,
    list_label_sets,
    load_label_set,
    read_label_file,
    save_label_set,
)
from data.workspace import Workspace


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path / "ws")


def test_add_replace_remove_counts():
    ls = LabelSet("tiny", "water")
    a = ls.add(["tiny-00001", "tiny-00002"], "present").add(["tiny-00003"], "absent", source="gallery")
    assert len(ls) == 0 and len(a) == 3, "add returns a new set and leaves the old one untouched"
    b = a.add(["tiny-00001"], "absent", source="suggestion")   # re-labelling replaces
    assert len(b) == 3 and b.label_of("tiny-00001") == "absent" and b.label_of("nope") is None
    assert b.counts() == {"absent": 2, "present": 1}
    assert b.labels.loc[b.labels.chip_id == "tiny-00001", "value"].item() == 0.0
    c = b.remove(["tiny-00002", "not-labelled"])
    assert c.counts() == {"absent": 2, "present": 0} and list(c.labels.columns) == ["chip_id", "label", "value", "source", "added"]
    assert a.add(["x"], True).label_of("x") == "present" and a.add(["x"], 0).label_of("x") == "absent"


@pytest.mark.parametrize("kind,classes,bad", [
    ("binary", None, "maybe"),
    ("multiclass", ["forest", "urban"], "water"),
    ("fraction", None, 1.5),
    ("fraction", None, "high"),
])
def test_label_validated_per_kind(kind, classes, bad):
    ls = LabelSet("tiny", "s", kind=kind, **({"classes": classes} if classes else {}))
    with pytest.raises(LabelSetError, match="label|class"):
        ls.add(["c1"], bad)


def test_kinds_and_classes():
    f = LabelSet("tiny", "frac", kind="fraction").add(["c1"], 0.25).add(["c2"], 0)
    assert f.label_of("c1") == 0.25 and f.counts() == {"labelled": 2, "zero": 1, "nonzero": 1}
    m = LabelSet("tiny", "lc", kind="multiclass", classes=["forest", "urban", "water"]).add(["c1"], "urban")
    assert m.counts() == {"forest": 0, "urban": 1, "water": 0} and m.labels.value.item() == 1.0
    with pytest.raises(LabelSetError, match="multiclass"):
        LabelSet("tiny", "b", classes=["no", "yes"])
    with pytest.raises(LabelSetError, match="kind"):
        LabelSet("tiny", "b", kind="ordinal")
    with pytest.raises(LabelSetError, match="source"):
        LabelSet("tiny", "b").add(["c"], "present", source="telepathy")


@pytest.mark.parametrize("name", ["ok\n", ".hidden", "a.b", "../x", "", "a/b", "sp ace"])
def test_invalid_names_refused_with_one_message(name):
    with pytest.raises(LabelSetError, match="only letters, digits"):
        LabelSet("tiny", name)


def test_round_trip_list_delete(ws, tiny_store):
    ls = LabelSet("tiny", "water", description="lakes").add(["tiny-00001", "tiny-00007"], "present").add(
        ["tiny-00002"], "absent")
    path = save_label_set(ws, ls, store=tiny_store)
    assert path == ws.root / "labelsets" / "tiny" / "water.parquet"
    gdf = gpd.read_parquet(path)   # GeoParquet with the chips' polygons
    assert gdf.crs.to_epsg() == 4326 and gdf.geometry.notna().all() and len(gdf) == 3
    back = load_label_set(ws, "tiny", "water")
    assert back.kind == "binary" and back.description == "lakes" and back.created == ls.created
    pd.testing.assert_frame_equal(back.labels, ls.labels)
    save_label_set(ws, LabelSet("tiny", "frac", kind="fraction").add(["c9"], 0.5))   # no store: plain parquet
    assert load_label_set(ws, "tiny", "frac").label_of("c9") == 0.5
    assert list_label_sets(ws, "tiny") == ["frac", "water"] and list_label_sets(ws, "other") == []
    delete_label_set(ws, "tiny", "frac")
    assert list_label_sets(ws, "tiny") == ["water"]
    with pytest.raises(LabelSetError, match="no label set"):
        delete_label_set(ws, "tiny", "frac")
    with pytest.raises(LabelSetError, match="no label set 'frac'.*water"):
        load_label_set(ws, "tiny", "frac")


def test_unknown_chip_ids_refused_at_save(ws, tiny_store):
    ls = LabelSet("tiny", "water").add(["tiny-00001", "elsewhere-1"], "present")
    with pytest.raises(LabelSetError, match="not in store 'tiny'.*elsewhere-1"):
        save_label_set(ws, ls, store=tiny_store)
    assert not label_set_path(ws, "tiny", "water").exists()
    with pytest.raises(LabelSetError, match="belongs to AOI"):
        save_label_set(ws, LabelSet("other", "water"), store=tiny_store)


def test_failed_write_leaves_old_file_intact(ws, monkeypatch):
    old = LabelSet("tiny", "water").add(["a"], "present")
    path = save_label_set(ws, old)
    before = path.read_bytes()

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(data.atomic.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        save_label_set(ws, old.add(["b"], "absent"))
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["water.parquet"], "no temp file left behind"
    assert len(load_label_set(ws, "tiny", "water")) == 1


def test_corrupt_file_is_a_clear_error(ws):
    path = label_set_path(ws, "tiny", "broken")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not parquet")
    with pytest.raises(LabelSetError, match="damaged"):
        load_label_set(ws, "tiny", "broken")
    pq.write_table(pq.read_table(save_label_set(ws, LabelSet("tiny", "x"))).replace_schema_metadata({}), path)
    with pytest.raises(LabelSetError, match="damaged"):
        load_label_set(ws, "tiny", "broken")


def test_metadata_in_parquet(ws):
    path = save_label_set(ws, LabelSet("tiny", "lc", kind="multiclass", classes=["a", "b"]))
    meta = json.loads(pq.read_schema(path).metadata[METADATA_KEY])
    assert meta["kind"] == "multiclass" and meta["classes"] == ["a", "b"] and meta["updated"]


def test_read_label_files(tmp_path, tiny_store):
    csv = tmp_path / "l.csv"
    pd.DataFrame({"chip_id": ["c1", "c2", "c3"], "label": [1, 0, 1]}).to_csv(csv, index=False)
    ls = read_label_file(csv, aoi="tiny", name="l")
    assert ls.kind == "binary" and ls.counts() == {"absent": 1, "present": 2} and set(ls.labels.source) == {"import"}
    pd.DataFrame({"chip_id": ["c1", "c2"], "label": [0.2, 0.75]}).to_parquet(tmp_path / "f.parquet")
    assert read_label_file(tmp_path / "f.parquet", aoi="tiny", name="f").kind == "fraction"
    gdf = tiny_store.index.iloc[:3][["chip_id", "geometry"]].assign(label=["forest", "urban", "forest"])
    gdf.to_file(tmp_path / "m.geojson", driver="GeoJSON")
    m = read_label_file(tmp_path / "m.geojson", aoi="tiny", name="m")
    assert m.kind == "multiclass" and m.classes == ["forest", "urban"] and m.counts() == {"forest": 2, "urban": 1}
    pd.DataFrame({"chip_id": ["c1", "c1"], "label": [1, 0]}).to_csv(csv, index=False)
    with pytest.raises(LabelSetError, match="conflicting"):
        read_label_file(csv, aoi="tiny", name="l")
    pd.DataFrame({"chip": ["c1"], "label": [1]}).to_csv(csv, index=False)
    with pytest.raises(LabelSetError, match="needs columns chip_id and label"):
        read_label_file(csv, aoi="tiny", name="l")
    with pytest.raises(LabelSetError, match="unsupported"):
        (tmp_path / "x.txt").write_text("x")
        read_label_file(tmp_path / "x.txt", aoi="tiny", name="x")
    assert np.isfinite(ls.labels.value).all()
