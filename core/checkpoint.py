"""Checkpoints as directories: safetensors weights + YAML config + JSON meta; nothing is ever unpickled.

Layout: `model.safetensors`, `config.yaml` (ModelConfig), `meta.json` (params, training data, metrics,
code version), optional `train_state.pt` (optimizer/scheduler/RNG/step, read with
`torch.load(weights_only=True)`), optional `training_log.jsonl` and `COMMAND.txt`.

The weights file also records the whole model config it was saved with (safetensors metadata `config`;
older checkpoints: `meta.json`'s `train_config.model`). Loading refuses a `config.yaml` that differs from
it, since an edited head count or channel order keeps every tensor shape and would load silently wrong.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from core.model import ModelConfig, MultiModalViT, count_parameters
from data.atomic import atomic_dir
from data.cli import KnownError

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CHECKPOINT = REPO / "checkpoints" / "tiny-sim"
WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
META = "meta.json"
TRAIN_STATE = "train_state.pt"


class CheckpointError(KnownError):
    """A checkpoint is missing, damaged, or does not match the model that was asked for."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP (`.module`) and/or torch.compile (`._orig_mod`) wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def code_version() -> str:
    """The git commit of this checkout (with '+dirty' when it has local changes), or 'unknown'."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_checkpoint(
    path: "str | Path",
    model: nn.Module,
    cfg: ModelConfig,
    *,
    meta: Mapping[str, Any],
    train_state: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, "str | bytes"] | None = None,
) -> None:
    """Write a checkpoint directory atomically (replacing an older one at `path` only once complete)."""
    model = unwrap(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    full_meta = {
        "params": count_parameters(model),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "torch": torch.__version__,
        **dict(meta),
    }
    with atomic_dir(Path(path), overwrite=True) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "name": cfg.name, "config": _config_json(cfg.to_dict())})
        (tmp / CONFIG).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        (tmp / META).write_text(json.dumps(full_meta, indent=2, sort_keys=True, default=str) + "\n")
        if train_state is not None:
            torch.save(dict(train_state), tmp / TRAIN_STATE)
        for name, content in (extra_files or {}).items():
            target = tmp / name
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)


def read_config(path: "str | Path") -> ModelConfig:
    """The ModelConfig stored in a checkpoint directory."""
    path = Path(path)
    f = path / CONFIG
    if not f.is_file():
        raise CheckpointError(
            f"{path} is not a checkpoint: {CONFIG} is missing (train one with `python -m training.pretrain` "
            f"or use the shipped {SHIPPED_CHECKPOINT})"
        )
    try:
        return ModelConfig.from_dict(yaml.safe_load(f.read_text()) or {})
    except (ValueError, TypeError, yaml.YAMLError) as e:
        raise CheckpointError(f"{f} does not hold a valid model config: {e}") from e


def read_model_card(path: "str | Path") -> dict:
    """Config and meta of a checkpoint (params, training data, retrieval top-1) without loading weights."""
    path = Path(path)
    cfg = read_config(path)
    meta_file = path / META
    try:
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_file} is not valid JSON ({e}); the checkpoint is damaged") from e
    return {"path": str(path), "config": cfg.to_dict(), "meta": meta}


def _config_json(d: Mapping[str, Any]) -> str:
    return json.dumps(d, sort_keys=True)


def _saved_config(path: Path) -> dict | None:
    """The model config the weights were saved with (weights metadata, else meta.json), or None if not recorded."""
    try:
        with safe_open(str(path / WEIGHTS), framework="pt") as f:
            recorded = (f.metadata() or {}).get("config")
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{path / WEIGHTS} cannot be read ({e}); the checkpoint is damaged") from e
    try:
        if recorded is not None:
            return ModelConfig.from_dict(json.loads(recorded)).to_dict()
        meta_file = path / META
        model = json.loads(meta_file.read_text()).get("train_config", {}).get("model") if meta_file.is_file() else None
        return None if model is None else ModelConfig.from_dict(model).to_dict()
    except (ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"the model config recorded with {path / WEIGHTS} is unreadable ({e}); the checkpoint is damaged") from e


def _dict_diff(saved: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    return "; ".join(f"{k}: saved {saved.get(k)!r}, config.yaml {now.get(k)!r}"
                     for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k))


def _config_diff(a: ModelConfig, b: ModelConfig) -> str:
    da, db = a.architecture(), b.architecture()
    return ", ".join(f"{k}: checkpoint {da[k]!r} vs expected {db[k]!r}" for k in da if da[k] != db[k])


def load_checkpoint(
    path: "str | Path", *, expect: ModelConfig | None = None, device: "str | torch.device" = "cpu"
) -> tuple[MultiModalViT, dict]:
    """Rebuild the model from its own config and load its weights (eval mode); refuse an unexpected architecture."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    cfg = read_config(path)
    if expect is not None and cfg.architecture() != expect.architecture():
        raise CheckpointError(
            f"checkpoint {path} was trained with a different model config ({_config_diff(cfg, expect)}); "
            "load it without `expect`, or point to a checkpoint of this architecture"
        )
    weights = path / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing; the checkpoint is incomplete")
    saved = _saved_config(path)
    if saved is not None and saved != cfg.to_dict():
        raise CheckpointError(f"{path / CONFIG} differs from the config the weights were saved with ({_dict_diff(saved, cfg.to_dict())}); "
                              "restore it or retrain")
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{weights} cannot be read ({e}); the checkpoint is damaged") from e
    model = MultiModalViT(cfg)
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise CheckpointError(
            f"{weights} does not match its config.yaml (missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}); the checkpoint is damaged or its config was edited"
        )
    for k, v in model.state_dict().items():
        if v.shape != state[k].shape:
            raise CheckpointError(f"{weights}: {k} has shape {tuple(state[k].shape)}, config implies {tuple(v.shape)}")
    model.load_state_dict(state)
    model.to(device).eval()
    return model, read_model_card(path)


_DIGEST_CACHE: dict[tuple, str] = {}


def checkpoint_digest(path: "str | Path") -> str:
    """SHA-256 over every file of a checkpoint directory (names and contents), cached by names, sizes and mtimes."""
    path = Path(path)
    if not (path / WEIGHTS).is_file():
        raise CheckpointError(f"{path / WEIGHTS} is missing: {path} is not a complete checkpoint")
    files = sorted(f for f in path.rglob("*") if f.is_file())
    key = (str(path.resolve()),) + tuple((str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _DIGEST_CACHE:
        h = hashlib.sha256()
        for f in files:
            file_hash = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    file_hash.update(chunk)
            h.update(f"{f.relative_to(path).as_posix()}\0{file_hash.hexdigest()}\n".encode())
        _DIGEST_CACHE[key] = h.hexdigest()
    return _DIGEST_CACHE[key]


def load_train_state(path: "str | Path") -> dict:
    """The optimizer/scheduler/RNG/step state of a checkpoint, loaded without unpickling arbitrary objects."""
    f = Path(path) / TRAIN_STATE
    if not f.is_file():
        raise CheckpointError(f"{f} is missing: this checkpoint cannot resume training (it holds weights only)")
    return torch.load(f, map_location="cpu", weights_only=True)
