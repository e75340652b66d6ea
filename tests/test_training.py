"""Pretraining: config, schedule, loss falls, 2-process DDP equals 1 process, exact resume, refusals, shipped checkpoint."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from core import distributed
from core.checkpoint import SHIPPED_CHECKPOINT, CheckpointError, load_checkpoint, read_model_card
from core.loss import clip_loss
from core.model import ModelConfig, MultiModalViT, count_parameters
from data.dataset import ChipDataset
from data.simulate import simulate_store
from training.config import TrainConfig, apply_overrides, load_config
from training.data import StepBatchSampler, TrainingChips, augment, batch_indices, simulated_stores, training_loader
from training.pretrain import _read_log, get_lr, main, param_groups, train

torch.set_num_threads(1)

SMALL_MODEL = dict(name="test", chip_size=16, patch_size=8, width=32, depth=1, heads=2, embed_dim=16)


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory):
    """A shared cache dir so simulated training stores are built once for this module."""
    return tmp_path_factory.mktemp("pretrain-data")


def small_train_config(out, cache, **kw) -> TrainConfig:
    d = {
        "model": dict(SMALL_MODEL),
        "data": {"aois": ["conus", "china"], "seeds": [1], "chips_per_aoi": 48, "heldout_chips": 32,
                 "cache_dir": str(cache)},
        "batch_size": 16, "steps": 8, "warmup_steps": 2, "lr": 3e-3, "log_every": 1, "eval_every": 1000,
        "ckpt_every": 1000, "threads": 1, "out": str(out),
    }
    for k, v in kw.items():
        if isinstance(v, dict):
            d[k] = {**d.get(k, {}), **v}
        else:
            d[k] = v
    return TrainConfig.from_dict(d)


def test_named_configs_and_parameter_counts():
    tiny, base = load_config("tiny"), load_config("base")
    with torch.device("meta"):  # count without allocating 1 GB of base weights
        n_tiny = count_parameters(MultiModalViT(tiny.model))
        n_base = count_parameters(MultiModalViT(base.model))
    print(f"parameters: tiny {n_tiny:,}  base {n_base:,}")
    assert 1_000_000 <= n_tiny <= 10_000_000
    assert 230_000_000 <= n_base <= 270_000_000
    assert base.model.chip_size == 448 and base.model.patch_size == 16
    assert 0 not in tiny.data.seeds


def test_config_overrides_and_errors():
    cfg = load_config("tiny", ["model.width=64", "data.seeds=[3,4]", "lr=1", "data.augment=false"])
    assert cfg.model.width == 64 and cfg.data.seeds == [3, 4] and cfg.lr == 1.0 and cfg.data.augment is False
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="demo AOIs' seed"):
        load_config("tiny", ["data.seeds=[0,1]"])
    with pytest.raises(ValueError, match="unknown config key 'model.widht'"):
        load_config("tiny", ["model.widht=3"])
    with pytest.raises(ValueError, match="expected int"):
        apply_overrides({}, ["steps=many"])
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        load_config("tiny", ["batch_size=1"])
    with pytest.raises(FileNotFoundError, match="named configs"):
        load_config("huge")


def test_lr_schedule():
    cfg = load_config("tiny", ["steps=100", "warmup_steps=10", "lr=1.0", "min_lr_ratio=0.1"])
    lrs = [get_lr(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_augment_is_identical_across_modalities():
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4).repeat(8, 1, 1, 1)
    batch = {"a": x, "b": x.repeat(1, 2, 1, 1), "a_mask": torch.ones(16, 1, dtype=torch.bool)}
    out = augment(batch, torch.Generator().manual_seed(0))
    assert torch.equal(out["a"][:, 0], out["b"][:, 0]) and torch.equal(out["b"][:, 0], out["b"][:, 1])
    assert not torch.equal(out["a"], x)  # something was rotated or flipped
    assert torch.equal(out["a_mask"], batch["a_mask"])


def test_help():
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0


def test_loss_falls_and_checkpoint_exported(tmp_path, data_cache):
    cfg = small_train_config(tmp_path / "run", data_cache, steps=30)
    summary = train(cfg, progress=False, command="pytest")
    losses = summary["losses"]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2, losses
    export = tmp_path / "run" / "final"
    assert (export / "COMMAND.txt").read_text().strip() == "pytest"
    assert not (export / "train_state.pt").exists()
    card = read_model_card(export)
    assert card["meta"]["training_data"]["seeds"] == [1]
    assert set(card["meta"]["heldout_retrieval"]) == {"s2rgb<->s1amp", "s2rgb<->coh", "s1amp<->coh"}
    lines = [json.loads(x) for x in (export / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == list(range(1, 31))


def test_resume_reproduces_losses_and_refuses_other_configs(tmp_path, data_cache):
    kw = dict(steps=8, ckpt_every=3, grad_accum=2)
    full = train(small_train_config(tmp_path / "a", data_cache, **kw), progress=False)["losses"]
    first = train(small_train_config(tmp_path / "b", data_cache, **kw), progress=False, stop_at=5, command="first")["losses"]
    assert len(first) == 5
    with pytest.raises(FileExistsError, match="--resume"):
        train(small_train_config(tmp_path / "b", data_cache, **kw), progress=False)
    with pytest.raises(CheckpointError, match="width: checkpoint 32 vs expected 64"):
        train(small_train_config(tmp_path / "b", data_cache, model={"width": 64}, **kw), resume=True, progress=False)
    with pytest.raises(CheckpointError, match="batch_size"):
        train(small_train_config(tmp_path / "b", data_cache, batch_size=8, **kw), resume=True, progress=False)
    rest = train(small_train_config(tmp_path / "b", data_cache, **kw), resume=True, progress=False, command="second")["losses"]
    assert first + rest == full  # exact, not approximately
    logged = [json.loads(x)["loss"] for x in (tmp_path / "b" / "training_log.jsonl").read_text().splitlines()
              if "loss" in json.loads(x)]
    assert logged == [round(v, 6) for v in full]
    assert (tmp_path / "b" / "final" / "COMMAND.txt").read_text() == "first\nsecond\n"  # how it was really made


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fixed_batch(cfg: ModelConfig, n: int) -> dict:
    g = torch.Generator().manual_seed(7)
    b = {}
    for mod, ch in cfg.channels.items():
        b[mod] = torch.randn(n, len(ch), cfg.chip_size, cfg.chip_size, generator=g)
        b[f"{mod}_mask"] = torch.rand(n, len(ch), generator=g) > 0.2
    b["coh_mask"][3] = False  # one chip lacks a whole modality
    return b


def _ddp_worker(rank: int, world: int, port: int, out_dir: str, cache: str) -> None:
    """One DDP rank: gradients on its half of a fixed global batch, then a short real training run."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    cfg = ModelConfig(**SMALL_MODEL, modality_dropout=0.0, channel_dropout=0.0)
    torch.manual_seed(0)
    model = MultiModalViT(cfg)
    net = DDP(model)
    full = _fixed_batch(cfg, 8)
    half = {k: v[rank * 4 : (rank + 1) * 4] for k, v in full.items()}
    loss = clip_loss(net(half), model.logit_scale, distributed=True)
    loss.backward()
    if rank == 0:
        torch.save({"loss": loss.detach(), "grads": {n: p.grad for n, p in model.named_parameters()}},
                   os.path.join(out_dir, "ddp_grads.pt"))
    # The real loop under torchrun-style environment: sharded batches, gathered negatives, rank-0 checkpoint.
    run_cfg = small_train_config(os.path.join(out_dir, "ddp-run"), cache, steps=3, batch_size=8)
    summary = train(run_cfg, progress=False)
    if rank == 0:
        with open(os.path.join(out_dir, "ddp_summary.json"), "w") as f:
            json.dump(summary, f)
    torch.distributed.destroy_process_group()


def test_two_process_ddp_matches_single_process(tmp_path, data_cache):
    small_train_config(tmp_path, data_cache)  # validates; the workers build the same config
    # Build the simulated stores once here so the two ranks do not race to write them.
    cfg = small_train_config(tmp_path / "x", data_cache)
    simulated_stores(cfg.data, 16, cfg.model.channels, cfg.data.seeds, cfg.data.chips_per_aoi, progress=False)
    simulated_stores(cfg.data, 16, cfg.model.channels, [cfg.data.heldout_seed], 16, progress=False)
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), str(data_cache)), nprocs=2, join=True)

    mcfg = ModelConfig(**SMALL_MODEL, modality_dropout=0.0, channel_dropout=0.0)
    torch.manual_seed(0)
    model = MultiModalViT(mcfg)
    loss = clip_loss(model(_fixed_batch(mcfg, 8)), model.logit_scale)
    loss.backward()
    ddp = torch.load(tmp_path / "ddp_grads.pt", weights_only=True)
    assert torch.allclose(ddp["loss"], loss.detach(), atol=1e-6)
    for name, p in model.named_parameters():
        assert torch.allclose(ddp["grads"][name], p.grad, atol=1e-6, rtol=1e-4), name
    summary = json.loads((tmp_path / "ddp_summary.json").read_text())
    assert summary["steps_done"] == 3 and all(np.isfinite(summary["losses"]))
    assert (tmp_path / "ddp-run" / "final" / "model.safetensors").is_file()
    assert read_model_card(tmp_path / "ddp-run" / "final")["meta"]["world_size"] == 2


def test_shipped_checkpoint_is_robust_to_a_missing_channel(tmp_path):
    """With the shipped tiny-sim model, a chip with one channel removed stays nearest its own full embedding."""
    card = read_model_card(SHIPPED_CHECKPOINT)
    assert card["meta"]["training_data"]["source"].startswith("simulated")
    assert 0 not in card["meta"]["training_data"]["seeds"]  # never trained on the demo seed
    for pair in card["meta"]["heldout_retrieval"].values():
        assert pair["top1"] > 10 * pair["chance"]
    assert sum(f.stat().st_size for f in SHIPPED_CHECKPOINT.iterdir()) <= 25 * 2**20
    model, _ = load_checkpoint(SHIPPED_CHECKPOINT)
    cfg = model.cfg
    store = simulate_store(tmp_path / "demo", "conus", 8, 8, seed=0, chip_size=cfg.chip_size, progress=False)
    batch = ChipDataset(store, cfg.channels).get_batch(range(len(store)))
    with torch.no_grad():
        full = model.encode(batch)
        for mod, chans in cfg.channels.items():
            for j, ch in enumerate(chans):
                dropped = dict(batch)
                dropped[f"{mod}_mask"] = batch[f"{mod}_mask"].clone()
                dropped[f"{mod}_mask"][:, j] = False
                out = model.encode(dropped)
                ok = full[f"{mod}_present"] & out[f"{mod}_present"]
                sims = out[mod][ok] @ full[mod][ok].T
                rank1 = (sims.argmax(1) == torch.arange(int(ok.sum()))).float().mean().item()
                # Measured at shipping: 0.78-1.00 per modality tower (B4 and VH hardest), 1.00 fused.
                assert rank1 >= 0.7, f"{mod}/{ch} removed: only {rank1:.0%} of chips stay nearest themselves"
                fused_ok = full["fused_present"]
                sims = out["fused"][fused_ok] @ full["fused"][fused_ok].T
                assert (sims.argmax(1) == torch.arange(int(fused_ok.sum()))).float().mean().item() >= 0.95


def test_yaml_numbers_without_a_dot_and_bad_values(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 1e-3\nweight_decay: 5e-2\nsteps: 10\n")
    cfg = load_config(str(f))
    assert cfg.lr == 1e-3 and cfg.weight_decay == 0.05
    assert load_config("tiny", ["lr=3e-4"]).lr == 3e-4
    f.write_text("lr: fast\n")
    with pytest.raises(ValueError, match="lr"):
        load_config(str(f))


def test_a_half_written_log_line_does_not_stop_a_resume(tmp_path):
    log = tmp_path / "training_log.jsonl"
    log.write_text('{"step": 10, "loss": 1.0}\n{"step": 20, "loss": 0.9}\n{"step": 30, "lo')
    assert _read_log(log, 20) == ['{"step": 10, "loss": 1.0}', '{"step": 20, "loss": 0.9}']


def test_patch_bias_is_not_decayed():
    model = MultiModalViT(load_config("tiny").model)
    decayed = {id(p) for p in param_groups(model, 0.05)[0]["params"]}
    names = [n for n, p in model.named_parameters() if id(p) in decayed]
    assert names and not any(n.endswith("bias") for n in names)


def test_loader_batches_are_the_step_seeded_batches(data_cache):
    """The DataLoader (2 workers, prefetch) yields exactly batch_indices' chips, in order, in RAM or from Zarr."""
    cfg = small_train_config(data_cache / "unused", data_cache)
    stores = simulated_stores(cfg.data, 16, cfg.model.channels, cfg.data.seeds, cfg.data.chips_per_aoi, progress=False)
    in_ram = TrainingChips(stores, cfg.model.channels, in_memory=True)
    streamed = TrainingChips(stores, cfg.model.channels, in_memory=False)
    n = len(in_ram)
    assert n == len(streamed) == sum(len(s) for s in stores) and len(in_ram.datasets) == 2
    sampler = StepBatchSampler(n, 16, 5, rank=1, world=2, start=4, stop=9)
    got = list(training_loader(in_ram, sampler, workers=2, prefetch=2))
    assert len(got) == len(sampler) == 5
    for micro, batch in zip(range(4, 9), got):
        idx = batch_indices(n, 16, micro, 5, rank=1, world=2)
        want = streamed.get_batch(idx)
        assert set(batch) == set(want) == {k for m in cfg.model.channels for k in (m, f"{m}_mask")}
        for k in want:
            # RAM holds float16: equal to the Zarr read up to half precision.
            assert torch.allclose(batch[k].float(), want[k].float(), atol=2e-2, rtol=1e-3), k
    with pytest.raises(ValueError, match=f"larger than the {n} training chips"):
        StepBatchSampler(n, 128, 0, 0, 1, 0, 1)


def test_worker_count_does_not_change_the_run(tmp_path, data_cache):
    kw = dict(steps=4, grad_accum=2)
    a = train(small_train_config(tmp_path / "a", data_cache, data={"workers": 0}, **kw), progress=False)["losses"]
    b = train(small_train_config(tmp_path / "b", data_cache, data={"workers": 2, "prefetch": 3}, **kw), progress=False)["losses"]
    assert a == b


def test_distributed_setup_in_a_plain_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    with distributed.distributed("cpu") as ctx:
        assert (ctx.rank, ctx.world, ctx.device.type, ctx.created, ctx.main) == (0, 1, "cpu", False, True)
        distributed.barrier(ctx)  # a no-op without a process group
    assert not torch.distributed.is_initialized()
    with pytest.raises(ValueError, match="unknown device"):
        distributed.resolve_device("tpu")
    if not torch.cuda.is_available():
        assert distributed.resolve_device("auto").type == "cpu"
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            distributed.resolve_device("cuda")
