"""Training configuration: typed dataclasses loaded from named YAML files plus `--set key.sub=value` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from core.model import ModelConfig
from data.landcover import DEFAULT_AOIS

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEMO_SEED = 0  # the demo stores are simulated with seed 0: never train on it, so evaluation on the demo is honest


@dataclass
class DataConfig:
    """Where training chips come from: the simulator (in memory) or existing chip stores."""

    source: str = "simulate"                 # "simulate" or "store"
    aois: list[str] = field(default_factory=lambda: list(DEFAULT_AOIS))
    seeds: list[int] = field(default_factory=lambda: [1, 2])
    chips_per_aoi: int = 1000                # per AOI and seed
    paths: list[str] = field(default_factory=list)   # chip store directories, for source "store"
    heldout_seed: int = 999                  # simulated held-out chips for retrieval top-1 (never trained on)
    heldout_chips: int = 512
    augment: bool = True                     # random flips / rot90, identical for all modalities of a chip
    cache_dir: str = "runs/data"             # simulated stores are written here once and reused by later runs
    in_memory: bool = True                   # hold all training chips in RAM (float16); false streams from Zarr
    workers: int = 2                         # DataLoader worker processes (0: batches read in the training process)
    prefetch: int = 2                        # batches each worker prepares ahead of the training step


@dataclass
class TrainConfig:
    """Everything a pretraining run depends on; saved beside its checkpoints."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    batch_size: int = 64                     # per process and micro-step
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1                # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.05
    warmup_steps: int = 100
    steps: int = 1000                        # optimizer steps
    clip: float = 1.0                        # gradient-norm clipping; 0 disables
    amp: bool = True                         # bf16 autocast (CUDA only; ignored on CPU)
    log_every: int = 10
    eval_every: int = 200
    ckpt_every: int = 200
    seed: int = 0
    threads: int = 0                         # torch CPU threads; 0 keeps torch's default
    device: str = "auto"                     # "auto", "cpu" or "cuda"
    out: str = "runs/tiny"                   # run directory: training_log.jsonl, checkpoint/
    export: str = ""                         # where to write the final weights-only checkpoint ("" = <out>/final)

    def validate(self) -> None:
        """Raise ValueError naming the setting and the fix when the run cannot work as configured."""
        self.model.validate()
        d = self.data
        if d.source not in ("simulate", "store"):
            raise ValueError(f"data.source must be 'simulate' or 'store', got {d.source!r}")
        if d.source == "simulate":
            if not d.aois or not d.seeds:
                raise ValueError("data.aois and data.seeds must be non-empty for data.source=simulate")
            if DEMO_SEED in d.seeds:
                raise ValueError(
                    f"data.seeds contains {DEMO_SEED}, the demo AOIs' seed: training on it would leak the "
                    "evaluation chips; use seeds >= 1"
                )
            if d.chips_per_aoi < 1:
                raise ValueError(f"data.chips_per_aoi must be >= 1, got {d.chips_per_aoi}")
        elif not d.paths:
            raise ValueError("data.source=store needs data.paths: a list of chip store directories")
        if d.heldout_seed in d.seeds or d.heldout_seed == DEMO_SEED:
            raise ValueError(f"data.heldout_seed {d.heldout_seed} must differ from the training seeds and from {DEMO_SEED}")
        if d.workers < 0 or d.prefetch < 1:
            raise ValueError(f"need data.workers >= 0 and data.prefetch >= 1, got {d.workers} and {d.prefetch}")
        if d.heldout_chips < 2:
            raise ValueError(f"data.heldout_chips must be >= 2 for retrieval, got {d.heldout_chips}")
        for name in ("batch_size", "grad_accum", "steps", "log_every", "eval_every", "ckpt_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2: the contrastive loss needs negatives")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got lr={self.lr}, min_lr_ratio={self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.clip < 0 or self.weight_decay < 0:
            raise ValueError("warmup_steps, clip and weight_decay must be >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Build and validate from a nested dict, refusing unknown keys."""
        d = _coerce_numbers(dict(d), TrainConfig().to_dict())
        _check_keys(cls, d, "")
        model = ModelConfig.from_dict(d.pop("model", {}) or {})
        data_d = dict(d.pop("data", {}) or {})
        _check_keys(DataConfig, data_d, "data.")
        cfg = cls(model=model, data=DataConfig(**data_d), **d)
        cfg.validate()
        return cfg


def _check_keys(cls: type, d: Mapping[str, Any], prefix: str) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown config keys {[prefix + k for k in unknown]}; known: {sorted(prefix + k for k in known)}")


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML path, or the name of a file in training/configs (e.g. 'tiny', 'base')."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    named = CONFIG_DIR / f"{name_or_path}.yaml"
    if named.is_file():
        return named
    choices = sorted(f.stem for f in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"config {name_or_path!r} is neither a file nor one of the named configs {choices}")


def _coerce_numbers(d: dict[str, Any], defaults: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """YAML reads `1e-3` (no dot) as a string: turn such strings into the default's number type, or say which key."""
    for k, v in list(d.items()):
        ref = defaults.get(k)
        if isinstance(v, dict) and isinstance(ref, dict):
            d[k] = _coerce_numbers(dict(v), ref, f"{prefix}{k}.")
        elif isinstance(v, str) and isinstance(ref, (int, float)) and not isinstance(ref, bool):
            try:
                d[k] = type(ref)(float(v)) if isinstance(ref, float) else int(v)
            except ValueError:
                raise ValueError(f"config key {prefix}{k}: expected a number, got {v!r}") from None
    return d


def _parse_value(text: str, current: Any, key: str) -> Any:
    """Parse an override with YAML and check it against the default's type."""
    value = yaml.safe_load(text)
    if isinstance(value, str) and isinstance(current, float):
        try:
            value = float(value)  # `--set lr=1e-3`: YAML 1.1 reads it as a string
        except ValueError:
            pass  # not a number: the type check below names the key
    if current is None:
        return value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"--set {key}: expected true/false, got {text!r}")
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, list) and not isinstance(value, list):
        value = [value]  # `--set data.seeds=3` means a one-element list
    if not isinstance(value, type(current)):
        raise ValueError(f"--set {key}: expected {type(current).__name__}, got {text!r}")
    return value


def apply_overrides(d: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply `key.sub=value` overrides to a nested config dict (values parsed as YAML, types checked)."""
    defaults = TrainConfig().to_dict()
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key.sub=value, e.g. model.width=64")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node, ref = d, defaults
        for p in parts[:-1]:
            if not isinstance(ref, dict) or p not in ref:
                raise ValueError(f"unknown config key {key!r}")
            ref = ref[p]
            node = node.setdefault(p, {})
        leaf = parts[-1]
        if not isinstance(ref, dict) or leaf not in ref:
            raise ValueError(f"unknown config key {key!r}")
        node[leaf] = _parse_value(text, ref[leaf], key)
    return d


def load_config(name_or_path: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load a named or file YAML config, apply overrides, validate."""
    path = resolve_config_path(name_or_path)
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from e
    return TrainConfig.from_dict(apply_overrides(d, overrides))
