"""Procedural land cover of the simulated AOIs, computed from global pixel coordinates.

Every field (lakes, rivers, towns, forest, parcels, ...) is a function of the *global* pixel position
and the seed only: hashed-lattice value noise, parcel and pivot lattices, road and canal grids. So any
block of chips can be generated on its own and blocks tile seamlessly, which is what lets a paper-scale
AOI (387 x 387 chips) stream in bounded memory. Everything here is simulated and says so in its title.

Pixel coordinates: `py` grows southwards, `px` eastwards, both relative to the AOI centre, in pixels
of `PIXEL_SIZE_M` metres. A block is a contiguous range of chip rows and columns of the AOI grid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml
from pyproj.database import query_utm_crs_info

PIXEL_SIZE_M = 70.0
"""Declared pixel size: 64 px chips are 4.48 km square, like the paper's M3LEO chips."""

WATER, FOREST, GRASSLAND, CROPLAND, BUILTUP, BARE = range(6)
CLASS_NAMES: tuple[str, ...] = ("water", "forest", "grassland", "cropland", "builtup", "bare")
SEASONS: tuple[str, ...] = ("winter", "spring", "summer", "fall")

# Which land-cover classes make up each chip-level label (bare soil counts in none).
LABEL_CLASSES: dict[str, tuple[int, ...]] = {
    "vegetation": (FOREST, GRASSLAND),
    "builtup": (BUILTUP,),
    "cropland": (CROPLAND,),
    "water": (WATER,),
}


@dataclass(frozen=True)
class AOIProfile:
    """A simulated AOI: where it sits, what it is called and the mix of its landscape.

    Shares are area fractions of the layer they control (each layer is a thresholded noise field),
    applied in this order, later layers overriding earlier ones: natural land (forest, bare, else
    grassland), agricultural parcels, centre pivots, towns and cities, riparian forest, then water.
    """

    name: str
    title: str
    region: str
    lat: float
    lon: float
    description: str
    forest: float = 0.1  # share of natural land that is forest
    natural_bare: float = 0.05  # share of natural land that is bare soil/rock (rest grassland)
    agri: float = 0.5  # share of the AOI in the agricultural zone (cut into parcels)
    crop_share: float = 0.85  # share of parcels that are cropland
    fallow_share: float = 0.3  # share of non-crop parcels left bare (rest pasture/grassland)
    parcel_m: tuple[float, float] = (800.0, 400.0)  # parcel height, width
    parcel_warp_m: float = 0.0  # wobble of parcel boundaries (0 = surveyed straight grid)
    pivot_zone: float = 0.0  # share of the AOI holding centre-pivot irrigation circles
    pivot_m: float = 900.0  # pivot cell size (circle diameter ~0.9 x this)
    towns: float = 0.03  # share built-up in towns
    town_scale_m: float = 3000.0
    city: float = 0.0  # extra share built-up in large cities
    city_scale_m: float = 40000.0
    central_city_m: float = 0.0  # radius of a city placed at the AOI centre (0 = none)
    road_block_m: float = 350.0  # street grid spacing inside built-up areas
    lakes: float = 0.01
    lake_scale_m: float = 4000.0
    rivers: float = 0.01  # share in tributary river bands
    river_scale_m: float = 15000.0
    main_river: float = 0.0  # share in a wide main river
    main_river_scale_m: float = 80000.0
    riparian: float = 0.0  # extra band of forest along rivers (share, like `rivers`)
    canal_spacing_m: float = 0.0  # irrigation canals every this many metres (0 = none)
    green_by_season: tuple[float, float, float, float] = (0.05, 0.3, 0.9, 0.4)  # share of green crop parcels
    vigour_by_season: tuple[float, float, float, float] = (0.2, 0.6, 1.0, 0.6)  # natural vegetation greenness
    deciduous: float = 0.6  # how much forest greenness follows the season (0 evergreen)
    season: str = "summer"  # season of channels that name none
    soil_rgb: tuple[float, float, float] = (0.13, 0.11, 0.08)  # bare soil reflectance B4, B3, B2
    water_rgb: tuple[float, float, float] = (0.03, 0.045, 0.05)
    bare_sar_db: tuple[float, float] = (-13.0, -21.0)  # bare soil VV, VH at the reference incidence
    cloud_cover: float = 0.1  # share of S2 pixels under cloud
    haze: float = 0.03  # peak additive path reflectance (blue band)
    grid_rows: int = 387  # paper-scale grid: 387 x 387 chips of 4.48 km ~ 150,000 chips
    grid_cols: int = 387

    def validate(self) -> None:
        """Raise ValueError with a clear message if a setting is out of range."""
        if not self.name or not all(ch.isalnum() or ch in "_-" for ch in self.name):
            raise ValueError(f"AOI name {self.name!r} must match [A-Za-z0-9_-]+")
        if "simulated" not in self.title.lower():
            raise ValueError(f"title {self.title!r} of a simulated AOI must say 'simulated'")
        if not (-80 <= self.lat <= 84 and -180 <= self.lon <= 180):
            raise ValueError(f"AOI centre ({self.lat}, {self.lon}) is outside the UTM range (lat -80..84)")
        if self.season not in SEASONS:
            raise ValueError(f"season {self.season!r} is not one of {SEASONS}")
        for name in ("forest", "natural_bare", "agri", "crop_share", "fallow_share", "pivot_zone", "towns",
                     "city", "lakes", "rivers", "main_river", "riparian", "cloud_cover", "deciduous"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{self.name}: {name}={v} must be a share in [0, 1]")
        if self.grid_rows < 1 or self.grid_cols < 1:
            raise ValueError(f"{self.name}: grid must have at least one row and column")

    def season_index(self, season: str | None) -> int:
        """Index into the per-season tuples (`None` = the profile's default season)."""
        return SEASONS.index(season or self.season)


PROFILES_PATH = Path(__file__).with_name("aoi_profiles.yaml")
"""The five paper regions (M3LEO AOIs), each a plausible landscape at real coordinates."""


def load_profiles(path: str | Path = PROFILES_PATH) -> dict[str, AOIProfile]:
    """Read simulated AOI profiles from YAML (`profiles:` list of AOIProfile fields), validated, by name."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read AOI profiles {path}: {e}") from None
    items = doc.get("profiles") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not all(isinstance(it, dict) for it in items):
        raise ValueError(f"{path}: expected a top-level 'profiles:' list of mappings")
    fields = {f.name: f for f in dataclasses.fields(AOIProfile)}
    out: dict[str, AOIProfile] = {}
    for item in items:
        name = item.get("name", "?")
        unknown = sorted(set(item) - set(fields))
        if unknown:
            raise ValueError(f"{path}: profile {name!r} has unknown keys {unknown}; known: {list(fields)}")
        # YAML has lists and may write 1 for 1.0: cast to the dataclass's types so profiles hash and compare
        # like hand-written ones (AOIProfile is an lru_cache key)
        kw = {k: _as_field_type(fields[k], v) for k, v in item.items()}
        try:
            profile = AOIProfile(**kw)
            profile.validate()
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: profile {name!r}: {e}") from None
        if profile.name in out:
            raise ValueError(f"{path}: profile {profile.name!r} is defined twice")
        out[profile.name] = profile
    return out


def _as_field_type(f: dataclasses.Field, value):
    kind = str(f.type)
    if kind.startswith("tuple"):
        return tuple(float(v) for v in value)
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


AOI_PROFILES: dict[str, AOIProfile] = load_profiles()
DEFAULT_AOIS: tuple[str, ...] = tuple(AOI_PROFILES)


def get_profile(aoi: "str | AOIProfile") -> AOIProfile:
    """Look up a simulated AOI by name (or pass a profile through), validated."""
    if isinstance(aoi, AOIProfile):
        aoi.validate()
        return aoi
    try:
        return AOI_PROFILES[aoi]
    except KeyError:
        raise KeyError(f"unknown simulated AOI {aoi!r}; known: {list(AOI_PROFILES)} (or pass an AOIProfile)") from None


# ----------------------------------------------------------------------------------------------------
# Position-deterministic noise
# ----------------------------------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def layer_key(seed: int, aoi: str, layer: str) -> int:
    """A 64-bit key for one noise layer of one AOI and seed (stable across processes and runs)."""
    digest = hashlib.blake2b(f"{aoi}|{int(seed)}|{layer}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def aoi_code(aoi: str) -> int:
    """A stable 32-bit code of an AOI name, for seeding per-chip random streams."""
    return zlib.crc32(aoi.encode())


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a cheap, well-mixing bijection of uint64 values."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def hash_uniform(key: int, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) float64 values hashed from integer lattice coordinates (broadcasting)."""
    iy = np.asarray(iy, dtype=np.int64).astype(np.uint64)
    ix = np.asarray(ix, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = _mix64(np.uint64(key) + iy * _GOLDEN)
        h = _mix64(h ^ (ix * np.uint64(0xC2B2AE3D27D4EB4F) + _GOLDEN))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def lattice_lookup(key: int, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """`hash_uniform` for many pixels sharing few lattice cells: hash the cells once, then gather."""
    y0, y1 = int(iy.min()), int(iy.max())
    x0, x1 = int(ix.min()), int(ix.max())
    table = hash_uniform(key, np.arange(y0, y1 + 1)[:, None], np.arange(x0, x1 + 1)[None, :]).astype(np.float32)
    # A flat take is many times faster than 2-D fancy indexing.
    return np.take(table.ravel(), (iy - y0) * (x1 - x0 + 1) + (ix - x0))


def _smooth(f: np.ndarray) -> np.ndarray:
    return f * f * (3.0 - 2.0 * f)


def _axis(start: int, n: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Lattice cell index and smoothstep weight of pixel centres start..start+n along one axis."""
    t = (np.arange(n, dtype=np.float64) + (start + 0.5)) / scale
    cell = np.floor(t)
    return cell.astype(np.int64), _smooth((t - cell).astype(np.float32))


def grid_noise(key: int, y0: int, x0: int, h: int, w: int, scale: float) -> np.ndarray:
    """Value noise in [0, 1] on the pixel grid of a block (lattice spacing `scale` px), separable."""
    cy, wy = _axis(y0, h, scale)
    cx, wx = _axis(x0, w, scale)
    ly, lx = cy[0], cx[0]
    table = hash_uniform(key, np.arange(ly, cy[-1] + 2)[:, None], np.arange(lx, cx[-1] + 2)[None, :])
    table = table.astype(np.float32)
    jx = cx - lx
    along_x = np.take(table, jx, axis=1) * (1.0 - wx) + np.take(table, jx + 1, axis=1) * wx  # [Ly, w]
    step = along_x[1:] - along_x[:-1]  # [Ly-1, w]
    jy = cy - ly
    # np.take along axis 0 is much faster than `along_x[jy]` for this row gather.
    out = np.take(along_x, jy, axis=0)  # [h, w]
    out += np.take(step, jy, axis=0) * wy[:, None]
    return out


def point_noise(key: int, y: np.ndarray, x: np.ndarray, scale: float) -> np.ndarray:
    """Value noise in [0, 1] at arbitrary (e.g. domain-warped) float32 pixel coordinates."""
    ty = np.asarray(y, dtype=np.float32) / np.float32(scale)
    tx = np.asarray(x, dtype=np.float32) / np.float32(scale)
    fy, fx = np.floor(ty), np.floor(tx)
    wy, wx = _smooth(ty - fy), _smooth(tx - fx)
    cy, cx = fy.astype(np.int32), fx.astype(np.int32)  # float32 -> int32 is the fast conversion
    ly, lx = int(cy.min()), int(cx.min())
    table = hash_uniform(
        key, np.arange(ly, int(cy.max()) + 2)[:, None], np.arange(lx, int(cx.max()) + 2)[None, :]
    ).astype(np.float32)
    width = table.shape[1]
    flat = table.ravel()
    idx = (cy - ly) * width + (cx - lx)
    top = np.take(flat, idx)
    top += (np.take(flat, idx + 1) - top) * wx
    bottom = np.take(flat, idx + width)
    bottom += (np.take(flat, idx + width + 1) - bottom) * wx
    return top + (bottom - top) * wy


def _fractal_raw(key: int, y0: int, x0: int, h: int, w: int, scale: float, octaves: int) -> np.ndarray:
    out = np.zeros((h, w), dtype=np.float32)
    amp, total = 1.0, 0.0
    for k in range(octaves):
        out += np.float32(amp) * grid_noise(key + k, y0, x0, h, w, scale / 2**k)
        total += amp
        amp *= 0.5
    return out / np.float32(total)


def _fractal_points_raw(key: int, y: np.ndarray, x: np.ndarray, scale: float, octaves: int) -> np.ndarray:
    y, x = np.broadcast_arrays(y, x)
    out = np.zeros(y.shape, dtype=np.float32)
    amp, total = 1.0, 0.0
    for k in range(octaves):
        out += np.float32(amp) * point_noise(key + k, y, x, scale / 2**k)
        total += amp
        amp *= 0.5
    return out / np.float32(total)


@lru_cache(maxsize=8)
def _cdf_table(octaves: int) -> np.ndarray:
    """Quantiles of fractal value noise, so that thresholds on a field are area shares.

    Value noise statistics do not depend on its scale or key, so one sample (fixed key, many lattice
    cells) serves every layer; the table is deterministic, hence so is every field.
    """
    sample = _fractal_raw(12345, 0, 0, 768, 768, 24.0, octaves)
    return np.quantile(sample.astype(np.float64), np.linspace(0.0, 1.0, 1025)).astype(np.float32)


_LEVELS = np.linspace(0.0, 1.0, 1025)


def share_threshold(share: float, octaves: int) -> np.float32:
    """Raw fractal-noise level below which a share `share` of the area lies.

    Comparing raw values with this level avoids mapping every pixel through the CDF.
    """
    return np.float32(np.interp(share, _LEVELS, _cdf_table(octaves)))


def fractal_field(key: int, y0: int, x0: int, h: int, w: int, scale: float, octaves: int = 3) -> np.ndarray:
    """Fractal value noise in [0, 1] on a block; compare with `share_threshold` to cover a given share."""
    return _fractal_raw(key, y0, x0, h, w, scale, octaves)


def warped_field(key: int, y0: int, x0: int, h: int, w: int, scale: float, warp: float) -> np.ndarray:
    """Value noise (one octave) read at domain-warped coordinates: meandering isolines for rivers."""
    dy = _fractal_raw(key + 101, y0, x0, h, w, scale, 2) - np.float32(0.5)
    dx = _fractal_raw(key + 202, y0, x0, h, w, scale, 2) - np.float32(0.5)
    y = np.arange(y0, y0 + h, dtype=np.float32)[:, None] + np.float32(0.5) + np.float32(2 * warp) * dy
    x = np.arange(x0, x0 + w, dtype=np.float32)[None, :] + np.float32(0.5) + np.float32(2 * warp) * dx
    return point_noise(key, y, x, scale)


# ----------------------------------------------------------------------------------------------------
# Blocks and land cover
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockGrid:
    """Pixel geometry of a block: a contiguous range of chip rows and columns of an AOI grid."""

    rows: range
    cols: range
    chip_size: int
    grid_rows: int
    grid_cols: int

    @property
    def y0(self) -> int:
        """Global pixel row (from the AOI centre) of the block's first pixel row."""
        return self.rows.start * self.chip_size - (self.grid_rows * self.chip_size) // 2

    @property
    def x0(self) -> int:
        """Global pixel column (from the AOI centre) of the block's first pixel column."""
        return self.cols.start * self.chip_size - (self.grid_cols * self.chip_size) // 2

    @property
    def shape(self) -> tuple[int, int]:
        """Raster shape (H, W) of the whole block."""
        return len(self.rows) * self.chip_size, len(self.cols) * self.chip_size

    @property
    def n_chips(self) -> int:
        """Chips in the block (row-major order)."""
        return len(self.rows) * len(self.cols)

    def to_chips(self, raster: np.ndarray) -> np.ndarray:
        """`[H, W]` (or `[k, H, W]`) block raster -> row-major chips `[n, cs, cs]` (or `[n, k, cs, cs]`)."""
        s, nr, nc = self.chip_size, len(self.rows), len(self.cols)
        lead = raster.shape[:-2]
        x = raster.reshape(lead + (nr, s, nc, s))
        k = len(lead)
        # [..., R, s, C, s] -> [R, C, ..., s, s]
        x = x.transpose((k, k + 2) + tuple(range(k)) + (k + 1, k + 3))
        return np.ascontiguousarray(x.reshape((nr * nc,) + lead + (s, s)))


def make_grid(profile: AOIProfile, rows: range, cols: range, chip_size: int) -> BlockGrid:
    """Check a block request against the AOI grid and describe its pixels."""
    for name, r, n in (("rows", rows, profile.grid_rows), ("cols", cols, profile.grid_cols)):
        if not isinstance(r, range) or r.step != 1 or len(r) == 0:
            raise ValueError(f"{name} must be a non-empty range with step 1, got {r!r}")
        if r.start < 0 or r.stop > n:
            raise ValueError(
                f"{name} {r.start}..{r.stop - 1} fall outside the {profile.name} grid of {n} chips (0..{n - 1}); "
                "use a larger grid_rows/grid_cols in a custom AOIProfile for bigger AOIs"
            )
    if not isinstance(chip_size, (int, np.integer)) or chip_size < 4:
        raise ValueError(f"chip_size must be an integer of at least 4 pixels, got {chip_size!r}")
    return BlockGrid(rows, cols, int(chip_size), profile.grid_rows, profile.grid_cols)


@dataclass
class LandCover:
    """Land cover of a block: class raster plus the per-pixel attributes the sensor models read."""

    profile: AOIProfile
    grid: BlockGrid
    seed: int
    classes: np.ndarray  # uint8 [H, W], values index CLASS_NAMES
    crop_phase: np.ndarray  # float32 [H, W]: per-parcel phase in the crop calendar (crops green if < share)
    vigour: np.ndarray  # float32 [H, W]: per-parcel / per-pixel vegetation vigour in [0, 1]
    density: np.ndarray  # float32 [H, W]: built-up density in [0, 1] (0 outside built-up)
    road: np.ndarray  # bool [H, W]: street pixels inside built-up areas
    texture: np.ndarray  # float32 [H, W]: within-class texture in [-1, 1], shared by all sensors
    moisture: np.ndarray  # float32 [H, W]: soil moisture in [0, 1]

    def greenness(self, season: str | None = None) -> np.ndarray:
        """Green-vegetation cover per pixel in [0, 1] for a season (crops by parcel phenology)."""
        p = self.profile
        s = p.season_index(season)
        c = self.classes
        g = np.zeros(c.shape, dtype=np.float32)
        crop = c == CROPLAND
        green = self.crop_phase < p.green_by_season[s]
        # Green parcels have a closed canopy of varying vigour; the others are bare, sown or stubble.
        g[crop] = np.where(green[crop], 0.55 + 0.45 * self.vigour[crop], 0.12 * self.vigour[crop])
        grass = c == GRASSLAND
        g[grass] = p.vigour_by_season[s] * (0.6 + 0.4 * self.vigour[grass])
        forest = c == FOREST
        seasonal = 1.0 - p.deciduous * (1.0 - p.vigour_by_season[s])
        g[forest] = seasonal * (0.8 + 0.2 * self.vigour[forest])
        return g


def _bands(raw: np.ndarray, share: float, octaves: int) -> np.ndarray:
    """Pixels near the median isoline of a noise field: thin meandering bands covering `share`."""
    lo, hi = share_threshold(0.5 - share / 2.0, octaves), share_threshold(0.5 + share / 2.0, octaves)
    return (raw > lo) & (raw < hi)


def landcover_block(aoi: "str | AOIProfile", rows: range, cols: range, seed: int, chip_size: int = 64) -> LandCover:
    """Generate the land cover of a block of chips (seamless with every other block of the AOI)."""
    p = get_profile(aoi)
    grid = make_grid(p, rows, cols, chip_size)
    y0, x0 = grid.y0, grid.x0
    h, w = grid.shape
    px = PIXEL_SIZE_M

    def key(layer: str) -> int:
        return layer_key(seed, p.name, layer)

    def below(layer: str, share: float, scale_m: float, octaves: int = 3) -> np.ndarray:
        """Mask of the pixels where a layer's noise lies in its lowest `share` of area."""
        raw = fractal_field(key(layer), y0, x0, h, w, scale_m / px, octaves)
        return raw < share_threshold(share, octaves)

    yy = np.arange(y0, y0 + h, dtype=np.int64)[:, None]
    xx = np.arange(x0, x0 + w, dtype=np.int64)[None, :]

    # Natural land: forest patches and bare ground in grassland.
    classes = np.full((h, w), GRASSLAND, dtype=np.uint8)
    if p.natural_bare > 0:
        classes[below("bare", p.natural_bare, 6000.0)] = BARE
    if p.forest > 0:
        classes[below("forest", p.forest, 8000.0)] = FOREST
    vigour = grid_noise(key("vigour-px"), y0, x0, h, w, 400.0 / px)
    crop_phase = np.ones((h, w), dtype=np.float32)

    # Agricultural zone cut into parcels; each parcel's use, phenology phase and vigour are hashed.
    if p.agri > 0:
        zone = below("agri", p.agri, 20000.0)
        ph, pw = p.parcel_m[0] / px, p.parcel_m[1] / px
        if p.parcel_warp_m > 0:
            warp = p.parcel_warp_m / px
            fy = np.float32(warp) * (grid_noise(key("pwarp-y"), y0, x0, h, w, 3 * ph) - 0.5)
            fx = np.float32(warp) * (grid_noise(key("pwarp-x"), y0, x0, h, w, 3 * pw) - 0.5)
            py_ = np.floor((yy + 0.5 + fy) / ph).astype(np.int64)
            px_ = np.floor((xx + 0.5 + fx) / pw).astype(np.int64)
        else:
            py_ = np.broadcast_to(np.floor((yy + 0.5) / ph).astype(np.int64), (h, w))
            px_ = np.broadcast_to(np.floor((xx + 0.5) / pw).astype(np.int64), (h, w))
        use = lattice_lookup(key("parcel-use"), py_, px_)
        phase = lattice_lookup(key("parcel-phase"), py_, px_)
        pvig = lattice_lookup(key("parcel-vigour"), py_, px_)
        crop = zone & (use < p.crop_share)
        fallow = zone & ~crop & (use < p.crop_share + (1 - p.crop_share) * p.fallow_share)
        pasture = zone & ~crop & ~fallow
        classes[crop] = CROPLAND
        classes[fallow] = BARE
        classes[pasture] = GRASSLAND
        crop_phase[zone] = phase[zone]
        vigour[zone] = pvig[zone]

    # Centre-pivot irrigation: circles on a lattice of cells, inside a pivot zone decided per cell.
    if p.pivot_zone > 0:
        cell = p.pivot_m / px
        cy = np.floor((yy + 0.5) / cell).astype(np.int64)
        cx = np.floor((xx + 0.5) / cell).astype(np.int64)
        ccy, ccx = np.broadcast_arrays(cy, cx)
        uy = np.arange(int(cy.min()), int(cy.max()) + 1)
        ux = np.arange(int(cx.min()), int(cx.max()) + 1)
        # The zone is evaluated at cell centres so circles are whole, never cut by the zone edge.
        zone_cells = _fractal_points_raw(
            key("pivot-zone"), (uy[:, None] + 0.5) * cell, (ux[None, :] + 0.5) * cell, 25000.0 / px, 3
        ) < share_threshold(p.pivot_zone, 3)
        occupied = zone_cells & (hash_uniform(key("pivot-cell"), uy[:, None], ux[None, :]) < 0.75)
        radius = 0.45 * cell * (0.8 + 0.2 * hash_uniform(key("pivot-r"), uy[:, None], ux[None, :]))
        dy = (yy + 0.5) - (cy + 0.5) * cell
        dx = (xx + 0.5) - (cx + 0.5) * cell
        inside = (dy * dy + dx * dx) < radius[ccy - uy[0], ccx - ux[0]] ** 2
        pivot = inside & occupied[ccy - uy[0], ccx - ux[0]]
        classes[pivot] = CROPLAND
        crop_phase[pivot] = lattice_lookup(key("pivot-phase"), ccy, ccx)[pivot]
        vigour[pivot] = lattice_lookup(key("pivot-vigour"), ccy, ccx)[pivot]

    # Towns (many, small) and cities (few, large); street grid inside them.
    density = np.zeros((h, w), dtype=np.float32)
    for layer, share, scale in (("towns", p.towns, p.town_scale_m), ("city", p.city, p.city_scale_m)):
        central = layer == "city" and p.central_city_m > 0
        if share > 0 or central:
            octaves = 3
            raw = fractal_field(key(layer), y0, x0, h, w, scale / px, octaves)
            if central:
                # A basin in the city field at the AOI centre: the named place has its city.
                r2 = ((yy + 0.5) ** 2 + (xx + 0.5) ** 2) * (px / p.central_city_m) ** 2
                raw = raw - np.float32(0.6) * np.exp(-r2).astype(np.float32)
            level, floor = share_threshold(share, octaves), share_threshold(0.0, octaves)
            built = raw < level
            classes[built] = BUILTUP
            # Denser towards the centre of a town (the bottom of its noise basin).
            d = np.clip((level - raw[built]) / (level - floor), 0.0, 1.0)
            density[built] = np.maximum(density[built], d)
    block = max(int(round(p.road_block_m / px)), 2)
    road = (classes == BUILTUP) & ((np.mod(yy, block) == 0) | (np.mod(xx, block) == 0))

    # Riparian woods, then water: lakes, meandering rivers, canals.
    river = np.zeros((h, w), dtype=bool)
    if p.rivers > 0 or p.riparian > 0:
        scale = p.river_scale_m / px
        u = warped_field(key("rivers"), y0, x0, h, w, scale, warp=0.35 * scale)
        if p.riparian > 0:
            classes[_bands(u, p.rivers + p.riparian, 1) & (classes != BUILTUP)] = FOREST
        river |= _bands(u, p.rivers, 1)
    if p.main_river > 0:
        scale = p.main_river_scale_m / px
        river |= _bands(warped_field(key("main-river"), y0, x0, h, w, scale, warp=0.3 * scale), p.main_river, 1)
    classes[river] = WATER
    if p.lakes > 0:
        classes[below("lakes", p.lakes, p.lake_scale_m)] = WATER
    if p.canal_spacing_m > 0:
        sp = max(int(round(p.canal_spacing_m / px)), 4)
        farmland = (classes == CROPLAND) | (classes == BARE)
        main = np.mod(xx + 7, sp) == 0
        # Distributaries run across, every other segment of each row line dug.
        seg = lattice_lookup(key("canal-seg"), np.broadcast_to(yy // (sp // 2), (h, w)),
                             np.broadcast_to(xx // sp, (h, w)))
        distributary = (np.mod(yy + 3, sp // 2) == 0) & (seg < 0.5)
        classes[farmland & (main | distributary)] = WATER

    road &= classes == BUILTUP
    density[classes != BUILTUP] = 0.0
    texture = 2.0 * _fractal_raw(key("texture"), y0, x0, h, w, 3.0, 2) - 1.0
    lo, hi = share_threshold(0.01, 2), share_threshold(0.99, 2)
    moisture = np.clip((fractal_field(key("moisture"), y0, x0, h, w, 12000.0 / px, 2) - lo) / (hi - lo), 0.0, 1.0)
    return LandCover(p, grid, int(seed), classes, crop_phase, vigour, density, road, texture, moisture)


def landcover_map(aoi: "str | AOIProfile", rows: range, cols: range, seed: int, chip_size: int = 64) -> np.ndarray:
    """The land-cover class raster `uint8 [H, W]` of a block (values index `CLASS_NAMES`)."""
    return landcover_block(aoi, rows, cols, seed, chip_size).classes


def landcover_chips(aoi: "str | AOIProfile", rows: range, cols: range, seed: int, chip_size: int = 64) -> np.ndarray:
    """The land-cover classes of a block in chip layout `uint8 [n, cs, cs]` (row-major, like the arrays)."""
    lc = landcover_block(aoi, rows, cols, seed, chip_size)
    return lc.grid.to_chips(lc.classes)


def class_fractions(classes_chips: np.ndarray) -> np.ndarray:
    """Per-chip area fraction of every class, `[n, len(CLASS_NAMES)]`, from chips `[n, H, W]`."""
    n = classes_chips.shape[0]
    k = len(CLASS_NAMES)
    flat = classes_chips.reshape(n, -1)
    # One bincount over (chip, class) pairs instead of a Python loop over chips.
    codes = flat.astype(np.int64) + (np.arange(n, dtype=np.int64) * k)[:, None]
    counts = np.bincount(codes.ravel(), minlength=n * k).reshape(n, k)
    return counts / float(flat.shape[1])


def label_fractions(classes_chips: np.ndarray) -> dict[str, np.ndarray]:
    """Exact chip-level label fractions (vegetation, builtup, cropland, water) from class chips."""
    frac = class_fractions(classes_chips)
    return {task: frac[:, list(ids)].sum(axis=1) for task, ids in LABEL_CLASSES.items()}


def swath_position(x_px: np.ndarray, orbit: str | None = None) -> np.ndarray:
    """Position across a 250 km Sentinel-1 IW swath (0 near range .. 1 far range) from global x."""
    pos = np.mod(x_px * PIXEL_SIZE_M + 125_000.0, 250_000.0) / 250_000.0
    return 1.0 - pos if orbit == "des" else pos


@lru_cache(maxsize=1)
def _utm_zones() -> tuple[tuple[int, float, float, float, float], ...]:
    """(EPSG code, west, south, east, north) of every WGS 84 UTM zone, from the PROJ database (queried once:
    a query takes ~0.5 s)."""
    return tuple((int(c.code), c.area_of_use.west, c.area_of_use.south, c.area_of_use.east, c.area_of_use.north)
                 for c in query_utm_crs_info(datum_name="WGS 84") if c.auth_name == "EPSG" and c.area_of_use)


def utm_epsg(lat: float, lon: float) -> int:
    """EPSG code of the WGS 84 UTM zone holding a point (326xx north, 327xx south), per the zones' areas of use."""
    lon = -180.0 if lon == 180.0 else float(lon)  # the antimeridian belongs to zone 1, as in the usual rule
    hemisphere = 326 if lat >= 0 else 327          # the equator lies in both areas of use: take the north
    codes = [code for code, w, s, e, n in _utm_zones()
             if code // 100 == hemisphere and w <= lon <= e and s <= lat <= n]
    if not codes:
        raise ValueError(f"no UTM zone holds ({lat}, {lon}): UTM covers latitudes -80..84")
    return max(codes)  # a point on a zone edge lies in two zones: take the eastern one, as floor((lon+180)/6)+1 does
