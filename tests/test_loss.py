"""The CLIP loss over modality pairs: matching pairs preferred, symmetry, temperature, missing modalities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.loss import clip_loss, retrieval_top1

torch.set_num_threads(1)


def features(n: int = 12, d: int = 8, seed: int = 0, mods: tuple[str, ...] = ("a", "b")) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for m in mods:
        out[m] = F.normalize(torch.randn(n, d, generator=g), dim=-1)
        out[f"{m}_present"] = torch.ones(n, dtype=torch.bool)
    return out


def pair_loss(za: torch.Tensor, zb: torch.Tensor, scale: float) -> torch.Tensor:
    """The CLIP loss of one pair written out: the mean of both directions' cross-entropy."""
    logits = scale * za @ zb.T
    target = torch.arange(len(za))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def test_matching_pairs_score_lower_than_shuffled():
    z = F.normalize(torch.randn(16, 8), dim=-1)
    present = torch.ones(16, dtype=torch.bool)
    matched = {"a": z, "b": z, "a_present": present, "b_present": present}
    shuffled = {"a": z, "b": z[torch.randperm(16)], "a_present": present, "b_present": present}
    scale = torch.tensor(np.log(10.0))
    assert clip_loss(matched, scale) < clip_loss(shuffled, scale)
    assert retrieval_top1(z, z) == 1.0


def test_loss_is_symmetric_in_the_modalities():
    out = features()
    swapped = {"a": out["b"], "b": out["a"], "a_present": out["b_present"], "b_present": out["a_present"]}
    scale = torch.tensor(math.log(20.0))
    assert torch.allclose(clip_loss(out, scale), clip_loss(swapped, scale), atol=1e-6)
    assert torch.allclose(clip_loss(out, scale), pair_loss(out["a"], out["b"], 20.0), atol=1e-6)


def test_temperature_is_exp_of_logit_scale_capped_at_100():
    out = features()
    for t in (1.0, 14.3, 100.0):
        assert torch.allclose(clip_loss(out, torch.tensor(math.log(t))), pair_loss(out["a"], out["b"], t), atol=1e-5)
    # Beyond 100 the scale is clamped (CLIP's cap): log(1000) behaves as log(100).
    assert torch.allclose(clip_loss(out, torch.tensor(math.log(1000.0))), pair_loss(out["a"], out["b"], 100.0), atol=1e-5)
    # A sharper temperature separates matched from random pairs more: the loss of aligned features falls.
    aligned = {**out, "b": F.normalize(out["a"] + 0.05 * out["b"], dim=-1)}
    assert clip_loss(aligned, torch.tensor(math.log(50.0))) < clip_loss(aligned, torch.tensor(math.log(2.0)))


def test_three_modalities_average_their_pairs():
    out = features(mods=("a", "b", "c"))
    scale = torch.tensor(math.log(10.0))
    pairs = [pair_loss(out[x], out[y], 10.0) for x, y in (("a", "b"), ("a", "c"), ("b", "c"))]
    assert torch.allclose(clip_loss(out, scale), torch.stack(pairs).mean(), atol=1e-6)
    assert torch.allclose(clip_loss(out, scale, modalities=["a", "c"]), pairs[1], atol=1e-6)


def test_missing_modalities_drop_chips_from_their_pairs_only():
    out = features(n=10, mods=("a", "b", "c"))
    out["c_present"][:4] = False  # chips 0-3 lack c
    scale = torch.tensor(math.log(10.0))
    keep = out["c_present"]
    expected = torch.stack([
        pair_loss(out["a"], out["b"], 10.0),
        pair_loss(out["a"][keep], out["c"][keep], 10.0),
        pair_loss(out["b"][keep], out["c"][keep], 10.0),
    ]).mean()
    assert torch.allclose(clip_loss(out, scale), expected, atol=1e-6)
    # A modality present in fewer than two chips forms no pair: its pairs are skipped, not NaN.
    out["c_present"][:] = False
    out["c_present"][0] = True
    assert torch.allclose(clip_loss(out, scale), pair_loss(out["a"], out["b"], 10.0), atol=1e-6)


def test_no_pair_at_all_is_a_clear_error():
    out = features()
    out["b_present"][:] = False
    with pytest.raises(ValueError, match="nothing to contrast"):
        clip_loss(out, torch.tensor(0.0))


def test_gradient_reaches_both_modalities_and_the_temperature():
    out = features()
    a = out["a"].clone().requires_grad_()
    b = out["b"].clone().requires_grad_()
    scale = torch.tensor(math.log(10.0), requires_grad=True)
    clip_loss({**out, "a": a, "b": b}, scale).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0 and scale.grad is not None and scale.grad != 0
