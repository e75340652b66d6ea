"""Representations: named sets of per-chip vectors of one AOI, the input of search, UMAP, probes and mapping.

A representation name says which vectors, and the same name means the same vectors everywhere:

- the model's embeddings: `fused` and each modality key (`s2rgb`, `s1amp`, `coh`), optionally as if some
  modalities or channels were missing at inference (`dropped_modalities`, `dropped_channels`): a dropped
  modality is left out of the fused vector (`Embeddings.fused_without`); a modality missing channels takes
  its vectors from the matching `drop-<mod>-<channels>` embedding scenario (`data.workspace.drop_scenario`);
- `random-init` (fused) and `random-init:<key>`: the same architecture untrained, the learned baseline;
- `hand-crafted` (per-channel statistics, `core.features.handcrafted_features`) and the evaluation's other
  cheap baselines `stats`, `hist`, `hist-q`, `texture`, `combined` (`core.features.baseline_features`).

`list_representations(ws, aoi, model)` names those available for an AOI; `load_representation(...)`
returns `(chip_ids, X, valid)` with rows in store order and `valid` False where a chip has no input.

- external embeddings (issue #17): any other name is a representation brought by the user (AlphaEarth,
  Tessera, any per-pixel embedding raster), pooled per chip by `python -m data.ingest embeddings` into
  `Workspace.representation_dir(aoi, name)` (`data.external`) and served by `ExternalEmbeddings`; missing
  chips are zero vectors with valid False, like an absent modality. `external_index` builds (once) and
  loads its FAISS index; `as_embeddings` wraps any representation for `core.search.search_chips`.

Extension point: write a `RepresentationSource` (`names`, `owns`, `load`, `source_files`) and call
`register_source(...)` once at import of its module. Callers (app, mapping, probes) only pass names, so
nothing else changes. The rules about which inputs may be dropped (`normalise_drops`) and the per-chip
modality availability (`availability`) live here too, not in the pages.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, NamedTuple, Protocol, Sequence

import numpy as np

from core.embeddings import EmbeddingError, Embeddings, load_embeddings
from core.features import BASELINES, baseline_features, handcrafted_features
from core.index import ChipIndex, IndexLoadError
from core.model import fuse
from data.external import ExternalError, list_external, read_external
from data.cli import KnownError
from data.modalities import MODALITY_KEYS
from data.store import ChipStore
from data.workspace import SCENARIO_FULL, SCENARIO_RANDOM, Workspace, drop_scenario

_NAME = re.compile(r"[A-Za-z0-9_-]+")

RANDOM_INIT = SCENARIO_RANDOM
HAND_CRAFTED = "hand-crafted"
EMBEDDING_KEYS: tuple[str, ...] = ("fused", *MODALITY_KEYS)

EmbeddingsLoader = Callable[[str], Embeddings]
"""scenario -> that scenario's Embeddings of the AOI (the app passes its cached loader)."""
Drops = tuple[tuple[str, ...], tuple[tuple[str, str], ...]]


class RepresentationError(KnownError, ValueError):
    """A representation cannot be made as asked: `message` says what is wrong, `fix` what to do."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message, self.fix = message, fix

    def __str__(self) -> str:
        return f"{self.message} {self.fix}".strip()


class RepresentationVectors(NamedTuple):
    """Per-chip vectors of one representation: ids [N], X [N, D] float32, valid [N] bool (rows in store order)."""

    chip_ids: np.ndarray
    X: np.ndarray
    valid: np.ndarray


@dataclass(frozen=True)
class Request:
    """Everything a source needs to load one representation."""

    ws: Workspace
    aoi: str
    model: str
    name: str
    dropped_modalities: tuple[str, ...]
    dropped_channels: tuple[tuple[str, str], ...]
    embeddings: EmbeddingsLoader
    store: Callable[[], ChipStore]


class RepresentationSource(Protocol):
    """One family of representations (model embeddings, baselines, external vectors)."""

    def names(self, ws: Workspace, aoi: str, model: str) -> list[str]:
        """Names this source can load for an AOI now (what is built)."""

    def owns(self, name: str) -> bool:
        """Whether a name belongs to this source."""

    def load(self, req: Request) -> RepresentationVectors:
        """The vectors of `req.name`."""

    def source_files(self, ws: Workspace, aoi: str, model: str, name: str,
                     dropped_channels: tuple[tuple[str, str], ...]) -> list[Path]:
        """Files the vectors are read from (their modification times key the app's caches)."""


# ----------------------------------------------------------------------------------------- drop rules
def channel_drops(dropped_channels: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """(modality, channel) pairs -> modality -> sorted channels dropped."""
    out: dict[str, list[str]] = {}
    for mod, ch in dropped_channels:
        out.setdefault(mod, []).append(ch)
    return {m: sorted(set(c)) for m, c in sorted(out.items())}


def drop_scenarios_needed(dropped_channels: Iterable[tuple[str, str]]) -> dict[str, str]:
    """modality -> the embedding scenario that holds its vectors without the dropped channels."""
    return {mod: drop_scenario(mod, chans) for mod, chans in channel_drops(dropped_channels).items()}


def normalise_drops(modalities: Sequence[str], channels: Mapping[str, Sequence[str]],
                    dropped_modalities: Iterable[str] = (), dropped_channels: Iterable[tuple[str, str]] = ()) -> Drops:
    """The canonical (dropped_modalities, dropped_channels): a modality missing every channel is missing;
    channels of a missing modality are not listed; nothing left to embed is a RepresentationError."""
    mods = set(dropped_modalities)
    for mod, chans in channel_drops(dropped_channels).items():
        if channels.get(mod) and set(chans) >= set(channels[mod]):
            mods.add(mod)
    chans_out = tuple(sorted((m, c) for m, c in set(dropped_channels) if m not in mods))
    if modalities and all(m in mods for m in modalities):
        raise RepresentationError("Every modality is unchecked: there is nothing left to embed.",
                                  "Check at least one modality.")
    return tuple(sorted(mods)), chans_out


def availability(present: Mapping[str, np.ndarray]) -> np.ndarray:
    """Per chip, which modalities are present: 'all present', 'no coh', 'only s2rgb', 'none'..."""
    mods = [m for m in MODALITY_KEYS if m in present]
    flags = np.stack([np.asarray(present[m], dtype=bool) for m in mods], axis=1)
    out = []
    for row in flags.tolist():
        have = [m for m, ok in zip(mods, row) if ok]
        if len(have) == len(mods):
            out.append("all present")
        elif not have:
            out.append("none")
        elif len(have) == 1:
            out.append(f"only {have[0]}")
        else:
            out.append("no " + ", ".join(m for m in mods if m not in have))
    return np.array(out, dtype=object)


# ----------------------------------------------------------------------------------------- sources
def present_counts(ws: Workspace, aoi: str, model: str, scenario: str = SCENARIO_FULL) -> dict[str, int]:
    """key -> chips with that key present, read from the small presence file only ({} when not built or unreadable)."""
    try:
        with np.load(ws.embeddings_dir(aoi, model, scenario) / "present.npz", allow_pickle=False) as z:
            return {k: int(z[k].sum()) for k in z.files}
    except (OSError, ValueError):
        return {}


def _embeddings_files(ws: Workspace, aoi: str, model: str, scenario: str) -> list[Path]:
    return [ws.embeddings_dir(aoi, model, scenario) / "meta.json", ws.store_path(aoi) / "store.json"]


class ModelEmbeddings:
    """`fused` and the modality keys of the checkpoint's embeddings, with modalities or channels dropped."""

    def names(self, ws: Workspace, aoi: str, model: str) -> list[str]:
        counts = present_counts(ws, aoi, model, SCENARIO_FULL)
        return [k for k in EMBEDDING_KEYS if counts.get(k, 0) > 0]

    def owns(self, name: str) -> bool:
        return name in EMBEDDING_KEYS

    def load(self, req: Request) -> RepresentationVectors:
        full = req.embeddings(SCENARIO_FULL)
        if req.name not in full.vectors:
            raise RepresentationError(f"These embeddings hold no {req.name!r} vectors (they hold {full.keys}).",
                                      "Choose another representation.")
        drops = drop_scenarios_needed(req.dropped_channels)
        unknown = (set(req.dropped_modalities) | set(drops)) - set(full.modalities)
        if unknown:
            raise RepresentationError(f"Cannot drop {sorted(unknown)}: these embeddings hold {full.modalities}.")
        by_mod: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for mod in full.modalities:
            if mod in req.dropped_modalities:
                continue
            src = _scenario(req, drops[mod]) if mod in drops else full
            by_mod[mod] = (src.vectors[mod], src.present[mod])
        if req.name == "fused":
            if not req.dropped_channels:
                # Only modalities dropped (or none): one call on the full embeddings.
                x, valid = full.fused_without(req.dropped_modalities) if req.dropped_modalities else full.get("fused")
            elif not by_mod:
                x, valid = np.zeros((len(full), full.dim), np.float32), np.zeros(len(full), bool)
            else:
                x, valid = fuse({m: v for m, (v, _) in by_mod.items()}, {m: p for m, (_, p) in by_mod.items()})
        elif req.name in by_mod:
            x, valid = by_mod[req.name]
        else:  # a modality dropped entirely: no chip has it
            x, valid = np.zeros((len(full), full.dim), np.float32), np.zeros(len(full), bool)
        return RepresentationVectors(full.chip_ids, np.asarray(x, dtype=np.float32), np.asarray(valid, dtype=bool))

    def source_files(self, ws: Workspace, aoi: str, model: str, name: str,
                     dropped_channels: tuple[tuple[str, str], ...]) -> list[Path]:
        files = _embeddings_files(ws, aoi, model, SCENARIO_FULL)
        for scenario in drop_scenarios_needed(dropped_channels).values():
            files.append(ws.embeddings_dir(aoi, model, scenario) / "meta.json")
        return files


def _scenario(req: Request, scenario: str) -> Embeddings:
    try:
        return req.embeddings(scenario)
    except EmbeddingError as e:
        raise RepresentationError(f"The {scenario!r} embeddings of {req.aoi} are not built yet.",
                                  f"Build them with `python -m core.embed --aoi {req.aoi} --scenario {scenario}`.") from e


class RandomInit:
    """`random-init` (fused) and `random-init:<key>`: the untrained architecture's embeddings."""

    def names(self, ws: Workspace, aoi: str, model: str) -> list[str]:
        built = (ws.embeddings_dir(aoi, model, SCENARIO_RANDOM) / "meta.json").is_file()
        return [RANDOM_INIT] if built else []

    def owns(self, name: str) -> bool:
        return name == RANDOM_INIT or (name.startswith(RANDOM_INIT + ":") and name.split(":", 1)[1] in EMBEDDING_KEYS)

    def load(self, req: Request) -> RepresentationVectors:
        key = req.name.split(":", 1)[1] if ":" in req.name else "fused"
        emb = _scenario(req, SCENARIO_RANDOM)
        if key not in emb.vectors:
            raise RepresentationError(f"The random-init embeddings hold no {key!r} vectors (they hold {emb.keys}).")
        x, valid = emb.get(key)
        return RepresentationVectors(emb.chip_ids, np.asarray(x, dtype=np.float32), np.asarray(valid, dtype=bool))

    def source_files(self, ws: Workspace, aoi: str, model: str, name: str,
                     dropped_channels: tuple[tuple[str, str], ...]) -> list[Path]:
        return _embeddings_files(ws, aoi, model, SCENARIO_RANDOM)


class HandCrafted:
    """`hand-crafted` (channel statistics and presence flags) and the evaluation's cheap baselines."""

    def names(self, ws: Workspace, aoi: str, model: str) -> list[str]:
        return [HAND_CRAFTED, *BASELINES] if (ws.store_path(aoi) / "store.json").is_file() else []

    def owns(self, name: str) -> bool:
        return name == HAND_CRAFTED or name in BASELINES

    def load(self, req: Request) -> RepresentationVectors:
        store = req.store()
        if req.name == HAND_CRAFTED:
            x = handcrafted_features(store)  # NaN-free: a missing modality is zeros plus a presence flag of 0
        else:
            x = baseline_features(store, [req.name])[req.name]
        ids = store.index["chip_id"].to_numpy().astype(str)
        return RepresentationVectors(ids, np.asarray(x, dtype=np.float32), np.ones(len(ids), dtype=bool))

    def source_files(self, ws: Workspace, aoi: str, model: str, name: str,
                     dropped_channels: tuple[tuple[str, str], ...]) -> list[Path]:
        return [ws.store_path(aoi) / "store.json"]


class ExternalEmbeddings:
    """Embeddings brought by the user (AlphaEarth, Tessera, ...), pooled per chip by `data.external`."""

    def names(self, ws: Workspace, aoi: str, model: str) -> list[str]:
        return [n for n in list_external(ws, aoi) if not _builtin(n)]

    def owns(self, name: str) -> bool:
        # Asked after the built-in sources: any other valid workspace name may be an external representation.
        return isinstance(name, str) and not _builtin(name) and bool(_NAME.fullmatch(name))

    def load(self, req: Request) -> RepresentationVectors:
        if not (req.ws.representation_dir(req.aoi, req.name) / "meta.json").is_file():
            raise RepresentationError(
                f"Unknown representation {req.name!r} for {req.aoi}.",
                f"Use one of {list(EMBEDDING_KEYS)}, {RANDOM_INIT}[:<key>], {HAND_CRAFTED}, {list(BASELINES)}"
                + (f", the external {list_external(req.ws, req.aoi)}" if list_external(req.ws, req.aoi) else "")
                + f", or ingest external embeddings under that name with `python -m data.ingest embeddings "
                  f"--aoi {req.aoi} --name {req.name} FILES...`.")
        try:
            ext = read_external(req.ws, req.aoi, req.name)
        except ExternalError as e:
            raise RepresentationError(str(e)) from None
        if ext.meta.get("grid", {}).get("kind") == "store":
            ids = req.store().index["chip_id"].to_numpy().astype(str)
            if len(ids) != len(ext.chip_ids) or not np.array_equal(ids, ext.chip_ids):
                raise RepresentationError(f"The {req.name!r} vectors of {req.aoi} were pooled on an older chip grid.",
                                          f"Ingest them again with `python -m data.ingest embeddings --aoi {req.aoi} "
                                          f"--name {req.name} FILES...`.")
        x = np.where(ext.valid[:, None], np.nan_to_num(ext.X, nan=0.0), 0.0).astype(np.float32)
        return RepresentationVectors(ext.chip_ids, x, ext.valid)

    def source_files(self, ws: Workspace, aoi: str, model: str, name: str,
                     dropped_channels: tuple[tuple[str, str], ...]) -> list[Path]:
        return [ws.representation_dir(aoi, name) / "meta.json", ws.store_path(aoi) / "store.json"]


_BUILTIN: list[RepresentationSource] = [ModelEmbeddings(), RandomInit(), HandCrafted()]
_SOURCES: list[RepresentationSource] = list(_BUILTIN)
# The catch-all for any other valid name: asked last, after every registered source.
_EXTERNAL = ExternalEmbeddings()


def _builtin(name: str) -> bool:
    return any(s.owns(name) for s in _BUILTIN)


def is_external(name: str) -> bool:
    """Whether a representation name is an external one (brought by the user, not computed here)."""
    return isinstance(source_of(name), ExternalEmbeddings)


def external_names(ws: Workspace, aoi: str) -> list[str]:
    """Names of the external representations ingested for an AOI (what the app's pickers add to the model's)."""
    return _EXTERNAL.names(ws, aoi, "")


def external_provenance(ws: Workspace, aoi: str, name: str) -> dict:
    """The provenance of an external representation (product, year, sources, pooling, counts, notes)."""
    try:
        return read_external(ws, aoi, name).meta
    except ExternalError as e:
        raise RepresentationError(str(e)) from None


def as_embeddings(vectors: RepresentationVectors, name: str, meta: Mapping | None = None) -> Embeddings:
    """A representation as one-key Embeddings, the input `core.search.search_chips` and the UMAP helpers take."""
    return Embeddings(np.asarray(vectors.chip_ids).astype(str), {name: vectors.X}, {name: vectors.valid},
                      dict(meta or {}))


def external_index_current(ws: Workspace, aoi: str, name: str) -> bool:
    """Whether an external representation's saved index matches its vectors (reads two small JSON files)."""
    try:
        meta = json.loads((ws.representation_index_dir(aoi, name) / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("representation_created") == external_provenance(ws, aoi, name).get("created")


def external_index(ws: Workspace, aoi: str, name: str, vectors: RepresentationVectors | None = None) -> ChipIndex | None:
    """The FAISS index of an external representation over its valid chips: loaded when current, else built and
    saved beside the vectors (None when no chip is valid)."""
    path = ws.representation_index_dir(aoi, name)
    stamp = external_provenance(ws, aoi, name).get("created")
    if (path / "meta.json").is_file():
        try:
            index = ChipIndex.load(path, gpu=False)
            if index.meta.get("representation_created") == stamp:
                return index
        except IndexLoadError:
            pass  # damaged or old: rebuilt below
    if vectors is None:
        vectors = load_representation(ws, aoi, "", name)
    if not vectors.valid.any():
        return None
    index = ChipIndex.build(vectors.X[vectors.valid], vectors.chip_ids[vectors.valid], gpu=False)
    index.meta.update(aoi=aoi, representation=name, representation_created=stamp)
    index.save(path, overwrite=True)
    return index


def register_source(source: RepresentationSource) -> None:
    """Add a family of representations (e.g. external embeddings, issue #17); it is asked after the built-in ones."""
    _SOURCES.append(source)


def source_of(name: str) -> RepresentationSource:
    """The source that owns a representation name, or a RepresentationError listing the known names."""
    for source in _SOURCES:
        if source.owns(name):
            return source
    if _EXTERNAL.owns(name):
        return _EXTERNAL
    raise RepresentationError(f"Unknown representation {name!r}.",
                              f"Use one of {list(EMBEDDING_KEYS)}, {RANDOM_INIT}[:<key>], {HAND_CRAFTED}, {list(BASELINES)} "
                              "or the name of an external representation ([A-Za-z0-9_-]+).")


# ----------------------------------------------------------------------------------------- API
def list_representations(ws: Workspace, aoi: str, model: str) -> list[str]:
    """Names of the representations available for an AOI and model now (built embeddings, baselines)."""
    names = [n for source in _SOURCES for n in source.names(ws, aoi, model)]
    return names + [n for n in _EXTERNAL.names(ws, aoi, model) if n not in names]


def source_files(ws: Workspace, aoi: str, model: str, name: str,
                 dropped_channels: Iterable[tuple[str, str]] = ()) -> list[Path]:
    """Files a representation is read from; a cache keyed by their modification times sees every rebuild."""
    return source_of(name).source_files(ws, aoi, model, name, tuple(sorted(dropped_channels)))


def load_representation(ws: Workspace, aoi: str, model: str, name: str, dropped_modalities: Iterable[str] = (),
                        dropped_channels: Iterable[tuple[str, str]] = (), *, embeddings: EmbeddingsLoader | None = None,
                        store: ChipStore | None = None) -> RepresentationVectors:
    """(chip_ids, X, valid) of one named representation of an AOI, as if the dropped inputs were missing.

    `embeddings` (scenario -> Embeddings) and `store` let a caller reuse what it already holds in memory.
    Drops apply to the model's embeddings; a baseline refuses them (it has no such inputs to drop).
    """
    source = source_of(name)
    dm, dc = tuple(sorted(set(dropped_modalities))), tuple(sorted(set(dropped_channels)))
    if (dm or dc) and not isinstance(source, ModelEmbeddings):
        raise RepresentationError(f"{name!r} cannot be computed with modalities or channels dropped.",
                                  "Drop inputs only for the model's embeddings.")
    req = Request(ws, aoi, model, name, dm, dc,
                  embeddings or (lambda scenario: load_embeddings(ws, aoi, model, scenario)),
                  (lambda: store) if store is not None else (lambda: ws.open_store(aoi)))
    return source.load(req)
