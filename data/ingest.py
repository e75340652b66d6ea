"""Real data in: `python -m data.ingest <source> ...` builds a chip store from real Earth-observation data.

Subcommands (each writes `<workspace>/stores/<aoi>/` unless `--out` is given):

    geotiff       your own GeoTIFFs: --s2 (one stack or one file per band), --s1 (VV/VH, dB or linear),
                  --coh (0-1 or percent); any subset, any CRSs/resolutions, put on one grid and chipped
    bigearthnet   BigEarthNet-MM S1/S2 patch folders (one chip per pair, CORINE presence flags)
    sen1floods11  Sen1Floods11 hand-labelled scenes (S1Hand, S2Hand, LabelHand -> flood-time water)
    m3leo         M3LEO-style <aoi>/<aoi>_partitions_aschips_<hash>/<datakind>/<chip_id>.tif folders
    coherence     InSAR coherence pairs (one GeoTIFF per interferogram) -> `coh`, one channel per baseline
    labels        add/overwrite label fractions of an existing store from WorldCover/JRC/GHSL rasters
    embeddings    per-pixel embedding rasters (AlphaEarth, Tessera, any) pooled per chip into a named
                  representation at <workspace>/representations/<aoi>/<name>/ (data.external)

Stores are marked real (simulated=False) and carry provenance: source files, source CRS, acquisition
dates where known. Modalities not given are recorded as missing, never stored as zeros. Writes are
atomic and re-runs are idempotent: the same command on the same inputs finds the finished store and
does nothing; an interrupted run leaves nothing behind and simply starts again (see
data.readers.common). Bad inputs (truncated or corrupt GeoTIFF, no CRS, inputs that do not overlap,
all-NaN data, wrong band count) stop with a message saying what to fix, and leave no store behind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data import external
from data import labels as labels_module
from data.cli import command_line
from data.geotiff import IngestError
from data.labels import add_label_arguments, attach_labels, label_sources
from data.readers import bigearthnet, coherence, m3leo, mosaic, sen1floods11
from data.readers.coherence import DEFAULT_BASELINES, ingest_coherence
from data.readers import (
    IngestResult,
    ModalityInput,
    ingest_bigearthnet,
    ingest_geotiffs,
    ingest_m3leo,
    ingest_sen1floods11,
)
from data.modalities import LABEL_TASKS, MODALITY_KEYS
from data.workspace import Workspace

__all__ = [
    "IngestError", "IngestResult", "ModalityInput", "attach_labels", "ingest_bigearthnet", "ingest_coherence", "ingest_geotiffs",
    "ingest_m3leo", "ingest_sen1floods11", "main",
]


def _bands(text: str | None) -> list[str] | None:
    return [b.strip() for b in text.split(",") if b.strip()] if text else None


def _common(p: argparse.ArgumentParser, *, nodata: bool = True) -> None:
    p.add_argument("--aoi", required=True, help="store name ([A-Za-z0-9_-]+), e.g. austria_ben")
    p.add_argument("--title", help="human title shown in the app (default: derived from the source)")
    p.add_argument("--workspace", type=Path, help="workspace root (default $EO_WORKSPACE or ./workspace)")
    p.add_argument("--out", type=Path, help="write the store here instead of <workspace>/stores/<aoi>")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store built from other inputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    if nodata:
        p.add_argument("--max-nodata", type=float, default=0.5, metavar="FRAC",
                       help="skip chips with more than this fraction of NaN/nodata pixels (default 0.5); skipped chips are counted")
        p.add_argument("--skip-when", choices=("any", "all"), default="any",
                       help="skip a chip when ANY given modality is over --max-nodata (default), or only when ALL are")
    add_label_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of `python -m data.ingest`."""
    ap = argparse.ArgumentParser(
        prog="python -m data.ingest",
        description=__doc__.split("\n\n")[0] + " Stores are real data (simulated=False) with provenance.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python -m data.ingest geotiff --aoi mysite --s2 T33UUP_B04.tif T33UUP_B03.tif T33UUP_B02.tif "
            "--s1 vv.tif vh.tif --chip-size 64\n"
            "  python -m data.ingest bigearthnet ../shared/data/bigearthnet-mm-example --aoi ben_example\n"
            "  python -m data.ingest sen1floods11 ../shared/data/sen1floods11-sample --aoi flood_spain\n"
            "  python -m data.ingest m3leo /data/m3leo/conus --aoi conus_m3leo\n"
            "  python -m data.ingest coherence ../shared/data/pyrate-coherence-sample --aoi mexico_city --baselines 12 24 36 48\n"
            "  python -m data.ingest labels --aoi mysite --worldcover ESA_WorldCover_*_Map.tif --jrc occurrence_*.tif\n"
            "  python -m data.ingest embeddings --aoi mysite --name alphaearth --product alphaearth alphaearth_2024_*.tif"
        ),
    )
    sub = ap.add_subparsers(dest="command", required=True,
                            metavar="{geotiff,bigearthnet,sen1floods11,m3leo,coherence,labels,embeddings}")

    g = sub.add_parser("geotiff", help="your own GeoTIFFs (any subset of S2, S1, coherence)",
                       description=mosaic.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--s2", nargs="+", type=Path, default=[], metavar="TIF", help="Sentinel-2: one stacked file or one file per band")
    g.add_argument("--s2-bands", help="band names of the --s2 files in order, comma-separated (e.g. B2,B3,B4,B8)")
    g.add_argument("--s2-units", choices=("auto", "dn", "reflectance"), default="auto",
                   help="auto: integer files are DN (/10000), float files reflectance unless values > 2")
    g.add_argument("--s2-offset", action="store_true",
                   help="apply the -1000 DN offset of processing baseline >= 04.00 (S2 products from 25 Jan 2022)")
    g.add_argument("--s1", nargs="+", type=Path, default=[], metavar="TIF", help="Sentinel-1: VV/VH stack or one file per polarisation")
    g.add_argument("--s1-bands", help="band names of the --s1 files in order (VV,VH)")
    g.add_argument("--s1-units", choices=("auto", "db", "linear"), default="auto",
                   help="auto: any negative value in sample windows means dB, otherwise linear power (converted to dB)")
    g.add_argument("--coh", nargs="+", type=Path, default=[], metavar="TIF", help="InSAR coherence file(s), 0-1 (or integer percent)")
    g.add_argument("--coh-bands", help="channel names of the coherence bands in order (e.g. VV_12d,VV_36d)")
    g.add_argument("--coh-scale", type=float, help="multiply coherence by this (default: 0.01 for integer files, 1 for float)")
    g.add_argument("--chip-size", type=int, default=64, help="chip side in target pixels (default 64)")
    g.add_argument("--stride", type=int, help="pixels between chip origins (default: chip size, no overlap)")
    g.add_argument("--crs", help="target CRS (default: the reference input's), e.g. EPSG:32633")
    g.add_argument("--res", type=float, help="target pixel size in target-CRS units (default: the reference input's)")
    g.add_argument("--reference", choices=MODALITY_KEYS, help="input whose grid is the target (default: the first given)")
    g.add_argument("--resampling", default="bilinear", choices=("nearest", "bilinear", "cubic", "average"),
                   help="resampling of inputs not already on the target grid (default bilinear)")
    g.add_argument("--max-block-mb", type=float, default=256.0, help="memory budget of one read block (default 256 MB)")
    _common(g)

    b = sub.add_parser("bigearthnet", help="BigEarthNet-MM S1/S2 patch folders", description=bigearthnet.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("root", type=Path, help="folder holding the S1 and S2 patch folders")
    b.add_argument("--s2-offset", action="store_true", help="apply the -1000 DN offset (processing baseline >= 04.00)")
    _common(b)

    f = sub.add_parser("sen1floods11", help="Sen1Floods11 hand-labelled scenes", description=sen1floods11.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("root", type=Path, help="folder holding *_S1Hand.tif, *_S2Hand.tif, *_LabelHand.tif")
    f.add_argument("--chip-size", type=int, default=128, help="chip side in pixels (default 128: 16 chips per 512 px scene)")
    _common(f)

    m = sub.add_parser("m3leo", help="M3LEO-style chip folders", description=m3leo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("root", type=Path, help="dataset root, AOI folder or <aoi>_partitions_aschips_<hash> folder")
    m.add_argument("--source-aoi", help="AOI folder name under root, when it holds several")
    m.add_argument("--chip-size", type=int, help="chip side in pixels (default: the reference chip file's width)")
    m.add_argument("--s2rgbm-scale", type=float, default=1 / 255, help="s2rgbm uint8 -> 0-1 factor (default 1/255)")
    m.add_argument("--s1-units", choices=("auto", "db", "linear"), default="auto", help="units of s1grd (default: from values)")
    _common(m)

    c = sub.add_parser("coherence", help="InSAR coherence pairs -> coh channels per temporal baseline",
                       description=coherence.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("inputs", nargs="+", type=Path, metavar="TIF_OR_DIR",
                   help="coherence pair GeoTIFFs, or folders holding them (*.tif directly inside)")
    c.add_argument("--baselines", nargs="+", type=int, default=list(DEFAULT_BASELINES), metavar="DAYS",
                   help="temporal baselines to keep, one channel VV_<days>d each (default 12 24 36 48, as GSSIC)")
    c.add_argument("--by-season", action="store_true",
                   help="one channel per baseline and season of the pair's mid-date (VV_12d_spring, ...)")
    c.add_argument("--tolerance", type=int, default=0, metavar="DAYS", help="baseline match tolerance (default 0)")
    c.add_argument("--combine", choices=("median", "mean"), default="median",
                   help="per-pixel statistic over the pairs of a channel (default median, as GSSIC)")
    c.add_argument("--nodata", type=float, default=0.0,
                   help="coherence value meaning 'not computed' when a file declares no nodata (default 0)")
    c.add_argument("--chip-size", type=int, default=8,
                   help="chip side in pixels (default 8: 1.2 km chips at 150 m, 84 chips on the PyRate sample)")
    c.add_argument("--stride", type=int, help="pixels between chip origins (default: chip size)")
    _common(c)

    lab = sub.add_parser("labels", help="attach label fractions to an existing store",
                         description=labels_module.__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(lab, nodata=False)
    _embeddings_parser(sub)
    return ap


def _embeddings_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("embeddings", help="per-pixel embedding rasters pooled per chip (AlphaEarth, Tessera, any)",
                       description=external.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("files", nargs="+", type=Path, metavar="FILE", help="GeoTIFF tiles, .npy or .zarr arrays")
    e.add_argument("--aoi", required=True, help="AOI name: its chip store's grid is used when it exists")
    e.add_argument("--name", required=True, help="representation name ([A-Za-z0-9_-]+), e.g. alphaearth")
    e.add_argument("--product", choices=list(external.PRODUCTS), default="generic",
                   help="alphaearth: 64 bands A00..A63; tessera: 128 int8 bands + <tile>_scales; generic: any count")
    e.add_argument("--chip-size", type=int, help="chip side in source pixels, for an AOI without a store (new grid)")
    e.add_argument("--year", type=int, help="year of the embeddings (default: parsed from the file names)")
    e.add_argument("--crs", help="CRS of .npy/.zarr arrays without a sidecar JSON, e.g. EPSG:32615")
    e.add_argument("--transform", type=float, nargs=6, metavar=("A", "B", "C", "D", "E", "F"),
                   help="affine of .npy/.zarr arrays without a sidecar JSON (rasterio order)")
    e.add_argument("--nodata", type=float, help="nodata value (default: the file's declared one)")
    e.add_argument("--workspace", type=Path, help="workspace root (default $EO_WORKSPACE or ./workspace)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")


def _store_path(args: argparse.Namespace) -> tuple[Path, Workspace | None]:
    if args.out is not None:
        return args.out, None
    ws = Workspace(args.workspace)
    try:
        return ws.store_path(args.aoi), ws
    except ValueError as e:
        raise IngestError(str(e)) from None


def run(args: argparse.Namespace) -> IngestResult | None:
    """Run one parsed command; returns the ingest result (None for `labels` and `embeddings`)."""
    if args.command == "embeddings":
        ws = Workspace(args.workspace)
        res = external.ingest_embeddings(ws, args.aoi, args.name, args.files, product=args.product,
                                         chip_size=args.chip_size, year=args.year, crs=args.crs,
                                         transform=args.transform, nodata=args.nodata, progress=not args.quiet)
        print(res.summary())
        return None
    out, ws = _store_path(args)
    labels = label_sources(args)
    common = dict(labels=labels, jrc_threshold=args.jrc_threshold, title=args.title, overwrite=args.overwrite,
                  progress=not args.quiet)
    if args.command == "labels":
        if not labels:
            raise IngestError("labels: give at least one of --worldcover, --jrc, --ghsl")
        notes: list[str] = []
        index = attach_labels(out, labels, jrc_threshold=args.jrc_threshold, progress=not args.quiet, warnings=notes)
        tasks = [t for t in LABEL_TASKS if index[t].notna().any()]
        print(f"{out}: label columns {tasks} written for {len(index)} chips (NaN where a chip has no valid label pixel)")
        for w in notes:
            print(f"warning: {w}", file=sys.stderr)
        if ws is not None:
            ws.record(f"labels:{args.aoi}", store=str(out), products=sorted(labels), n_chips=len(index))
        return None
    nodata = dict(max_nodata=args.max_nodata, skip_when=args.skip_when)
    if args.command == "geotiff":
        res = ingest_geotiffs(
            args.aoi, out,
            s2=ModalityInput(args.s2, _bands(args.s2_bands), args.s2_units) if args.s2 else None,
            s1=ModalityInput(args.s1, _bands(args.s1_bands), args.s1_units) if args.s1 else None,
            coh=ModalityInput(args.coh, _bands(args.coh_bands), scale=args.coh_scale) if args.coh else None,
            chip_size=args.chip_size, stride=args.stride, crs=args.crs, res=args.res, reference=args.reference,
            resampling=args.resampling, s2_offset=args.s2_offset, max_block_mb=args.max_block_mb, **nodata, **common,
        )
    elif args.command == "bigearthnet":
        res = ingest_bigearthnet(args.root, args.aoi, out, s2_offset=args.s2_offset, **nodata, **common)
    elif args.command == "sen1floods11":
        res = ingest_sen1floods11(args.root, args.aoi, out, chip_size=args.chip_size, **nodata, **common)
    elif args.command == "coherence":
        res = ingest_coherence(args.inputs, args.aoi, out, baselines=args.baselines, by_season=args.by_season,
                               tolerance=args.tolerance, combine=args.combine, nodata=args.nodata,
                               chip_size=args.chip_size, stride=args.stride, **nodata, **common)
    else:
        res = ingest_m3leo(args.root, args.aoi, out, source_aoi=args.source_aoi, chip_size=args.chip_size,
                           s2rgbm_scale=args.s2rgbm_scale, s1_units=args.s1_units, **nodata, **common)
    print(res.summary())
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    if ws is not None and not res.up_to_date:
        ws.record(f"ingest:{args.aoi}", store=str(out), source=args.command, n_chips=res.n_chips,
                  n_skipped=res.n_skipped, modalities=res.modalities, missing=res.missing, simulated=False)
    return res


@command_line
def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for bad input, with the reason on stderr)."""
    args = build_parser().parse_args(argv)
    if getattr(args, "out", None) is None:  # inside a workspace: one writer at a time (--out elsewhere: no lock)
        with Workspace(args.workspace).lock("ingest"):
            run(args)
    else:
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
