"""Checkpoints: round trip, refusal of other architectures, edited configs and damaged files, no unpickling, digests."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import save_file

from core.checkpoint import (
    CONFIG,
    META,
    SHIPPED_CHECKPOINT,
    WEIGHTS,
    CheckpointError,
    checkpoint_digest,
    load_checkpoint,
    load_train_state,
    read_model_card,
    save_checkpoint,
)
from core.loss import clip_loss
from core.model import ModelConfig, MultiModalViT, count_parameters

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


def edit_config(ckpt, **changes) -> None:
    d = yaml.safe_load((ckpt / CONFIG).read_text())
    d.update(changes)
    (ckpt / CONFIG).write_text(yaml.safe_dump(d, sort_keys=False))


def test_roundtrip_and_refusal_of_another_architecture(tmp_path):
    cfg = small_cfg()
    model = MultiModalViT(cfg).eval()
    opt = torch.optim.AdamW(model.parameters())
    clip_loss(model.encode(make_batch(cfg)), model.logit_scale).backward()
    opt.step()
    save_checkpoint(tmp_path / "ck", model, cfg, meta={"note": "test"},
                    train_state={"step": 3, "optimizer": opt.state_dict(), "rng": torch.get_rng_state()})
    loaded, card = load_checkpoint(tmp_path / "ck", expect=cfg)
    batch = make_batch(cfg)
    with torch.no_grad():
        assert torch.equal(loaded.encode(batch)["fused"], model.encode(batch)["fused"])
    assert card["meta"]["params"] == count_parameters(model) and card["meta"]["note"] == "test"
    assert read_model_card(tmp_path / "ck")["config"] == cfg.to_dict()
    state = load_train_state(tmp_path / "ck")
    assert state["step"] == 3 and state["optimizer"]["state"]
    # A config that differs only in dropout is the same architecture; a different width is refused.
    load_checkpoint(tmp_path / "ck", expect=small_cfg(channel_dropout=0.0))
    with pytest.raises(CheckpointError, match="width: checkpoint 32 vs expected 64"):
        load_checkpoint(tmp_path / "ck", expect=small_cfg(width=64))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    save_checkpoint(tmp_path / "weights-only", model, cfg, meta={})
    with pytest.raises(CheckpointError, match="cannot resume training"):
        load_train_state(tmp_path / "weights-only")


@pytest.mark.parametrize("edit, named", [
    ({"heads": 4}, "heads: saved 2, config.yaml 4"),
    ({"channels": {"s2rgb": ["B2", "B3", "B4"], "s1amp": ["VV", "VH"], "coh": ["VV_12d", "VV_36d"]}}, "channels: saved"),
    ({"pool": "mean"}, "pool: saved 'cls', config.yaml 'mean'"),
    ({"channel_dropout": 0.5}, "channel_dropout: saved 0.2, config.yaml 0.5"),
])
def test_an_edited_config_with_the_same_shapes_is_refused(tmp_path, edit, named):
    """Every tensor keeps its shape under these edits, so only the recorded config can catch them."""
    cfg = small_cfg()
    save_checkpoint(tmp_path / "ck", MultiModalViT(cfg), cfg, meta={})
    edit_config(tmp_path / "ck", **edit)
    with pytest.raises(CheckpointError, match="differs from the config the weights were saved with") as e:
        load_checkpoint(tmp_path / "ck")
    assert named in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).count(": saved ") == 1  # only what differs is listed


def test_a_checkpoint_without_recorded_config_uses_its_training_meta(tmp_path):
    """Older checkpoints (like the shipped one) record their config only in meta.json's train_config."""
    cfg = small_cfg()
    model = MultiModalViT(cfg)
    save_checkpoint(tmp_path / "ck", model, cfg, meta={"train_config": {"model": cfg.to_dict()}})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "ck" / WEIGHTS),
              metadata={"format": "pt"})  # as written before the config was recorded in the weights
    load_checkpoint(tmp_path / "ck")
    edit_config(tmp_path / "ck", heads=4)
    with pytest.raises(CheckpointError, match="heads: saved 2, config.yaml 4"):
        load_checkpoint(tmp_path / "ck")
    # With no record at all, the shapes are the only check left.
    (tmp_path / "ck" / META).write_text("{}")
    assert load_checkpoint(tmp_path / "ck")[0].cfg.heads == 4
    load_checkpoint(SHIPPED_CHECKPOINT)


def test_loading_never_unpickles_arbitrary_objects(tmp_path):
    cfg = small_cfg()
    save_checkpoint(tmp_path / "ck", MultiModalViT(cfg), cfg, meta={}, train_state={"step": 1})
    pwned = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (exec, (f"import pathlib; pathlib.Path({str(pwned)!r}).write_text('x')",))

    # A real torch.save payload: torch.load(weights_only=False) would run exec and write `pwned`.
    torch.save({"step": Evil()}, tmp_path / "ck" / "train_state.pt")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_train_state(tmp_path / "ck")
    assert not pwned.exists()


def test_damaged_files_are_refused(tmp_path):
    cfg = small_cfg()
    save_checkpoint(tmp_path / "ck", MultiModalViT(cfg), cfg, meta={})
    (tmp_path / "ck" / WEIGHTS).write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / CONFIG).write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(CheckpointError, match="valid model config"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        checkpoint_digest(tmp_path / "ck")


def test_digest_changes_with_any_file(tmp_path):
    cfg = small_cfg()
    save_checkpoint(tmp_path / "ck", MultiModalViT(cfg), cfg, meta={"note": "a"})
    ck = tmp_path / "ck"
    first = checkpoint_digest(ck)
    assert checkpoint_digest(ck) == first
    seen = {first}
    meta = json.loads((ck / META).read_text())
    (ck / META).write_text(json.dumps({**meta, "note": "b"}))
    seen.add(checkpoint_digest(ck))
    edit_config(ck, channel_dropout=0.3)
    seen.add(checkpoint_digest(ck))
    (ck / "COMMAND.txt").write_text("python -m training.pretrain\n")
    seen.add(checkpoint_digest(ck))
    assert len(seen) == 4
