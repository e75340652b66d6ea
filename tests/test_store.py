"""Chip store: round trip, atomicity, validation of damaged stores, dataset masks, workspace."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import geopandas as gpd
import numpy as np
import pytest
import torch

from data.dataset import ChipDataset
from data.store import ChipStore, ChipStoreWriter, StoreError
from data.workspace import Workspace
from tests.conftest import REPO, make_batch, make_meta


def test_round_trip(tiny_store, tmp_path):
    meta = make_meta()
    arrays, rows = make_batch(meta, 20, 20)
    got = tiny_store.read("s2rgb", np.arange(20, 40))
    np.testing.assert_array_equal(got, arrays["s2rgb"])
    # arbitrary order and repeats come back in the caller's order
    pos = np.array([45, 2, 45, 17])
    ref = np.stack([tiny_store.read("s1amp", int(p)) for p in pos])
    np.testing.assert_array_equal(tiny_store.read("s1amp", pos), ref)
    assert len(tiny_store) == 50
    assert tiny_store.modalities == ["s2rgb", "s1amp"]
    chip = tiny_store.read_chip("tiny-00021")
    np.testing.assert_array_equal(chip["s2rgb"], arrays["s2rgb"][1])
    assert list(tiny_store.positions_of(["tiny-00049", "tiny-00000"])) == [49, 0]


def test_availability_and_labels(tiny_store):
    idx = tiny_store.index
    assert not idx.loc[3, "has_s1amp"] and idx.loc[4, "has_s1amp"]
    assert idx.loc[4, "has_s1amp_VV"] and not idx.loc[4, "has_s1amp_VH"]
    assert not idx["has_coh"].any()  # not stored -> missing everywhere
    assert tiny_store.channel_available("s1amp").shape == (50, 2)
    assert np.isnan(tiny_store.labels("builtup")).all()
    w = tiny_store.labels("water")
    assert ((w >= 0) & (w <= 1)).all()
    with pytest.raises(KeyError, match="unknown task"):
        tiny_store.labels("forest")
    with pytest.raises(KeyError, match="no 'coh' data"):
        tiny_store.read("coh", 0)


def test_opens_in_geopandas_with_crs(tiny_store):
    gdf = gpd.read_parquet(tiny_store.path / "chips.parquet")
    assert gdf.crs.to_epsg() == 4326 and len(gdf) == 50
    hits = tiny_store.query_bbox(15.0, 47.0, 15.025, 47.005)
    assert set(hits["position"]) == {0, 1, 2}
    with pytest.raises(ValueError, match="empty bounding box"):
        tiny_store.query_bbox(1, 1, 0, 0)


def test_dataset_masks_and_missing_modality(tiny_store):
    ds = ChipDataset(tiny_store)
    s = ds[4]
    assert s["s1amp"].shape == (2, 8, 8) and s["s1amp_mask"].tolist() == [True, False]
    assert torch.all(s["s1amp"][1] == 0)
    assert ds[3]["s1amp_mask"].tolist() == [False, False]
    assert ds[0]["coh_mask"].tolist() == [False, False] and torch.all(ds[0]["coh"] == 0)
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    b = next(iter(loader))
    assert b["s2rgb"].shape == (8, 3, 8, 8) and b["chip_id"][0] == "tiny-00000"
    assert torch.isfinite(b["s2rgb"]).all()


def test_existing_store_not_overwritten(tiny_store):
    meta = make_meta()
    with pytest.raises(FileExistsError, match="overwrite"):
        ChipStoreWriter(tiny_store.path, meta)


def test_error_inside_writer_leaves_nothing(tmp_path):
    meta = make_meta()
    with pytest.raises(ValueError, match="expected shape"):
        with ChipStoreWriter(tmp_path / "s", meta) as w:
            arrays, rows = make_batch(meta, 0, 5)
            w.append(arrays, rows)
            arrays["s2rgb"] = arrays["s2rgb"][:, :2]
            w.append(arrays, rows)
    assert os.listdir(tmp_path) == []


def test_killed_write_leaves_no_store(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from data.store import ChipStoreWriter
        from tests.conftest import make_batch, make_meta
        meta = make_meta()
        with ChipStoreWriter({str(tmp_path / 'killed')!r}, meta, shard_chips=4) as w:
            for start in range(0, 10_000, 10):
                w.append(*make_batch(meta, start, 10))
                if start == 40:
                    print("writing", flush=True)
        """
    )
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "killed").exists()
    with pytest.raises(StoreError, match="no chip store"):
        ChipStore.open(tmp_path / "killed")


def test_damaged_stores_are_refused_clearly(tiny_store, tmp_path):
    import shutil

    def clone(name):
        d = tmp_path / name
        shutil.copytree(tiny_store.path, d)
        return d

    d = clone("no_spec")
    (d / "store.json").unlink()
    with pytest.raises(StoreError, match="not a complete chip store"):
        ChipStore.open(d)

    d = clone("bad_json")
    (d / "store.json").write_text("{ not json")
    with pytest.raises(StoreError, match="corrupt"):
        ChipStore.open(d)

    d = clone("old_version")
    spec = json.loads((d / "store.json").read_text())
    spec["format_version"] = 0
    (d / "store.json").write_text(json.dumps(spec))
    with pytest.raises(StoreError, match="format 0"):
        ChipStore.open(d)

    d = clone("bad_parquet")
    (d / "chips.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(StoreError, match="cannot read the chip index"):
        ChipStore.open(d)

    d = clone("wrong_channels")
    spec = json.loads((d / "store.json").read_text())
    spec["meta"]["channels"]["s1amp"] = ["VV"]
    (d / "store.json").write_text(json.dumps(spec))
    with pytest.raises(StoreError, match="shape"):
        ChipStore.open(d)

    d = clone("no_arrays")
    shutil.rmtree(d / "arrays.zarr")
    with pytest.raises(StoreError, match="cannot read the arrays"):
        ChipStore.open(d)


def test_meta_validation(tmp_path):
    with pytest.raises(ValueError, match="AOI name"):
        ChipStoreWriter(tmp_path / "x", make_meta(aoi="../evil"))
    with pytest.raises(KeyError, match="unknown channel"):
        ChipStoreWriter(tmp_path / "x", make_meta(channels={"s1amp": ["HH"]}))
    with pytest.raises(ValueError, match="unknown modality"):
        ChipStoreWriter(tmp_path / "x", make_meta(channels={"lidar": ["z"]}))


def test_workspace_paths_and_manifest(tiny_store, tmp_path, monkeypatch):
    monkeypatch.setenv("EO_WORKSPACE", str(tmp_path / "ws"))
    ws = Workspace()
    assert ws.root == (tmp_path / "ws").resolve()
    assert ws.list_stores() == []
    import shutil

    shutil.copytree(tiny_store.path, ws.store_path("tiny"))
    assert ws.list_stores() == ["tiny"] and len(ws.open_store("tiny")) == 50
    ws.record("simulate", aois=["tiny"])
    assert ws.manifest["steps"]["simulate"]["aois"] == ["tiny"]
    assert "torch" in ws.manifest["steps"]["simulate"]["versions"]
    with pytest.raises(ValueError):
        ws.store_path("../etc")
    with pytest.raises(ValueError, match="outside the workspace"):
        ws.confine("/etc/passwd")
    assert ws.confine("stores/tiny") == ws.store_path("tiny")


# ----------------------------------------------------------------------------------------------- integrity


def _shard(store: ChipStore, modality: str, k: int = 0):
    return store.path / "arrays.zarr" / modality / "c" / str(k) / "0" / "0" / "0"


def test_deleted_chunk_is_an_error_not_a_missing_modality(tiny_store):
    assert tiny_store.verify() == "ok" and tiny_store.verify(deep=True) == "ok"
    _shard(tiny_store, "s1amp", 1).unlink()  # chips 16..31
    store = ChipStore.open(tiny_store.path)
    np.testing.assert_array_equal(store.read("s1amp", 0).shape, (2, 8, 8))  # other shards still read
    with pytest.raises(StoreError, match=r"tiny-00016.*recorded present but reads as missing.*data.simulate --aoi tiny"):
        store.read("s1amp", 16)
    with pytest.raises(StoreError, match="tiny-00016"):
        store.read("s1amp", np.arange(10, 20))
    with pytest.raises(StoreError, match="reads as missing"):
        ChipDataset(store)[20]
    status = store.verify()
    assert status.startswith("damaged: arrays.zarr/s1amp/c/1/0/0/0 is missing (the s1amp data of chips tiny-00016..tiny-00031)")
    assert "rebuild with `python -m data.simulate --aoi tiny --overwrite`" in status


def test_corrupt_chunk_fails_on_read_and_deep_verify(tiny_store):
    f = _shard(tiny_store, "s2rgb", 0)
    b = bytearray(f.read_bytes())
    b[40:48] = bytes(x ^ 0xFF for x in b[40:48])  # flip bytes inside the first chunk, size unchanged
    f.write_bytes(bytes(b))
    store = ChipStore.open(tiny_store.path)
    assert store.verify() == "ok"  # the cheap check compares sizes of chunks only
    assert store.verify(deep=True).startswith("damaged: arrays.zarr/s2rgb/c/0/0/0/0 does not match its checksum")
    with pytest.raises(StoreError, match=r"s2rgb data of chip\(s\) tiny-00000 cannot be read.*chunk is damaged"):
        store.read("s2rgb", 0)
    f.write_bytes(bytes(b[: len(b) // 2]))  # truncated
    assert "has " in ChipStore.open(tiny_store.path).verify() and "bytes" in ChipStore.open(tiny_store.path).verify()


def test_verify_small_files_and_unreadable_store(tiny_store):
    from data.store import verify_store

    idx = tiny_store.path / "chips.parquet"
    b = bytearray(idx.read_bytes())
    b[len(b) // 2] ^= 0xFF
    idx.write_bytes(bytes(b))
    status = verify_store(tiny_store.path)
    assert status.startswith("damaged:") and ("chips.parquet" in status)
    (tiny_store.path / "store.json").unlink()
    assert verify_store(tiny_store.path).startswith("damaged: ") and "store.json is missing" in verify_store(tiny_store.path)


def test_unrecorded_chunk_is_damage(tmp_path):
    meta = make_meta()
    with ChipStoreWriter(tmp_path / "t", meta, shard_chips=4) as w:
        arrays, rows = make_batch(meta, 0, 8)
        arrays["s1amp"][4:8] = np.nan  # second shard of s1amp is never written
        w.append(arrays, rows)
    store = ChipStore.open(tmp_path / "t")
    assert store.verify() == "ok"
    import shutil

    dst = store.path / "arrays.zarr" / "s1amp" / "c" / "1" / "0" / "0" / "0"
    dst.parent.mkdir(parents=True)
    shutil.copy(_shard(store, "s1amp", 0), dst)
    assert "arrays.zarr/s1amp/c/1/0/0/0 was not written with the store" in store.verify()
    with pytest.raises(StoreError, match="does not match the recorded availability"):
        store.read("s1amp", 5)


def _real_store_named(path, aoi: str) -> ChipStore:
    """A small real (simulated=False) store at `path` that carries a demo AOI's name."""
    meta = make_meta(aoi=aoi)
    meta.simulated = False
    meta.extra = {"ingest": {"kind": "geotiff", "command": f"python -m data.ingest geotiff --s2 x.tif --aoi {aoi} --overwrite"}}
    with ChipStoreWriter(path, meta, shard_chips=4) as w:
        w.append(*make_batch(meta, 0, 8))
    return ChipStore.open(path)


def test_simulator_never_regenerates_over_a_damaged_real_store(tmp_path):
    from data.landcover import DEFAULT_AOIS
    from data.simulate import RealDataInTheWay, build_default_stores, main as simulate_main

    aoi = DEFAULT_AOIS[0]
    ws = Workspace(tmp_path / "ws")
    store = _real_store_named(ws.store_path(aoi), aoi)
    _shard(store, "s2rgb", 1).unlink()
    before = sorted(p.name for p in store.path.rglob("*"))
    for overwrite in (False, True):
        with pytest.raises(RealDataInTheWay, match=rf"holds real \(ingested, simulated=false\) data named '{aoi}' "
                                                    r"\(arrays.zarr/s2rgb/c/1/0/0/0 is missing.*never writes over real data"):
            build_default_stores(ws, aois=[aoi], n_rows=2, n_cols=2, chip_size=8, workers=1, overwrite=overwrite,
                                 progress=False)
    assert sorted(p.name for p in store.path.rglob("*")) == before  # nothing touched
    assert simulate_main(["--workspace", str(ws.root), "--aoi", aoi, "--rows", "2", "--cols", "2", "--chip-size", "8",
                          "--workers", "1", "--overwrite"]) == 2
    (store.path / "store.json").unlink()
    with pytest.raises(RealDataInTheWay, match="not a store the simulator wrote"):
        build_default_stores(ws, aois=[aoi], n_rows=2, n_cols=2, chip_size=8, workers=1, progress=False)


def test_damaged_simulated_store_is_rebuilt_and_status_says_damaged(tmp_path):
    from core.pipeline import status
    from data.landcover import DEFAULT_AOIS
    from data.simulate import build_default_stores

    aoi = DEFAULT_AOIS[0]
    ws = Workspace(tmp_path / "ws")
    kw = dict(aois=[aoi], n_rows=2, n_cols=2, chip_size=8, workers=1, progress=False)
    assert build_default_stores(ws, **kw) == {aoi: "built"}
    row = status(ws, aois=[aoi], steps=["store"]).iloc[0]
    assert row.state == "built"
    shard = next((ws.store_path(aoi) / "arrays.zarr" / "s2rgb").rglob("c/*/0/0/0"))
    shard.unlink()
    row = status(ws, aois=[aoi], steps=["store"]).iloc[0]
    assert row.state == "damaged"
    assert row.detail.startswith(f"rebuild with `python -m data.simulate --aoi {aoi} --overwrite`: arrays.zarr/s2rgb/c/0/0/0/0 is missing")
    assert build_default_stores(ws, **kw) == {aoi: "rebuilt"}
    assert status(ws, aois=[aoi], steps=["store"]).iloc[0].state == "built"

    real = _real_store_named(tmp_path / "ws2" / "stores" / "mine", "mine")
    _shard(real, "s1amp", 0).unlink()
    row = status(Workspace(tmp_path / "ws2"), aois=["mine"], steps=["store"]).iloc[0]
    assert row.state == "damaged" and row.detail.startswith("rebuild with `python -m data.ingest geotiff --s2 x.tif --aoi mine")
