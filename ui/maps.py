"""Maps of chips: score rasters (one pixel per chip) for the clickable maps, pydeck for the rest.

The clickable maps draw the scores as an IMAGE of the AOI's row/col grid (`score_png`, one pixel per
chip, nearest-neighbour) and resolve a click from its coordinate (`core.grid.ChipGrid`): nothing in the
browser scales with the number of chips, so 150 K chips cost what 2 K cost (see `ui/rastermap.py`).

The pydeck polygon maps below are kept for the non-clickable maps of small stores and the overview.

pydeck serialises layer data with `json.dumps(..., indent=2, sort_keys=True)` of a list of dicts;
for 150 K polygons that alone takes seconds. Chip footprints never change between clicks, only the
colours do, so `ChipGeometry` formats each chip's static JSON record once per AOI (cached by the
app) and `chip_data_json` appends the per-click colour and value from small lookup tables. The deck
is serialised by pydeck with a placeholder string as the layer's data, and the placeholder is then
swapped for the prepared JSON array (`RawDataDeck`). `naive_chip_records` is the plain per-row
pydeck way, kept as the benchmark's baseline.

Maps need no internet: without a basemap the chips are drawn on a plain background and nothing is
fetched; a basemap (Carto tiles, needs internet) is an opt-in toggle.
"""

from __future__ import annotations

import json
import math
import operator
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import base64
import io

import geopandas as gpd
import numpy as np
import pandas as pd
import pydeck as pdk
import shapely
from PIL import Image

from core.grid import ChipGrid
from data.modalities import LABEL_TASKS

CHIP_LAYER = "chips"
"""Layer id of the clickable chip polygons: clicked chips are in `selection["objects"][CHIP_LAYER]`."""
HIGHLIGHT_LAYER = "highlight"
"""Layer id of the outlines of the query and the results (also clickable)."""
OVERVIEW_AOI_LAYER = "aoi_extents"
"""Layer id of the AOI extents on the overview map of several AOIs."""
OVERVIEW_POINT_LAYER = "overview_points"
"""Layer id of the chips (results or detections) drawn as dots on the overview map."""
OVERVIEW_QUERY_LAYER = "overview_query"
"""Layer id of the query chip on the overview map."""
OVERVIEW_MAX_POINTS = 20_000
"""At most this many dots on the overview (the highest values): the layer is plain pydeck JSON, re-sent per rerun."""

_LEVELS = 256
_STR = np.dtypes.StringDType()
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.:/+-]*$")
_TASK_CMAPS = {"vegetation": "Greens", "builtup": "Reds", "cropland": "YlOrBr", "water": "Blues"}
_SHORT = {"vegetation": "veg", "builtup": "built", "cropland": "crop", "water": "water"}
NAN_RGBA = (190, 190, 190, 90)
QUERY_RGBA = (0, 174, 239, 255)
RESULT_RGBA = (20, 20, 20, 255)
POSITIVE_RGBA = (0, 170, 80, 255)
NEGATIVE_RGBA = (220, 30, 30, 255)


@dataclass(frozen=True)
class ColorScale:
    """A continuous colour scale: `lut[q]` is the RGBA of level q of `_LEVELS` between lo and hi."""

    title: str
    lo: float
    hi: float
    lut: np.ndarray  # [_LEVELS, 4] uint8

    def levels(self, values: np.ndarray) -> np.ndarray:
        """Level index per value (int [N]); NaN gets the extra level `_LEVELS` (drawn grey)."""
        v = np.asarray(values, dtype=np.float64)
        span = self.hi - self.lo if self.hi > self.lo else 1.0
        q = np.clip(np.rint((v - self.lo) / span * (_LEVELS - 1)), 0, _LEVELS - 1)
        return np.where(np.isfinite(v), q, _LEVELS).astype(np.int64)

    def rgba(self, values: np.ndarray) -> np.ndarray:
        """RGBA uint8 [N, 4] per value, grey for NaN."""
        table = np.vstack([self.lut, np.array(NAN_RGBA, dtype=np.uint8)])
        return table[self.levels(values)]

    def colorbar(self, width: int = 256, height: int = 12) -> np.ndarray:
        """An RGB image [height, width, 3] of the scale, low on the left, for a legend."""
        idx = np.linspace(0, _LEVELS - 1, width).round().astype(int)
        return np.repeat(self.lut[idx, :3][None], height, axis=0)


def color_scale(kind: str, lo: float = 0.0, hi: float = 1.0, title: str | None = None) -> ColorScale:
    """A colour scale for a label task (its own hue), `similarity` or `prediction-error`; lo..hi range."""
    import matplotlib

    if kind in _TASK_CMAPS:
        # Start at 15 % of the map: a chip with a zero fraction must still be visible on white.
        cmap, start = matplotlib.colormaps[_TASK_CMAPS[kind]], 0.15
    elif kind == "similarity":
        cmap, start = matplotlib.colormaps["viridis"], 0.0
    elif kind == "prediction-error":
        cmap, start = matplotlib.colormaps["RdBu_r"], 0.0
    else:
        raise ValueError(f"unknown colour scale {kind!r}; use a label task {list(LABEL_TASKS)}, 'similarity' or 'prediction-error'")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"colour scale range must be finite, got {lo}..{hi}")
    lut = (cmap(np.linspace(start, 1.0, _LEVELS)) * 255).round().astype(np.uint8)
    lut[:, 3] = 215
    return ColorScale(title or kind, float(lo), float(hi), lut)


def robust_range(values: np.ndarray, low_pct: float = 2.0) -> tuple[float, float]:
    """A colour range that ignores the lowest few percent (and NaN), so contrast is not lost to outliers."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = float(np.percentile(v, low_pct)), float(v.max())
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


@dataclass(frozen=True)
class ChipGeometry:
    """Chip footprints of one AOI prepared for fast map layers (built once per AOI)."""

    chip_ids: np.ndarray  # [N] str
    records: list[str]  # per chip: '{"id":...,"t":...,"p":[[x,y],...],' (the record left open)
    centroids: np.ndarray  # [N, 2] lon, lat
    bounds: tuple[float, float, float, float]  # minx, miny, maxx, maxy

    def __len__(self) -> int:
        return len(self.chip_ids)

    @classmethod
    def from_index(cls, index: gpd.GeoDataFrame, precision: int = 4) -> "ChipGeometry":
        """Format every chip's id, label summary and polygon as JSON once (EPSG:4326 index).

        4 decimals of a degree is about 11 m, far below any chip's size (>= 320 m), and keeps the
        per-click map JSON ~20 % smaller than 5 decimals (it is re-sent on every click).
        """
        if len(index) == 0:
            raise ValueError("the chip index is empty: there is nothing to draw")
        if index.crs is not None and index.crs.to_epsg() != 4326:
            index = index.to_crs(4326)
        geoms = np.asarray(index.geometry.values, dtype=object)
        not_poly = shapely.get_type_id(geoms) != 3
        if not_poly.any():
            # A chip footprint is a quad; anything else (multi-part, point) is drawn as its hull.
            geoms = geoms.copy()
            geoms[not_poly] = shapely.convex_hull(geoms[not_poly])
        rings = shapely.get_exterior_ring(geoms)
        counts = shapely.get_num_coordinates(rings)
        coords = shapely.get_coordinates(rings)
        if not np.isfinite(coords).all():
            raise ValueError("chip polygons contain non-finite coordinates: rebuild the store")
        # deck.gl closes rings itself: drop each ring's repeated last vertex (20 % less JSON).
        ends = np.cumsum(counts) - 1
        keep = np.ones(len(coords), dtype=bool)
        keep[ends] = False
        counts = counts - 1
        xy = _fixed_decimals(coords[keep], precision)  # [M, 2] strings, vectorised
        points = np.strings.add(np.strings.add("[", xy[:, 0]), np.strings.add(np.strings.add(",", xy[:, 1]), "]"))
        rings_json = _join_rings(points, counts)
        ids = index["chip_id"].astype(str).to_numpy()
        if all(_SAFE_ID.match(c) for c in ids.tolist()):
            id_json = np.strings.add(np.strings.add('"', ids.astype(_STR)), '"')
        else:
            id_json = np.array([json.dumps(c) for c in ids.tolist()], dtype=_STR)
        # Label texts only hold names, digits, '%' and ' · ': safe inside JSON quotes.
        texts = np.array(label_summaries(index), dtype=_STR)
        head = np.strings.add(np.strings.add('{"id":', id_json), np.strings.add(',"t":"', texts))
        records = np.strings.add(np.strings.add(head, '","p":['), np.strings.add(rings_json, "],")).tolist()
        centroids = shapely.get_coordinates(shapely.centroid(geoms))
        minx, miny = coords.min(axis=0)
        maxx, maxy = coords.max(axis=0)
        return cls(ids, records, centroids, (float(minx), float(miny), float(maxx), float(maxy)))


def _fixed_decimals(values: np.ndarray, precision: int) -> np.ndarray:
    """Format floats with a fixed number of decimals, vectorised (3x faster than str.format per value)."""
    scale = 10**precision
    k = np.rint(np.asarray(values, dtype=np.float64) * scale).astype(np.int64)
    a = np.abs(k)
    whole = (a // scale).astype(_STR)
    frac = np.strings.slice((a % scale + scale).astype(_STR), 1, None)  # zero-padded decimals
    sign = np.where(k < 0, "-", "").astype(_STR)
    return np.strings.add(np.strings.add(sign, whole), np.strings.add(".", frac))


def _join_rings(points: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Comma-join consecutive point strings into one string per ring (`counts` points each)."""
    if len(counts) and (counts == counts[0]).all():
        # The usual case, every chip a quad: join column by column.
        grid = points.reshape(len(counts), int(counts[0]))
        out = grid[:, 0]
        for j in range(1, grid.shape[1]):
            out = np.strings.add(np.strings.add(out, ","), grid[:, j])
        return out
    pts = points.tolist()
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
    return np.array([",".join(pts[a : a + c]) for a, c in zip(starts, counts.tolist())], dtype=_STR)


def label_summaries(index: gpd.GeoDataFrame | "pd.DataFrame") -> list[str]:
    """Short per-chip text of the known label fractions, e.g. 'veg 45% · water 2%' (for tooltips)."""
    parts = []
    for task in LABEL_TASKS:
        if task not in index.columns:
            continue
        v = index[task].to_numpy(dtype=np.float64)
        pct = np.where(np.isfinite(v), np.rint(np.clip(v, 0, 1) * 100), -1).astype(int)
        table = np.array([f"{_SHORT[task]} {i}%" for i in range(101)] + [""], dtype=object)
        parts.append(table[pct])  # -1 picks the empty string: unknown labels are left out
    if not parts:
        return [""] * len(index)
    return [" · ".join(p for p in row if p) for row in zip(*parts)]


def chip_data_json(geometry: ChipGeometry, values: np.ndarray, scale: ColorScale, decimals: int = 2) -> str:
    """The JSON array of the chip layer's data: static records plus this click's colour and value."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(geometry),):
        raise ValueError(f"need one value per chip ({len(geometry)}), got shape {values.shape}")
    # Colour level and rounded value text are both functions of the value: format each distinct
    # (level, text) pair once and append one tail string per chip, one concatenation pass in C.
    levels = scale.levels(values)  # [N], _LEVELS = NaN
    finite = np.isfinite(values)
    k = np.where(finite, np.rint(values * 10**decimals), 0).astype(np.int64)
    kmin = int(k[finite].min()) if finite.any() else 0
    k = np.where(finite, k - kmin, -1)
    code = levels * (int(k.max()) + 2) + (k + 1)
    uniq, inverse = np.unique(code, return_inverse=True)
    rgba = np.vstack([scale.lut, np.array(NAN_RGBA, dtype=np.uint8)]).tolist()
    width = int(k.max()) + 2
    tails = []
    for c in uniq.tolist():
        level, kk = divmod(c, width)
        r, g, b, a = rgba[level]
        text = f"{(kk - 1 + kmin) / 10**decimals:.{decimals}f}" if kk > 0 else "n/a"
        tails.append(f'"c":[{r},{g},{b},{a}],"v":"{text}"}}')
    per_chip = np.array(tails, dtype=object)[inverse.ravel()]
    return "[" + ",".join(map(operator.add, geometry.records, per_chip.tolist())) + "]"


def naive_chip_records(index: gpd.GeoDataFrame, values: np.ndarray, scale: ColorScale) -> list[dict]:
    """The straightforward per-row way to build the same layer data (the benchmark's baseline)."""
    out = []
    for (_, row), v in zip(index.iterrows(), values):
        rgba = list(scale.rgba(np.array([v]))[0].tolist())
        out.append(
            {
                "id": row["chip_id"],
                "t": label_summaries(row.to_frame().T)[0],
                "p": [list(c) for c in row.geometry.exterior.coords],
                "c": rgba,
                "v": f"{v:.2f}",
            }
        )
    return out


class RawDataDeck(pdk.Deck):
    """A pydeck Deck whose big layers carry pre-serialised JSON data (see the module docstring)."""

    def __init__(self, *args, raw_data: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.__dict__["_raw_layer_data"] = dict(raw_data or {})

    @staticmethod
    def placeholder(layer_id: str) -> str:
        """The stand-in data string of a layer whose JSON is swapped in at serialisation."""
        return f"__raw_layer_data_{layer_id}__"

    def to_json(self) -> str:
        """Serialise like pydeck, then put each raw layer's JSON array in place of its placeholder."""
        raw = self.__dict__.pop("_raw_layer_data")
        try:
            spec = super().to_json()
        finally:
            self.__dict__["_raw_layer_data"] = raw
        for layer_id, data in raw.items():
            token = json.dumps(self.placeholder(layer_id))
            if token not in spec:
                raise ValueError(f"layer {layer_id!r} has no placeholder data; build it with chip_layer()")
            spec = spec.replace(token, data, 1)
        return spec


def chip_layer(layer_id: str = CHIP_LAYER, *, pickable: bool = True) -> pdk.Layer:
    """The filled chip polygons; their data is swapped in by RawDataDeck (records id, t, p, c, v)."""
    return pdk.Layer(
        "PolygonLayer",
        data=RawDataDeck.placeholder(layer_id),
        id=layer_id,
        get_polygon="p",
        get_fill_color="c",
        get_line_color=[255, 255, 255, 90],
        line_width_min_pixels=0.5,
        stroked=True,
        filled=True,
        pickable=pickable,
        auto_highlight=True,
        highlight_color=[255, 0, 255, 160],
    )


def outline_records(geometry: ChipGeometry, positions: Sequence[int], rgba: Sequence[int], label: Sequence[str]) -> list[dict]:
    """Outline records (id, t, p, c, v) for a few chips, e.g. the query and the top-k results."""
    out = []
    for pos, lab in zip(positions, label):
        rec = json.loads(geometry.records[int(pos)] + '"c":[0,0,0,0],"v":""}')
        rec["c"], rec["v"] = list(rgba), str(lab)
        out.append(rec)
    return out


def highlight_layer(records: list[dict], layer_id: str = HIGHLIGHT_LAYER) -> pdk.Layer:
    """Thick outlines (no fill) around a few chips; clickable like the chips underneath."""
    return pdk.Layer(
        "PolygonLayer",
        data=records,
        id=layer_id,
        get_polygon="p",
        get_line_color="c",
        get_fill_color=[0, 0, 0, 0],
        filled=True,
        stroked=True,
        line_width_min_pixels=3,
        pickable=True,
    )


def view_for_bounds(bounds: tuple[float, float, float, float], width_px: int = 760, height_px: int = 520) -> pdk.ViewState:
    """A map view centred on a lon/lat box that fits it in a map of the given size."""
    minx, miny, maxx, maxy = bounds
    lat = (miny + maxy) / 2
    dx = max(maxx - minx, 1e-4)
    # Web-Mercator stretches latitude: compare the box in mercator units on both axes.
    def merc(y: float) -> float:
        y = max(min(y, 85.0), -85.0)
        return math.degrees(math.log(math.tan(math.pi / 4 + math.radians(y) / 2)))

    dy = max(merc(maxy) - merc(miny), 1e-4)
    # deck.gl's world is 512 px wide at zoom 0.
    zoom = min(math.log2(360.0 * width_px / (512.0 * dx)), math.log2(360.0 * height_px / (512.0 * dy))) - 0.1
    return pdk.ViewState(longitude=(minx + maxx) / 2, latitude=lat, zoom=max(0.0, min(zoom, 16.0)), pitch=0, bearing=0)


def chip_deck(
    geometry: ChipGeometry,
    values: np.ndarray,
    scale: ColorScale,
    *,
    value_name: str,
    highlights: list[dict] | None = None,
    basemap: bool = False,
) -> RawDataDeck:
    """A deck with every chip coloured by `values` and optional outlines; clickable, no basemap by default."""
    layers = [chip_layer()]
    if highlights:
        layers.append(highlight_layer(highlights))
    tooltip = {"text": f"{{id}}\n{value_name}: {{v}}\n{{t}}"}
    # No basemap: map_provider=None leaves pydeck's "__MAP_STYLE__" sentinel as the style, which
    # Streamlit drops. (map_style=None would make Streamlit fall back to Carto tiles from the internet.)
    kwargs = {"map_style": "light", "map_provider": "carto"} if basemap else {"map_provider": None}
    return RawDataDeck(
        layers=layers,
        initial_view_state=view_for_bounds(geometry.bounds),
        tooltip=tooltip,
        raw_data={CHIP_LAYER: chip_data_json(geometry, values, scale)},
        **kwargs,
    )


def clicked_chip(event: object, layers: Sequence[str] = (CHIP_LAYER, HIGHLIGHT_LAYER)) -> str | None:
    """The chip id clicked on a map built by chip_deck, from st.pydeck_chart's return value (or None)."""
    selection = getattr(event, "selection", None) or (event.get("selection") if isinstance(event, dict) else None)
    if not selection:
        return None
    objects = selection.get("objects", {}) or {}
    for layer in layers:
        for obj in objects.get(layer, []) or []:
            if isinstance(obj, dict) and obj.get("id") is not None:
                return str(obj["id"])
    return None


def _lonlat(xy: np.ndarray) -> list[list[float]]:
    return np.round(np.asarray(xy, dtype=np.float64), 4).tolist()


def overview_deck(
    geometries: Mapping[str, ChipGeometry],
    points: pd.DataFrame,
    scale: ColorScale,
    *,
    value_name: str,
    query: tuple[str, int] | None = None,
    max_points: int = OVERVIEW_MAX_POINTS,
) -> pdk.Deck:
    """An overview of several AOIs: each AOI's extent outlined and named, `points` (aoi, chip_id, position, value)
    as dots coloured by value, the query (aoi, position) marked; no basemap, nothing fetched."""
    missing = set(points["aoi"]) - set(geometries) if len(points) else set()
    if missing:
        raise ValueError(f"points of AOIs without geometry: {sorted(missing)}")
    extents, names = [], []
    for aoi, g in geometries.items():
        minx, miny, maxx, maxy = g.bounds
        extents.append({"aoi": aoi, "p": [[minx, miny], [maxx, miny], [maxx, maxy], [minx, maxy]]})
        names.append({"aoi": aoi, "p": [minx, maxy]})
    # Draw the highest values last (on top); beyond max_points only the highest are kept.
    shown = points.assign(_v=points["value"].astype(np.float64).fillna(-np.inf))
    shown = shown.sort_values("_v", kind="stable").tail(max_points)
    records = []
    for aoi, group in shown.groupby("aoi", sort=False):
        pos = group["position"].to_numpy(dtype=np.int64)
        xy = _lonlat(geometries[aoi].centroids[pos])
        rgba = scale.rgba(group["value"].to_numpy(dtype=np.float64)).tolist()
        for chip, p, c, v in zip(group["chip_id"].astype(str).tolist(), xy, rgba, group["value"].tolist()):
            records.append({"aoi": aoi, "id": chip, "p": p, "c": c, "v": "n/a" if not np.isfinite(v) else f"{v:.3f}"})
    layers = [
        pdk.Layer("PolygonLayer", data=extents, id=OVERVIEW_AOI_LAYER, get_polygon="p", filled=True,
                  get_fill_color=[120, 120, 120, 25], stroked=True, get_line_color=[90, 90, 90, 220],
                  line_width_min_pixels=1.5, pickable=False),
        pdk.Layer("TextLayer", data=names, id="aoi_names", get_position="p", get_text="aoi", get_size=13,
                  get_color=[60, 60, 60, 255], get_text_anchor='"start"', get_alignment_baseline='"bottom"',
                  pickable=False),
        pdk.Layer("ScatterplotLayer", data=records, id=OVERVIEW_POINT_LAYER, get_position="p", get_fill_color="c",
                  get_radius=5, radius_units='"pixels"', stroked=True, get_line_color=[40, 40, 40, 200],
                  line_width_min_pixels=0.5, pickable=True, auto_highlight=True),
    ]
    if query is not None:
        aoi, pos = query
        p = _lonlat(geometries[aoi].centroids[int(pos)])
        layers.append(pdk.Layer(
            "ScatterplotLayer", data=[{"aoi": aoi, "id": str(geometries[aoi].chip_ids[int(pos)]), "p": p, "v": "query"}],
            id=OVERVIEW_QUERY_LAYER, get_position="p", get_fill_color=list(QUERY_RGBA), get_radius=8,
            radius_units='"pixels"', stroked=True, get_line_color=[255, 255, 255, 255], line_width_min_pixels=2,
            pickable=True))
    bounds = np.array([g.bounds for g in geometries.values()])
    view = view_for_bounds((bounds[:, 0].min(), bounds[:, 1].min(), bounds[:, 2].max(), bounds[:, 3].max()))
    # map_provider=None: no basemap and nothing fetched (see chip_deck).
    return pdk.Deck(layers=layers, initial_view_state=view, map_provider=None,
                    tooltip={"text": f"AOI {{aoi}}, chip {{id}}\n{value_name}: {{v}}"})


# ----------------------------------------------------------------------------------------- score rasters
_RASTER_LEVELS = 254
"""Colour levels of a score raster: a palette PNG holds 256 entries, the last two are 'n/a' and 'no chip'."""
_RASTER_NAN, _RASTER_EMPTY = 254, 255


def score_png(grid: ChipGrid, values: np.ndarray, scale: ColorScale) -> bytes:
    """The scores as a palette PNG, one pixel per chip of the row/col grid (row 0 on top); grey = n/a,
    transparent = no chip in that cell. A 150 K-chip AOI is ~0.1-0.3 MB and ~20 ms."""
    image = grid.raster(values)  # [rows, cols], NaN where n/a or no chip
    span = scale.hi - scale.lo if scale.hi > scale.lo else 1.0
    q = np.clip(np.rint((image - scale.lo) / span * (_RASTER_LEVELS - 1)), 0, _RASTER_LEVELS - 1)
    levels = np.where(np.isfinite(image), q, _RASTER_NAN).astype(np.uint8)
    levels[grid.positions < 0] = _RASTER_EMPTY
    lut_idx = np.linspace(0, _LEVELS - 1, _RASTER_LEVELS).round().astype(int)
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:_RASTER_LEVELS] = scale.lut[lut_idx, :3]
    palette[_RASTER_NAN] = NAN_RGBA[:3]
    alpha = np.full(256, 255, dtype=np.uint8)
    alpha[_RASTER_EMPTY] = 0
    img = Image.frombytes("P", (levels.shape[1], levels.shape[0]), np.ascontiguousarray(levels).tobytes())
    img.putpalette(palette.ravel().tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6, transparency=alpha.tobytes())
    return buf.getvalue()


def png_data_url(png: bytes) -> str:
    """A PNG as a data: URL (the map component shows it without a second request)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def cell_aspect(grid: ChipGrid) -> float:
    """Width / height of one grid cell on the ground (1 for square UTM chips; cos(lat) for lon/lat grids)."""
    if not grid.dx or not grid.dy:
        return 1.0
    if grid.crs == "EPSG:4326":
        lat = float(np.mean(grid.corners_lonlat()[:, 1]))
        return abs(grid.dx) * math.cos(math.radians(lat)) / abs(grid.dy)
    return abs(grid.dx) / abs(grid.dy)


def _tick(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def legend_spec(scale: ColorScale, units: str, n_ticks: int = 5) -> dict:
    """The colour bar of a score raster: title, units, a CSS gradient and ticks (fraction along, number)."""
    stops = np.linspace(0, _LEVELS - 1, 11).round().astype(int)
    gradient = ", ".join(f"rgb({r},{g},{b}) {i * 10}%" for i, (r, g, b) in enumerate(scale.lut[stops, :3].tolist()))
    ticks = [{"at": float(f), "text": _tick(scale.lo + f * (scale.hi - scale.lo))} for f in np.linspace(0, 1, n_ticks)]
    return {"title": scale.title, "units": units, "gradient": f"linear-gradient(to right, {gradient})", "ticks": ticks,
            "nan": "rgb({},{},{})".format(*NAN_RGBA[:3])}


MARK_KINDS = ("query", "result", "positive", "negative", "label", "suggested", "clicked", "selected")
"""Kinds of chip marks drawn over a score raster: query blue, results black, positives green, negatives red;
labelled chips filled in their class colour (`color`), suggested chips dashed cyan, the last clicked chip magenta;
selected orange (the explorer's chips picked in the UMAP)."""


def chip_marks(grid: ChipGrid, positions: Sequence[int], kind: str, labels: Sequence[str] | None = None,
               color: Sequence[int] | None = None) -> list[dict]:
    """Marks of a few chips over a score raster: raster row/col, kind, a short label and optionally an RGB colour."""
    if kind not in MARK_KINDS:
        raise ValueError(f"unknown mark kind {kind!r}; use one of {MARK_KINDS}")
    positions = np.asarray(list(positions), dtype=np.int64)
    if positions.size == 0:
        return []
    rows, cols = grid.cells_of(positions)
    labels = list(labels) if labels is not None else [""] * len(positions)
    extra = {"color": [int(v) for v in list(color)[:3]]} if color is not None else {}
    return [{"r": int(r), "c": int(c), "kind": kind, "label": str(t), **extra}
            for r, c, t in zip(rows.tolist(), cols.tolist(), labels)]
