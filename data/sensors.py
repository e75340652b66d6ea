"""Simple physical sensor models that render a simulated land cover into Sentinel-2, Sentinel-1 and InSAR chips.

- `s2rgb`: class reflectance spectra (B4, B3, B2), mixed by green-vegetation cover, with within-class
  texture, additive haze (path reflectance, strongest in blue) and clouds masked as NaN.
- `s1amp`: class backscatter sigma0 (linear power) with an incidence-angle trend across the swath,
  thermal noise floor and multiplicative gamma speckle (ENL ~4.5), in dB.
- `coh`: class coherence decaying with the temporal baseline, gamma(dt) = g_inf + (g0 - g_inf) *
  exp(-dt / tau), estimated from a finite number of looks (biased upwards where coherence is low).

Spatially smooth effects (haze, clouds, wind on water) are noise fields of global position, so they
continue across chip borders; pixel noise (speckle, estimator noise) comes from a random stream per
chip, seeded by (seed, AOI, row, col), so every chip is the same whichever block it is generated in.

Channel names are configuration: `B4`, `VV`, `VH`, `VV_12d`, optionally with a season (`VV_summer`,
`B3_winter`), an orbit (`VV_asc`, `VH_des`) and, for coherence, a baseline in days (`VV_summer_36d`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from data.modalities import get_modality
from data.landcover import (
    BARE,
    BUILTUP,
    CROPLAND,
    FOREST,
    GRASSLAND,
    PIXEL_SIZE_M,
    WATER,
    LandCover,
    aoi_code,
    fractal_field,
    lattice_lookup,
    layer_key,
    share_threshold,
    swath_position,
)

SEASON_TOKENS = {"winter": "winter", "spring": "spring", "summer": "summer", "fall": "fall", "autumn": "fall"}
ORBIT_TOKENS = {"asc": "asc", "des": "des", "desc": "des"}
DEFAULT_BASELINE_DAYS = 12.0  # Sentinel-1 repeat interval with one satellite after 2021
SPECKLE_ENL = 4.5
COHERENCE_LOOKS = 30  # pixels in the coherence estimation window
NESZ_DB = -27.0  # thermal noise floor of Sentinel-1 IW (VH of calm water sits on it: -25 dB in Sen1Floods11)
REFERENCE_INCIDENCE_DEG = 38.0

_BASES = {"s2rgb": ("B4", "B3", "B2"), "s1amp": ("VV", "VH"), "coh": ("VV", "VH")}
_EXAMPLES = {"s2rgb": "B4, B3_summer", "s1amp": "VV, VH_winter, VV_asc", "coh": "VV_12d, VV_summer_36d"}
_BASELINE = re.compile(r"^(\d+(?:\.\d+)?)d$")


@dataclass(frozen=True)
class ChannelSpec:
    """What a channel name means to the simulator."""

    name: str
    base: str  # B4/B3/B2 or VV/VH
    season: str | None = None
    orbit: str | None = None
    baseline_days: float | None = None


def parse_channel(modality: str, name: str) -> ChannelSpec:
    """Parse a channel name such as `VV_summer_36d`; ValueError explaining the grammar if unknown."""
    if modality not in _BASES:
        raise ValueError(f"the simulator knows modalities {list(_BASES)}, not {modality!r}")
    parts = str(name).split("_")
    base, tokens = parts[0], parts[1:]
    hint = f"expected e.g. {_EXAMPLES[modality]}"
    if base not in _BASES[modality]:
        raise ValueError(f"unknown {modality} channel {name!r}: base must be one of {_BASES[modality]} ({hint})")
    season = orbit = baseline = None
    for tok in tokens:
        t = tok.lower()
        if t in SEASON_TOKENS and season is None:
            season = SEASON_TOKENS[t]
        elif t in ORBIT_TOKENS and orbit is None and modality != "s2rgb":
            orbit = ORBIT_TOKENS[t]
        elif modality == "coh" and _BASELINE.match(t) and baseline is None:
            baseline = float(_BASELINE.match(t).group(1))
            if baseline <= 0:
                raise ValueError(f"coherence channel {name!r}: the baseline must be positive days")
        else:
            raise ValueError(
                f"unknown {modality} channel {name!r}: cannot read {tok!r} (seasons {sorted(set(SEASON_TOKENS.values()))}"
                + (", orbits asc/des" if modality != "s2rgb" else "")
                + (", baseline like 12d" if modality == "coh" else "")
                + f"; {hint})"
            )
    if modality == "coh" and baseline is None:
        baseline = DEFAULT_BASELINE_DAYS
    return ChannelSpec(str(name), base, season, orbit, baseline)


def parse_channels(modality: str, names: Sequence[str]) -> list[ChannelSpec]:
    """Validate a channel list against the registry and the simulator's grammar."""
    specs = [parse_channel(modality, n) for n in names]  # first: its errors explain the grammar
    get_modality(modality).validate_channels(list(names))
    return specs


# ----------------------------------------------------------------------------------------------------
# Per-class physical parameters. Two endpoints per class: without and with full green cover; the
# pixel value mixes them by the greenness of its season (crops: bare/sown soil -> closed canopy).
# ----------------------------------------------------------------------------------------------------

_N_CLASSES = 6
# Reflectance B4, B3, B2 (surface, 0-1). Vegetation: low red, green peak; water dark.
_REFL_GREEN_VEG = (0.035, 0.075, 0.035)
_REFL = {
    FOREST: ((0.06, 0.065, 0.045), (0.025, 0.05, 0.025)),
    GRASSLAND: ((0.15, 0.13, 0.09), _REFL_GREEN_VEG),
    CROPLAND: (None, (0.03, 0.075, 0.03)),  # None: the AOI's soil
    BUILTUP: ((0.14, 0.13, 0.12), (0.14, 0.13, 0.12)),
    BARE: (None, None),
}
_REFL_ROAD = (0.09, 0.09, 0.09)
_HAZE_SPECTRUM = np.array([0.5, 0.7, 1.0], dtype=np.float32)  # path reflectance grows towards blue

# sigma0 VV, VH in dB at the reference incidence. Forest: volume scattering (high VH); built-up:
# double bounce (bright VV); calm water: specular (dark).
_SIGMA_DB = {
    WATER: ((-19.0, -29.0), (-19.0, -29.0)),
    FOREST: ((-8.0, -14.0), (-6.5, -12.0)),
    GRASSLAND: ((-13.0, -21.0), (-10.5, -17.0)),
    CROPLAND: ((-12.0, -21.0), (-9.0, -15.0)),
    BUILTUP: ((-8.0, -15.0), (-8.0, -15.0)),  # ordinary lots; bright lots add BRIGHT_LOT_GAIN_DB
    BARE: (None, None),  # the AOI's bare soil
}
_SIGMA_ROAD_DB = (-16.0, -24.0)
# Exponent n of the incidence dependence sigma0 ~ cos(theta)^n: steep for water, flat for volumes.
_INCIDENCE_EXP = {WATER: 6.0, FOREST: 1.0, GRASSLAND: 2.5, CROPLAND: 2.5, BUILTUP: 1.0, BARE: 3.0}

# Coherence (g0, g_inf, tau days): built-up stable, bare soil fairly stable, vegetation and water not.
_COH = {
    WATER: ((0.08, 0.02, 2.0), (0.08, 0.02, 2.0)),
    FOREST: ((0.45, 0.15, 10.0), (0.30, 0.08, 5.0)),
    GRASSLAND: ((0.65, 0.25, 25.0), (0.45, 0.12, 10.0)),
    CROPLAND: ((0.75, 0.35, 30.0), (0.40, 0.10, 8.0)),
    # Built-up and bare: fitted on the real PyRate crop (Mexico City), top quartile and all pixels.
    BUILTUP: ((0.80, 0.62, 85.0), (0.80, 0.62, 85.0)),
    BARE: ((0.72, 0.50, 70.0), (0.72, 0.50, 70.0)),
}
_COH_ROAD = (0.80, 0.60, 150.0)

# Built-up surfaces are a patchwork of roofs, paving and gardens, one material per lot (~140 m): their
# optical spectra overlap bare soil, roads and vegetation (Sentinel-2 urban/bare confusion).
LOT_M = 140.0
_ROOF_RGB = np.array([
    (0.24, 0.23, 0.21),  # concrete, light roofs
    (0.20, 0.11, 0.07),  # red clay tiles
    (0.07, 0.07, 0.075),  # dark roofs, asphalt
    (0.16, 0.17, 0.18),  # metal sheet
    (0.13, 0.11, 0.09),  # bare lots, building sites (soil-like)
], dtype=np.float32)
_ROOF_SHARES = np.array([0.3, 0.2, 0.2, 0.15, 0.15])
# SAR double bounce needs walls facing the sensor: only a share of lots is bright, the rest scatter
# like rough ground or trees (urban backscatter is heavy-tailed, not uniformly bright).
BRIGHT_LOT_SHARE = 0.35
BRIGHT_LOT_GAIN_DB = 9.0
# Pixels are 70 m: the sensors' ground footprints mix neighbouring covers at class edges.
MIXING_SIGMA_PX = 0.6


def _lut(table: dict, which: int, default: tuple) -> np.ndarray:
    """Per-class lookup table `[classes, k]` of one endpoint (0 bare, 1 green)."""
    rows = []
    for c in range(_N_CLASSES):
        pair = table.get(c)
        v = pair[which] if pair is not None and pair[which] is not None else default
        rows.append(v)
    return np.asarray(rows, dtype=np.float32)


def coherence_at(g0: "np.ndarray | float", g_inf: "np.ndarray | float", tau: "np.ndarray | float", days: float) -> np.ndarray:
    """Expected coherence after `days`: g_inf + (g0 - g_inf) * exp(-days / tau)."""
    g0, g_inf, tau = (np.asarray(v, dtype=np.float32) for v in (g0, g_inf, tau))
    return g_inf + (g0 - g_inf) * np.exp(-np.float32(days) / tau)


def chip_rngs(lc: LandCover, stream: int) -> list[np.random.Generator]:
    """One random generator per chip (row-major), seeded by (stream, seed, AOI, row, col)."""
    code = aoi_code(lc.profile.name)
    return [
        np.random.default_rng([stream, lc.seed, code, r, c]) for r in lc.grid.rows for c in lc.grid.cols
    ]


class BlockView:
    """The land cover of a block in chip layout `[n, s, s]`, with the fields the sensors share."""

    def __init__(self, lc: LandCover) -> None:
        self.lc, self.grid, self.profile = lc, lc.grid, lc.profile
        g = self.grid
        self.classes = g.to_chips(lc.classes)
        self.density = g.to_chips(lc.density)
        self.road = g.to_chips(lc.road)
        self.texture = g.to_chips(lc.texture)
        self.moisture = g.to_chips(lc.moisture)
        self._green: dict[str | None, np.ndarray] = {}
        self._fields: dict[str, np.ndarray] = {}

    def greenness(self, season: str | None) -> np.ndarray:
        """Green cover `[n, s, s]` of a season (cached: several channels share a season)."""
        key = season or self.profile.season
        if key not in self._green:
            self._green[key] = self.grid.to_chips(self.lc.greenness(key))
        return self._green[key]

    def field(self, layer: str, scale_m: float, octaves: int) -> np.ndarray:
        """A smooth global noise field of this AOI and seed, in chip layout, values in [0, 1] (cached)."""
        if layer not in self._fields:
            g = self.grid
            h, w = g.shape
            raw = fractal_field(layer_key(self.lc.seed, self.profile.name, layer), g.y0, g.x0, h, w,
                                scale_m / PIXEL_SIZE_M, octaves)
            self._fields[layer] = g.to_chips(raw)
        return self._fields[layer]

    def lots(self, layer: str) -> np.ndarray:
        """A uniform [0, 1) value per lot (`LOT_M` squares of global position), in chip layout (cached)."""
        name = f"lot-{layer}"
        if name not in self._fields:
            g = self.grid
            h, w = g.shape
            cell = LOT_M / PIXEL_SIZE_M
            iy = np.floor((np.arange(g.y0, g.y0 + h) + 0.5) / cell).astype(np.int64)
            ix = np.floor((np.arange(g.x0, g.x0 + w) + 0.5) / cell).astype(np.int64)
            iy2, ix2 = np.broadcast_arrays(iy[:, None], ix[None, :])
            raw = lattice_lookup(layer_key(self.lc.seed, self.profile.name, name), iy2, ix2)
            self._fields[name] = g.to_chips(raw.reshape(h, w))
        return self._fields[name]

    def roof_material(self) -> np.ndarray:
        """Index into `_ROOF_RGB` per pixel: one material per lot."""
        return np.searchsorted(np.cumsum(_ROOF_SHARES), self.lots("roof"), side="right").clip(0, len(_ROOF_SHARES) - 1)

    def log_cos_ratio(self, orbit: str | None) -> np.ndarray:
        """log(cos(theta) / cos(theta_ref)) per pixel `[n, s, s]`, theta from the position in the swath."""
        g = self.grid
        x = np.arange(g.x0, g.x0 + g.shape[1], dtype=np.float64) + 0.5
        theta = np.deg2rad(30.0 + 16.0 * swath_position(x, orbit))
        ratio = np.log(np.cos(theta) / np.cos(np.deg2rad(REFERENCE_INCIDENCE_DEG))).astype(np.float32)
        return g.to_chips(np.broadcast_to(ratio[None, :], g.shape))


def footprint_mix(x: np.ndarray) -> np.ndarray:
    """Mix each pixel with its neighbours as a sensor footprint does (`[n, s, s]`, linear units)."""
    return gaussian_filter(x, sigma=(0.0, MIXING_SIGMA_PX, MIXING_SIGMA_PX), mode="nearest")


def _mix(a_lut: np.ndarray, b_lut: np.ndarray, classes: np.ndarray, g: np.ndarray, k: int) -> np.ndarray:
    a = a_lut[:, k][classes]
    return a + (b_lut[:, k][classes] - a) * g


def render_s2rgb(view: BlockView, specs: Sequence[ChannelSpec]) -> np.ndarray:
    """Sentinel-2 reflectance `[n, C, s, s]` float32: spectra, texture, haze, clouds masked as NaN."""
    p = view.profile
    soil = tuple(p.soil_rgb)
    lut_a = _lut({**_REFL, WATER: (p.water_rgb, p.water_rgb)}, 0, soil)
    lut_b = _lut({**_REFL, WATER: (p.water_rgb, p.water_rgb)}, 1, soil)
    band_index = {"B4": 0, "B3": 1, "B2": 2}
    cls = view.classes
    out = np.empty((cls.shape[0], len(specs)) + cls.shape[1:], dtype=np.float32)
    soil_like = (cls == BARE) | (cls == CROPLAND) | (cls == GRASSLAND)
    for season in dict.fromkeys(s.season or p.season for s in specs):
        g = view.greenness(season)
        # Wet soil is darker; only the soil that shows through the canopy is affected.
        wet = np.where(soil_like, 1.0 - 0.3 * view.moisture * (1.0 - g), 1.0).astype(np.float32)
        grain = 1.0 + 0.12 * view.texture * np.where(cls == BARE, 1.5, 1.0).astype(np.float32)
        # Gardens and street trees: greener where built-up is sparse, following the season's vigour.
        garden = (0.6 * (1.0 - view.density) * view.lots("garden") * p.vigour_by_season[p.season_index(season)])
        roof = view.roof_material()
        # Illumination, view geometry and compositing differ between acquisitions: a smooth gain.
        gain = 0.85 + 0.3 * view.field(f"illum-{season}", 25000.0, 2)
        # Mostly clear air with occasional hazy stretches: square the smooth field.
        haze = np.square(view.field(f"haze-{season}", 50000.0, 2)) * np.float32(p.haze)
        cloud_raw = view.field(f"cloud-{season}", 15000.0, 4)
        cloudy = cloud_raw < share_threshold(p.cloud_cover, 4)
        # Thin cloud around the opaque cores brightens all bands (not masked: hard to detect).
        veil_level = share_threshold(min(1.0, p.cloud_cover * 2.0), 4)
        veil = np.clip((veil_level - cloud_raw) / max(veil_level - share_threshold(p.cloud_cover, 4), 1e-6), 0, 1)
        veil = (0.08 * veil * (p.cloud_cover > 0)).astype(np.float32)
        for j, spec in enumerate(specs):
            if (spec.season or p.season) != season:
                continue
            k = band_index[spec.base]
            refl = _mix(lut_a, lut_b, cls, g, k) * wet * grain
            urban = _ROOF_RGB[:, k][roof] * (1.0 - garden) + _REFL_GREEN_VEG[k] * garden
            refl = np.where(cls == BUILTUP, np.where(view.road, _REFL_ROAD[k], urban * grain), refl)
            refl = footprint_mix(refl * gain)
            refl = refl + haze * _HAZE_SPECTRUM[k] + veil
            refl[cloudy] = np.nan
            out[:, j] = np.maximum(refl, 0.0)
    return out


def render_s1amp(view: BlockView, specs: Sequence[ChannelSpec]) -> np.ndarray:
    """Sentinel-1 backscatter `[n, C, s, s]` in dB: class sigma0, incidence trend, noise floor, speckle."""
    p = view.profile
    db_a = _lut(_SIGMA_DB, 0, p.bare_sar_db)
    db_b = _lut(_SIGMA_DB, 1, p.bare_sar_db)
    lin_a, lin_b = 10.0 ** (db_a / 10.0), 10.0 ** (db_b / 10.0)
    pol_index = {"VV": 0, "VH": 1}
    n_exp = np.array([_INCIDENCE_EXP[c] for c in range(_N_CLASSES)], dtype=np.float32)
    cls = view.classes
    n, s = cls.shape[0], cls.shape[1]
    out = np.empty((n, len(specs), s, s), dtype=np.float32)
    soil_like = (cls == BARE) | (cls == CROPLAND) | (cls == GRASSLAND)
    built, water = cls == BUILTUP, cls == WATER
    exponent = n_exp[cls]
    speckle = np.stack([r.standard_gamma(SPECKLE_ENL, size=(len(specs), s, s), dtype=np.float32)
                        for r in chip_rngs(view.lc, 2)])  # [n, C, s, s], mean SPECKLE_ENL
    nesz = np.float32(10.0 ** (NESZ_DB / 10.0))
    db_to_ln = np.float32(np.log(10.0) / 10.0)
    road_sigma = np.float32(10.0 ** (_SIGMA_ROAD_DB[0] / 10.0)), np.float32(10.0 ** (_SIGMA_ROAD_DB[1] / 10.0))
    for j, spec in enumerate(specs):
        g = view.greenness(spec.season)
        k = pol_index[spec.base]
        sigma = _mix(lin_a, lin_b, cls, g, k)
        sigma[built & view.road] = road_sigma[k]
        # All multiplicative effects as one sum of dB terms, exponentiated once:
        gain_db = 1.0 * view.texture  # within-class variation, +-1 dB
        # Soil moisture raises the dielectric constant: brighter, less so under a canopy.
        gain_db += np.where(soil_like, 4.0 * (view.moisture - 0.5) * (1.0 - 0.5 * g), 0.0).astype(np.float32)
        # Double bounce on the lots whose walls face the sensor, more of it where built-up is dense.
        bright = view.lots(f"orient-{spec.orbit}") < BRIGHT_LOT_SHARE
        gain_db += np.where(built & ~view.road, 3.0 * view.density - 1.5 + BRIGHT_LOT_GAIN_DB * bright, 0.0).astype(np.float32)
        # Rain or dew before an acquisition wets soil and canopies alike: a smooth offset of +-1.5 dB.
        wet_event = view.field(f"wet-{spec.season or p.season}-{spec.orbit}", 30000.0, 2)
        gain_db += np.where(water, 0.0, 3.0 * (wet_event - 0.5)).astype(np.float32)
        # Wind roughens water (brighter), smoothly across the AOI.
        wind = view.field(f"wind-{spec.season or p.season}", 20000.0, 2)
        gain_db += np.where(water, 8.0 * wind - 4.0, 0.0).astype(np.float32)
        # Incidence trend: sigma0 ~ (cos(theta) / cos(theta_ref)) ** n, theta from the swath position.
        log_gain = gain_db * db_to_ln + exponent * view.log_cos_ratio(spec.orbit)
        sigma = footprint_mix(sigma * np.exp(log_gain))
        out[:, j] = 10.0 * np.log10((sigma + nesz) * speckle[:, j] / np.float32(SPECKLE_ENL))
    return out


def render_coh(view: BlockView, specs: Sequence[ChannelSpec]) -> np.ndarray:
    """InSAR coherence `[n, C, s, s]` in [0, 1] per temporal baseline, with estimator noise and bias."""
    p = view.profile
    lut_a = _lut(_COH, 0, _COH[BARE][0])
    lut_b = _lut(_COH, 1, _COH[BARE][1])
    cls = view.classes
    n, s = cls.shape[0], cls.shape[1]
    out = np.empty((n, len(specs), s, s), dtype=np.float32)
    noise = np.stack([r.standard_normal(size=(len(specs), 2, s, s), dtype=np.float32)
                      for r in chip_rngs(view.lc, 3)])  # [n, C, 2, s, s]
    built = cls == BUILTUP
    for j, spec in enumerate(specs):
        g = view.greenness(spec.season)
        days = spec.baseline_days
        # Expected coherence per class at this baseline (a 6-entry table), then per pixel.
        gamma_a = coherence_at(lut_a[:, 0], lut_a[:, 1], lut_a[:, 2], days)
        gamma_b = coherence_at(lut_b[:, 0], lut_b[:, 1], lut_b[:, 2], days)
        gamma = gamma_a[cls] + (gamma_b - gamma_a)[cls] * g
        gamma[built] *= 0.9 + 0.1 * view.density[built]
        gamma[built & view.road] = coherence_at(*_COH_ROAD, days)
        # Rain, wind or snow between the two acquisitions decorrelate natural surfaces over wide areas;
        # buildings keep their phase.
        event = view.field(f"decor-{spec.season or p.season}-{days:g}", 25000.0, 2)
        gamma = gamma * np.where(built, 1.0, 0.7 + 0.3 * event).astype(np.float32)
        gamma = np.clip(footprint_mix(gamma * (1.0 + 0.05 * view.texture)), 0.0, 0.99)
        # Sample coherence of N looks: |gamma + complex Gaussian error|, biased up at low coherence.
        sigma = np.sqrt((1.0 - gamma * gamma) / np.float32(2.0 * COHERENCE_LOOKS))
        re_ = gamma + sigma * noise[:, j, 0]
        im_ = sigma * noise[:, j, 1]
        out[:, j] = np.minimum(np.sqrt(re_ * re_ + im_ * im_), 1.0)
    return out


RENDERERS = {"s2rgb": render_s2rgb, "s1amp": render_s1amp, "coh": render_coh}
