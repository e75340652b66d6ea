"""The multimodal CLIP-style ViT: one tower per modality, channel-aware patch embedding, shared embedding space."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data.modalities import MODALITY_KEYS, get_modality


POOLING = ("cls", "mean")


def _default_channels() -> dict[str, list[str]]:
    return {key: list(get_modality(key).channels) for key in MODALITY_KEYS}


@dataclass
class ModelConfig:
    """Architecture of the multimodal ViT; serialises to a plain dict (config.yaml of a checkpoint)."""

    name: str = "tiny"
    channels: dict[str, list[str]] = field(default_factory=_default_channels)
    chip_size: int = 64
    patch_size: int = 8
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    embed_dim: int = 128
    pool: str = "cls"  # "cls": the class token; "mean": the mean of the patch tokens (fractions add up over patches)
    modality_dropout: float = 0.15
    channel_dropout: float = 0.2

    def __post_init__(self) -> None:
        self.channels = {k: list(v) for k, v in self.channels.items()}
        self.validate()

    def validate(self) -> None:
        """Raise ValueError with the fix when the configuration cannot build a model."""
        if not self.channels:
            raise ValueError("ModelConfig.channels is empty: give at least one modality with its channel list")
        for mod, chans in self.channels.items():
            get_modality(mod).validate_channels(chans)
        if self.chip_size % self.patch_size:
            raise ValueError(f"chip_size {self.chip_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        for name in ("width", "depth", "heads", "embed_dim", "patch_size", "chip_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pool not in POOLING:
            raise ValueError(f"pool must be one of {POOLING}, got {self.pool!r}")
        for name in ("modality_dropout", "channel_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def n_patches(self) -> int:
        return (self.chip_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (YAML/JSON safe)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        """Build from a dict, refusing unknown keys so a typo is not silently ignored."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(d))

    def architecture(self) -> dict[str, Any]:
        """The fields that decide the weights' shapes and meaning (dropout rates excluded)."""
        d = self.to_dict()
        for k in ("name", "modality_dropout", "channel_dropout"):
            d.pop(k)
        return d


class ChannelPatchEmbed(nn.Module):
    """Per-channel linear patch projection averaged over the channels present (any subset can be embedded)."""

    def __init__(self, n_channels: int, patch_size: int, width: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.weight = nn.Parameter(torch.empty(n_channels, patch_size * patch_size, width))
        self.bias = nn.Parameter(torch.zeros(n_channels, width))
        self.channel_embed = nn.Parameter(torch.zeros(n_channels, width))
        nn.init.trunc_normal_(self.weight, std=1.0 / math.sqrt(patch_size * patch_size))
        nn.init.trunc_normal_(self.channel_embed, std=0.02)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [B,C,H,W], mask bool [B,C] -> tokens [B, N, width]."""
        b, c, h, w = x.shape
        p = self.patch_size
        # [B,C,H/p,p,W/p,p] -> [B,C,N,p*p]
        patches = x.reshape(b, c, h // p, p, w // p, p).permute(0, 1, 2, 4, 3, 5).reshape(b, c, -1, p * p)
        tokens = torch.einsum("bcnk,ckd->bcnd", patches, self.weight)
        tokens = tokens + (self.bias + self.channel_embed)[None, :, None, :]
        m = mask.to(tokens.dtype)[:, :, None, None]
        # A masked mean: absent channels contribute nothing and the scale does not depend on how many are present.
        return (tokens * m).sum(1) / m.sum(1).clamp_min(1.0)


class ModalityTower(nn.Module):
    """ViT encoder for one modality: channel-aware patches, class token, PyTorch transformer blocks, projection."""

    def __init__(self, n_channels: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.patch = ChannelPatchEmbed(n_channels, cfg.patch_size, cfg.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.n_patches + 1, cfg.width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.width, cfg.heads, int(cfg.width * cfg.mlp_ratio), dropout=0.0,
            activation="gelu", batch_first=True, norm_first=True,
        )
        # enable_nested_tensor only matters for padding masks, which ViT tokens never have.
        self.blocks = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.embed_dim, bias=False)
        self.pool = cfg.pool

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [B,C,H,W], mask [B,C] -> unnormalised embedding [B, embed_dim]."""
        tokens = self.patch(x, mask)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        tokens = self.norm(self.blocks(tokens))
        pooled = tokens[:, 1:].mean(1) if self.pool == "mean" else tokens[:, 0]
        return self.proj(pooled)


class MultiModalViT(nn.Module):
    """One ViT tower per modality projecting into a shared, L2-normalised embedding space (CLIP-style)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.towers = nn.ModuleDict({m: ModalityTower(len(ch), cfg) for m, ch in cfg.channels.items()})
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def modalities(self) -> list[str]:
        return list(self.cfg.channels)

    def _training_masks(self, masks: dict[str, Tensor]) -> dict[str, Tensor]:
        """Channel and modality dropout; always keeps one channel per present modality and two modalities."""
        cfg = self.cfg
        out = {}
        for mod, m in masks.items():
            if cfg.channel_dropout > 0 and m.shape[1] > 1:
                keep = torch.rand(m.shape, device=m.device) >= cfg.channel_dropout
                dropped = m & keep
                # A chip whose every present channel was dropped keeps one of them at random.
                empty = m.any(1) & ~dropped.any(1)
                if empty.any():
                    scores = torch.rand(m.shape, device=m.device).masked_fill(~m, -1.0)
                    rescue = F.one_hot(scores.argmax(1), m.shape[1]).bool()
                    dropped = torch.where(empty[:, None], rescue, dropped)
                m = dropped
            out[mod] = m
        if cfg.modality_dropout > 0 and len(out) > 2:
            mods = list(out)
            present = torch.stack([out[k].any(1) for k in mods], 1)  # [B, M]
            drop = (torch.rand(present.shape, device=present.device) < cfg.modality_dropout) & present
            # Only drop where at least two modalities remain, so every sample still gives the loss a pair.
            ok = (present & ~drop).sum(1) >= 2
            drop &= ok[:, None]
            for i, k in enumerate(mods):
                out[k] = out[k] & ~drop[:, i : i + 1]
        return out

    def encode(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Per-modality and fused L2-normalised embeddings with presence flags (see docs/CONTRACTS.md)."""
        masks: dict[str, Tensor] = {}
        inputs: dict[str, Tensor] = {}
        for mod in self.cfg.channels:
            if mod not in batch:
                continue
            x = batch[mod]
            if x.ndim != 4 or x.shape[1] != len(self.cfg.channels[mod]):
                raise ValueError(
                    f"{mod}: expected [B, {len(self.cfg.channels[mod])}, H, W] for channels "
                    f"{self.cfg.channels[mod]}, got {tuple(x.shape)}"
                )
            if x.shape[-1] != self.cfg.chip_size or x.shape[-2] != self.cfg.chip_size:
                raise ValueError(f"{mod}: chips must be {self.cfg.chip_size} px for this model, got {tuple(x.shape[-2:])}")
            mask = batch.get(f"{mod}_mask")
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask.bool()
            inputs[mod] = torch.nan_to_num(x)
            masks[mod] = mask
        if not inputs:
            raise ValueError(f"batch holds none of the model's modalities {self.modalities}")
        if self.training:
            masks = self._training_masks(masks)
        out: dict[str, Tensor] = {}
        total = None
        count = None
        for mod, x in inputs.items():
            present = masks[mod].any(1)
            z = F.normalize(self.towers[mod](x, masks[mod]).float(), dim=-1) * present[:, None]
            out[mod], out[f"{mod}_present"] = z, present
            total = z if total is None else total + z
            count = present.float() if count is None else count + present.float()
        fused_present = count > 0
        out["fused"] = F.normalize(total / count.clamp_min(1.0)[:, None], dim=-1) * fused_present[:, None]
        out["fused_present"] = fused_present
        return out

    forward = encode


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def fuse(vectors: Mapping[str, Any], present: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Fused embedding (normalised mean of present modality vectors) from numpy arrays; zeros where none present."""
    keys = [k for k in vectors if k != "fused"]
    if not keys:
        raise ValueError("fuse needs at least one modality's vectors")
    total = np.zeros_like(np.asarray(vectors[keys[0]], dtype=np.float32))
    count = np.zeros(total.shape[0], dtype=np.float32)
    for k in keys:
        p = np.asarray(present[k], dtype=bool)
        total += np.asarray(vectors[k], dtype=np.float32) * p[:, None]
        count += p
    mean = total / np.maximum(count, 1)[:, None]
    norm = np.linalg.norm(mean, axis=1, keepdims=True)
    return (mean / np.maximum(norm, 1e-12)).astype(np.float32), count > 0
