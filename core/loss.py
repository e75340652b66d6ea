"""Symmetric InfoNCE over every pair of modalities present in a sample, with negatives from all DDP ranks."""

from __future__ import annotations

from itertools import combinations
from typing import Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.distributed.nn.functional import all_gather


def _gather(x: Tensor, with_grad: bool) -> Tensor:
    """Concatenate x over ranks; gradient-preserving when asked (negatives from every rank train every rank)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    if with_grad:
        return torch.cat(all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


def clip_loss(
    out: Mapping[str, Tensor], logit_scale: Tensor, *, distributed: bool = False, modalities: list[str] | None = None
) -> Tensor:
    """Mean over modality pairs of the symmetric cross-entropy between matching chips (the CLIP loss).

    With `distributed=True` (inside an initialised process group) every rank computes the loss of the
    *global* batch: features are gathered with gradients, whose backward sums the gradient of every
    rank's copy of the loss into the owner's features; DDP then averages over ranks, so the update
    equals the single-process gradient on the global batch.
    """
    mods = modalities or [k for k in out if not k.endswith("_present") and k != "fused"]
    if distributed:
        feats = {m: _gather(out[m], True) for m in mods}
        present = {m: _gather(out[f"{m}_present"].to(torch.uint8), False).bool() for m in mods}
    else:
        feats = {m: out[m] for m in mods}
        present = {m: out[f"{m}_present"] for m in mods}
    scale = logit_scale.exp().clamp(max=100.0)
    losses = []
    for a, b in combinations(mods, 2):
        valid = present[a] & present[b]
        if int(valid.sum()) < 2:
            continue
        za, zb = feats[a][valid], feats[b][valid]
        logits = scale * za @ zb.T
        target = torch.arange(len(za), device=za.device)
        losses.append(0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)))
    if not losses:
        raise ValueError("no modality pair is present in at least two chips of this batch: nothing to contrast")
    return torch.stack(losses).mean()


@torch.no_grad()
def retrieval_top1(za: Tensor, zb: Tensor) -> float:
    """Fraction of rows of za whose nearest row of zb (cosine) is the same chip; chance is 1/len(za)."""
    sims = za @ zb.T
    return float((sims.argmax(1) == torch.arange(len(za), device=za.device)).float().mean())
