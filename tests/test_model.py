"""The multimodal ViT: shapes, missing inputs, dropout masks, fusion (loss: test_loss.py; checkpoints: test_checkpoint.py)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from core.loss import clip_loss
from core.model import ModelConfig, MultiModalViT, count_parameters, fuse

torch.set_num_threads(1)


def small_cfg(**kw) -> ModelConfig:
    base = dict(name="test", chip_size=16, patch_size=8, width=32, depth=1, heads=2, embed_dim=16)
    base.update(kw)
    return ModelConfig(**base)


def make_batch(cfg: ModelConfig, b: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for mod, ch in cfg.channels.items():
        out[mod] = torch.randn(b, len(ch), cfg.chip_size, cfg.chip_size, generator=g)
        out[f"{mod}_mask"] = torch.ones(b, len(ch), dtype=torch.bool)
    return out


def test_config_roundtrip_and_validation():
    cfg = small_cfg()
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="multiple of patch_size"):
        small_cfg(chip_size=20)
    with pytest.raises(ValueError, match="divisible by heads"):
        small_cfg(width=30, heads=4)
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({**cfg.to_dict(), "widht": 3})


def test_encode_shapes_and_normalised():
    cfg = small_cfg()
    model = MultiModalViT(cfg).eval()
    out = model.encode(make_batch(cfg, b=5))
    for key in ("s2rgb", "s1amp", "coh", "fused"):
        assert out[key].shape == (5, cfg.embed_dim)
        assert torch.allclose(out[key].norm(dim=-1), torch.ones(5), atol=1e-5)
        assert out[f"{key}_present"].all()
    assert count_parameters(model) > 0


def test_no_nan_with_any_subset_missing():
    cfg = small_cfg()
    model = MultiModalViT(cfg).eval()
    full = make_batch(cfg, b=3)
    mods = list(cfg.channels)
    for r in range(1, len(mods) + 1):
        for subset in itertools.combinations(mods, r):
            batch = {k: v for k, v in full.items() if k.split("_mask")[0] in subset}
            out = model.encode(batch)
            for m in subset:
                assert torch.isfinite(out[m]).all()
            assert torch.isfinite(out["fused"]).all() and out["fused_present"].all()
    # Every single-channel subset of every modality, and a chip with no channel at all.
    for mod, chans in cfg.channels.items():
        for keep in range(len(chans)):
            batch = dict(full)
            mask = torch.zeros(3, len(chans), dtype=torch.bool)
            mask[:, keep] = True
            mask[2] = False  # chip 2 lacks this modality entirely
            batch[f"{mod}_mask"] = mask
            batch[mod] = full[mod].clone()
            batch[mod][2] = float("nan")
            out = model.encode(batch)
            for key in (*mods, "fused"):
                assert torch.isfinite(out[key]).all()
            assert not out[f"{mod}_present"][2] and out[f"{mod}_present"][:2].all()
            assert torch.count_nonzero(out[mod][2]) == 0


def test_masked_channel_values_are_ignored():
    cfg = small_cfg()
    model = MultiModalViT(cfg).eval()
    batch = make_batch(cfg, b=2)
    batch["s1amp_mask"][:, 1] = False
    other = dict(batch)
    other["s1amp"] = batch["s1amp"].clone()
    other["s1amp"][:, 1] = 123.0  # garbage in an absent channel must not change the embedding
    with torch.no_grad():
        assert torch.allclose(model.encode(batch)["s1amp"], model.encode(other)["s1amp"], atol=1e-6)


def test_training_dropout_keeps_a_pair_and_a_channel():
    cfg = small_cfg(modality_dropout=0.9, channel_dropout=0.9)
    model = MultiModalViT(cfg).train()
    torch.manual_seed(0)
    masks = {m: torch.ones(64, len(c), dtype=torch.bool) for m, c in cfg.channels.items()}
    masks["coh"][:10] = False  # modality absent for 10 chips
    out = model._training_masks(masks)
    present = torch.stack([out[m].any(1) for m in cfg.channels], 1)
    assert (present.sum(1) >= 2).all()
    assert not out["coh"][:10].any()
    assert out["s2rgb"].any(1).sum() < 64 or out["s1amp"].any(1).sum() < 64 or out["coh"][10:].any(1).sum() < 54
    assert (out["s2rgb"].sum(1) < 3).any()  # channel dropout happened
    loss = clip_loss(model.encode(make_batch(cfg, b=8)), model.logit_scale)
    assert torch.isfinite(loss)


def test_fuse_matches_model():
    cfg = small_cfg()
    model = MultiModalViT(cfg).eval()
    batch = make_batch(cfg, b=4)
    batch["coh_mask"][1] = False
    with torch.no_grad():
        out = model.encode(batch)
    vecs = {m: out[m].numpy() for m in cfg.channels}
    pres = {m: out[f"{m}_present"].numpy() for m in cfg.channels}
    fused, present = fuse(vecs, pres)
    np.testing.assert_allclose(fused, out["fused"].numpy(), atol=1e-5)
    assert present.all()
    fused2, _ = fuse({k: v for k, v in vecs.items() if k != "coh"}, pres)
    assert fused2.shape == (4, cfg.embed_dim)
