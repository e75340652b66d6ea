"""Exports of search results: GeoJSON (chip polygons with properties) and CSV, built in memory."""

from __future__ import annotations

import geopandas as gpd
import pandas as pd

from data.modalities import LABEL_TASKS

EXPORT_COLUMNS = ("rank", "aoi", "chip_id", "score", "simulated", *LABEL_TASKS)


def results_frame(results: pd.DataFrame, indexes: dict[str, gpd.GeoDataFrame]) -> gpd.GeoDataFrame:
    """Results (aoi, chip_id, position, rank, score) joined with their chips' polygons, labels and kind."""
    parts = []
    for aoi, part in results.groupby("aoi", sort=False):
        index = indexes[str(aoi)]
        rows = index.iloc[part["position"].to_numpy()].reset_index(drop=True)
        keep = ["geometry", "simulated", *[t for t in LABEL_TASKS if t in rows.columns]]
        merged = pd.concat([part.reset_index(drop=True)[["rank", "aoi", "chip_id", "score"]], rows[keep]], axis=1)
        parts.append(merged)
    if not parts:
        return gpd.GeoDataFrame({c: [] for c in EXPORT_COLUMNS}, geometry=gpd.GeoSeries([], crs=4326), crs=4326)
    out = gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), geometry="geometry", crs=4326)
    # Simulated data stays labelled as such in every file a user takes away.
    out["simulated"] = out["simulated"].astype(bool)
    return out.sort_values("rank").reset_index(drop=True)


def to_geojson(frame: gpd.GeoDataFrame) -> bytes:
    """GeoJSON FeatureCollection (EPSG:4326) of the result chips."""
    return frame.to_json(drop_id=True).encode("utf-8")


def to_csv(frame: gpd.GeoDataFrame) -> bytes:
    """CSV of the results, polygon as WKT in a `geometry_wkt` column."""
    table = pd.DataFrame(frame.drop(columns="geometry"))
    table["geometry_wkt"] = frame.geometry.to_wkt()
    return table.to_csv(index=False).encode("utf-8")
