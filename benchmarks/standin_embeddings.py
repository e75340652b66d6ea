"""A STAND-IN for AlphaEarth over a simulated AOI: a 64-band GeoTIFF made from simple per-pixel features.

Not AlphaEarth: each pixel's [S2 B4 B3 B2, S1 VV VH (dB), coherence channels] (standardised over the AOI,
missing modalities 0) goes through one fixed random projection to 64 dimensions and is L2-normalised per
pixel (AlphaEarth's vectors are unit length too); pixels with no modality at all are all-zero (AlphaEarth's
no-data). Pixels are `--factor` x `--factor` store pixels averaged, on the AOI's own grid and CRS, so
`python -m data.ingest embeddings --product alphaearth` pools it back onto the chips. Used for the closing
note of issue #17:

    python -m benchmarks.standin_embeddings --workspace /tmp/ext-ws --aoi conus --out /tmp/standin.tif
    python -m data.ingest embeddings --workspace /tmp/ext-ws --aoi conus --name alphaearth-standin \\
        --product alphaearth /tmp/standin.tif
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

from data.external import store_grid
from data.workspace import Workspace


def pixel_features(ws: Workspace, aoi: str, factor: int) -> tuple[np.ndarray, Affine, str]:
    """Per-pixel features of the whole AOI as [F, H, W] (NaN where a modality is missing), its transform and CRS."""
    store = ws.open_store(aoi)
    grid = store_grid(ws, aoi)
    s = store.meta.chip_size // factor
    r0, c0 = grid.rows.min(), grid.cols.min()
    n_rows, n_cols = grid.rows.max() - r0 + 1, grid.cols.max() - c0 + 1
    mods = list(store.modalities)
    n_feat = sum(len(store.meta.channels[m]) for m in mods)
    out = np.full((n_feat, n_rows * s, n_cols * s), np.nan, dtype=np.float32)
    for start in range(0, len(store), 256):
        pos = np.arange(start, min(start + 256, len(store)))
        blocks = []
        for m in mods:
            x = store.read(m, pos)  # [n, C, H, W]
            n, c, h, w = x.shape
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN block (missing modality) stays NaN
                x = np.nanmean(x.reshape(n, c, h // factor, factor, w // factor, factor), axis=(3, 5))
            blocks.append(x)
        feats = np.concatenate(blocks, axis=1)  # [n, F, s, s]
        for k, p in enumerate(pos):
            r, c = grid.rows[p] - r0, grid.cols[p] - c0
            out[:, r * s:(r + 1) * s, c * s:(c + 1) * s] = feats[k]
    west, north = grid.bounds[:, 0].min(), grid.bounds[:, 3].max()
    px = (grid.bounds[0, 2] - grid.bounds[0, 0]) / s
    return out, Affine(px, 0, west, 0, -px, north), grid.crs.to_string()


def standin(features: np.ndarray, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Standardise each feature, project with a fixed random matrix to `dim`, L2-normalise per pixel: [dim, H, W]."""
    f = features.reshape(features.shape[0], -1)
    none = ~np.isfinite(f).any(axis=0)
    mean, std = np.nanmean(f, axis=1, keepdims=True), np.nanstd(f, axis=1, keepdims=True)
    z = np.nan_to_num((f - mean) / np.where(std > 0, std, 1.0), nan=0.0)
    proj = np.random.default_rng(seed).normal(size=(dim, f.shape[0])).astype(np.float32)
    e = np.tanh(proj @ z)  # a mild non-linearity, as an encoder would have
    e /= np.maximum(np.linalg.norm(e, axis=0, keepdims=True), 1e-12)
    e[:, none] = 0.0
    return e.reshape(dim, *features.shape[1:]).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    """Write the stand-in GeoTIFF."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.standin_embeddings", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, default=None)
    ap.add_argument("--aoi", default="conus")
    ap.add_argument("--factor", type=int, default=4, help="store pixels per stand-in pixel side (default 4)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    ws = Workspace(args.workspace)
    feats, transform, crs = pixel_features(ws, args.aoi, args.factor)
    emb = standin(feats)
    with rasterio.open(args.out, "w", driver="GTiff", height=emb.shape[1], width=emb.shape[2], count=emb.shape[0],
                       dtype="float32", crs=crs, transform=transform, tiled=True, compress="deflate") as dst:
        dst.write(emb)
        dst.descriptions = tuple(f"A{i:02d}" for i in range(emb.shape[0]))
    print(f"wrote {args.out}: {emb.shape[0]} bands, {emb.shape[1]} x {emb.shape[2]} px, {crs} (a STAND-IN, not AlphaEarth)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
