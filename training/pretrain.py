"""Pretrain the multimodal CLIP/ViT: `python -m training.pretrain --config tiny` (or `torchrun ... -m training.pretrain`).

One story, top to bottom: setup (DDP from torchrun's environment), data, model, then per step: get this
rank's slice of the global batch, forward under autocast, CLIP loss with negatives from every rank,
backward (accumulated; DDP syncs only on the last micro-step), clip, AdamW step, log, evaluate, checkpoint.

Everything random is a pure function of (seed, step, micro-step, rank): batch order, augmentation and the
dropout masks. A resumed run therefore reproduces the uninterrupted run's losses exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm
import yaml

from core import distributed
from core.checkpoint import CheckpointError, load_checkpoint, load_train_state, save_checkpoint, unwrap
from core.loss import clip_loss, retrieval_top1
from core.model import MultiModalViT, count_parameters
from data.cli import CliError, command_line
from data.store import ChipStore
from training.config import TrainConfig, load_config
from training.data import StepBatchSampler, TrainingChips, augment, simulated_stores, training_loader

EVAL_PAIRS = (("s2rgb", "s1amp"), ("s2rgb", "coh"), ("s1amp", "coh"))
LOG_NAME = "training_log.jsonl"
CKPT_NAME = "checkpoint"


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; biases, norms, tokens, embeddings and the temperature are not decayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_matrix = p.ndim >= 2 and not name.endswith("bias") and not any(
            k in name for k in ("pos_embed", "cls_token", "channel_embed"))  # the patch bias is [C, width]
        (decay if is_matrix else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_data(cfg: TrainConfig, progress: bool = True) -> tuple[TrainingChips, dict[str, torch.Tensor], dict]:
    """Training chips, a fixed held-out batch (another seed) and a description of both for the model card."""
    d, m = cfg.data, cfg.model
    if d.source == "simulate":
        stores = simulated_stores(d, m.chip_size, m.channels, d.seeds, d.chips_per_aoi, progress)
        desc = {"source": "simulated (data.simulate)", "aois": list(d.aois), "seeds": list(d.seeds),
                "chips_per_aoi_per_seed": d.chips_per_aoi}
    else:
        stores = [ChipStore.open(p) for p in d.paths]
        for s in stores:
            if s.meta.chip_size != m.chip_size:
                raise ValueError(f"store {s.path} has {s.meta.chip_size} px chips but model.chip_size is {m.chip_size}")
        desc = {"source": "chip stores", "paths": list(d.paths), "simulated": [s.meta.simulated for s in stores]}
    train = TrainingChips(stores, m.channels, in_memory=d.in_memory)
    desc["train_chips"] = len(train)
    per_aoi = math.ceil(d.heldout_chips / len(d.aois))
    held_stores = simulated_stores(d, m.chip_size, m.channels, [d.heldout_seed], per_aoi, progress)
    held_src = TrainingChips(held_stores, m.channels, in_memory=False)
    pick = np.linspace(0, len(held_src) - 1, d.heldout_chips).round().astype(np.int64)
    heldout = held_src.get_batch(pick)
    desc["heldout"] = {"source": "simulated (data.simulate)", "seed": d.heldout_seed, "chips": len(pick), "aois": list(d.aois)}
    return train, heldout, desc


@torch.no_grad()
def evaluate(model: torch.nn.Module, heldout: dict[str, torch.Tensor], device: torch.device, batch: int = 256) -> dict:
    """Cross-modal retrieval top-1 on the held-out chips for each pair (mean of both directions), with chance."""
    net = unwrap(model)
    was_training = net.training
    net.eval()
    n = next(iter(heldout.values())).shape[0]
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, n, batch):
        b = {k: v[start : start + batch].to(device) for k, v in heldout.items()}
        out = net.encode(b)
        for k, v in out.items():
            parts.setdefault(k, []).append(v.cpu() if v.dtype == torch.bool else v.float().cpu())
    out = {k: torch.cat(v) for k, v in parts.items()}
    result = {}
    for a, b in EVAL_PAIRS:
        if a not in out or b not in out:
            continue
        ok = out[f"{a}_present"] & out[f"{b}_present"]
        za, zb = out[a][ok], out[b][ok]
        top1 = 0.5 * (retrieval_top1(za, zb) + retrieval_top1(zb, za))
        result[f"{a}<->{b}"] = {"top1": round(top1, 4), "chance": round(1.0 / max(1, len(za)), 5), "n": int(len(za))}
    net.train(was_training)
    return result


def _step_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """A distinct, reproducible seed per (run seed, step, micro-step, rank)."""
    return int(np.random.SeedSequence([seed, step, micro, rank]).generate_state(1)[0])


# Settings that do not change what a run computes: a resume may differ in these.
_RESUME_FREE = {"out", "export", "threads", "device", "log_every", "eval_every", "ckpt_every"}
_RESUME_FREE_DATA = {"cache_dir", "in_memory", "workers", "prefetch"}


def _resume_view(train_config: dict) -> dict:
    """The parts of a train config that must match for an exact resume."""
    view = {k: v for k, v in train_config.items() if k not in _RESUME_FREE}
    if isinstance(view.get("data"), dict):
        view["data"] = {k: v for k, v in view["data"].items() if k not in _RESUME_FREE_DATA}
    return view


def _read_log(path: Path, upto_step: int) -> list[str]:
    """Log lines at or before a step (a resumed run drops what the interrupted run logged after its checkpoint)."""
    if not path.is_file():
        return []
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= upto_step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line half-written when the run was killed
    return keep


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    command: str = "",
) -> dict:
    """Run (or resume) pretraining; returns the summary written into the final checkpoint's meta."""
    cfg.validate()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    ctx = distributed.setup(cfg.device)  # the group is left to the caller: main() tears it down
    rank, world, device = ctx.rank, ctx.world, ctx.device
    main_proc = ctx.main
    out = Path(cfg.out)
    ckpt_dir, log_path = out / CKPT_NAME, out / LOG_NAME
    if (ckpt_dir.exists() or log_path.exists()) and not (resume or overwrite):
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it or --overwrite to start over")
    if world > 1 and main_proc:
        print(f"DDP: {world} processes, global batch {cfg.batch_size * world * cfg.grad_accum}", file=sys.stderr)

    # Rank 0 simulates (or reuses) the cached stores first; the other ranks then only open them.
    if world > 1 and not main_proc:
        dist.barrier()
    train_set, heldout, data_desc = build_data(cfg, progress=progress and main_proc)
    if world > 1 and main_proc:
        dist.barrier()
    global_micro = cfg.batch_size * world
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = MultiModalViT(cfg.model).to(device)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
                            fused=device.type == "cuda")
    start_step, elapsed_before = 0, 0.0
    commands = [command] if command else []  # a resumed run's COMMAND.txt lists every command that made it
    if resume:
        loaded, card = load_checkpoint(ckpt_dir, expect=cfg.model)
        saved, now = _resume_view(card["meta"].get("train_config", {})), _resume_view(cfg.to_dict())
        saved["world_size"], now["world_size"] = card["meta"].get("world_size", 1), world
        for key in sorted(set(saved) | set(now)):
            if saved.get(key) != now.get(key):
                raise CheckpointError(
                    f"cannot resume {ckpt_dir} exactly: {key} was {saved.get(key)!r}, now {now.get(key)!r}; "
                    "use the run's own config and process count, or start a new run with another --set out=..."
                )
        model.load_state_dict(loaded.state_dict())
        state = load_train_state(ckpt_dir)
        opt.load_state_dict(state["optimizer"])
        start_step, elapsed_before = int(state["step"]), float(state["elapsed_s"])
        commands = list(card["meta"].get("commands", [])) + commands
        resumed_eval = card["meta"].get("heldout_retrieval") or {}
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        keep = _read_log(log_path, start_step) if resume else []
        log_path.write_text("".join(line + "\n" for line in keep))
    net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp and device.type == "cuda" else nullcontext()
    params = count_parameters(model)

    def log(record: dict) -> None:
        if main_proc:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    last_eval: dict = resumed_eval if resume else {}  # a finished run resumed keeps its scores
    losses: list[float] = []
    t0, t_log = time.perf_counter(), time.perf_counter()
    # Batches come from DataLoader workers that read ahead; which chips a micro-step gets depends only on
    # (seed, micro-step), so a resumed run reads exactly what the uninterrupted run read.
    sampler = StepBatchSampler(len(train_set), global_micro, cfg.seed, rank, world,
                               start_step * cfg.grad_accum, cfg.steps * cfg.grad_accum)
    batches = iter(training_loader(train_set, sampler, workers=cfg.data.workers, prefetch=cfg.data.prefetch,
                                   pin_memory=device.type == "cuda"))
    bar = tqdm(total=cfg.steps, initial=start_step, desc=f"pretrain {cfg.model.name}", unit="step",
               disable=not (progress and main_proc))
    step = start_step
    for step in range(start_step, cfg.steps):
        lr = get_lr(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        step_loss = 0.0
        for micro in range(cfg.grad_accum):
            seed = _step_seed(cfg.seed, step, micro, rank)
            batch = next(batches)
            if cfg.data.augment:
                batch = augment(batch, torch.Generator().manual_seed(seed))
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            torch.manual_seed(seed)  # the dropout masks of this micro-step
            sync = world == 1 or micro == cfg.grad_accum - 1
            with (nullcontext() if sync else net.no_sync()):
                with amp:
                    enc = net(batch)
                loss = clip_loss(enc, model.logit_scale, distributed=world > 1)
                # A modality that forms no pair in this batch (e.g. coh absent from real stores) gets no gradient;
                # DDP would then wait for its tower's gradients forever. A zero term keeps every tower in the graph.
                loss = (loss + 0.0 * sum(enc[m].float().sum() for m in model.modalities if m in enc)) / cfg.grad_accum
                loss.backward()
            step_loss += float(loss.detach())
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip if cfg.clip > 0 else float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, math.log(100.0))  # CLIP's cap on the temperature
        losses.append(step_loss)
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.3f}")
        if done % cfg.log_every == 0 or done == cfg.steps:
            now = time.perf_counter()
            n_steps = cfg.log_every if done % cfg.log_every == 0 else done % cfg.log_every
            log({"step": done, "loss": round(step_loss, 6), "lr": lr, "grad_norm": round(float(grad_norm), 4),
                 "temperature": round(float(model.logit_scale.detach().exp()), 4),
                 "samples_per_s": round(n_steps * global_micro * cfg.grad_accum / max(now - t_log, 1e-9), 2),
                 "elapsed_s": round(elapsed_before + now - t0, 2)})
            t_log = now
        is_last = done == cfg.steps
        if main_proc and (done % cfg.eval_every == 0 or is_last):
            last_eval = evaluate(model, heldout, device)
            log({"step": done, "eval": last_eval})
            bar.write(f"step {done}: held-out retrieval top-1 " +
                      ", ".join(f"{k} {v['top1']:.3f} (chance {v['chance']:.4f})" for k, v in last_eval.items()))
        if done % cfg.ckpt_every == 0 or is_last or (stop_at is not None and done >= stop_at):
            if main_proc:
                meta = {"train_config": cfg.to_dict(), "step": done, "world_size": world, "training_data": data_desc,
                        "commands": commands,
                        "heldout_retrieval": last_eval, "training_wall_s": round(elapsed_before + time.perf_counter() - t0, 1)}
                save_checkpoint(ckpt_dir, model, cfg.model, meta=meta,
                                train_state={"step": done, "optimizer": opt.state_dict(),
                                             "elapsed_s": elapsed_before + time.perf_counter() - t0,
                                             "schedule": "warmup_cosine (pure function of step)"})
            if world > 1:
                dist.barrier()
        if stop_at is not None and done >= stop_at:
            break
    bar.close()
    del batches  # stops the DataLoader's workers now (a run stopped early leaves batches unread)
    wall = elapsed_before + time.perf_counter() - t0
    summary = {
        "params": params,
        "steps_done": step + 1 if cfg.steps > start_step else start_step,
        "losses": losses,
        "heldout_retrieval": last_eval,
        "training_wall_s": round(wall, 1),
    }
    finished = summary["steps_done"] >= cfg.steps
    if main_proc and finished:
        export = Path(cfg.export) if cfg.export else out / "final"
        meta = {"train_config": cfg.to_dict(), "step": cfg.steps, "world_size": world, "device": str(device),
                "training_data": data_desc, "heldout_retrieval": last_eval, "training_wall_s": round(wall, 1),
                "simulated_training_data": cfg.data.source == "simulate", "commands": commands}
        extra = {LOG_NAME: log_path.read_text()}
        if commands:
            extra["COMMAND.txt"] = "\n".join(commands) + "\n"
        save_checkpoint(export, model, cfg.model, meta=meta, extra_files=extra)
        summary["export"] = str(export)
    if world > 1:
        dist.barrier()
    return summary


@command_line
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m training.pretrain",
        description="Pretrain the multimodal CLIP/ViT (S2 RGB, S1 amplitude, InSAR coherence). "
        "Multi-process: torchrun --nproc_per_node N -m training.pretrain ...",
    )
    parser.add_argument("--config", default="tiny", help="named config in training/configs (tiny, base) or a YAML path")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set model.width=64 --set data.seeds=[1,2] (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue the run in <out>/checkpoint exactly")
    parser.add_argument("--overwrite", action="store_true", help="start over even if <out> holds a run")
    parser.add_argument("--stop-at", type=int, default=None, help="stop (with a checkpoint) after this step, as if interrupted")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as e:
        raise CliError(f"{e} (see --help and training/configs/)") from None
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    command = "python -m training.pretrain " + shlex.join(list(argv) if argv is not None else sys.argv[1:])
    summary = train(cfg, resume=args.resume, overwrite=args.overwrite, stop_at=args.stop_at,
                    progress=not args.no_progress, command=command)
    if distributed.env_rank_world()[0] == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "losses"}, indent=2))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
