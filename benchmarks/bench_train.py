"""Training speed: tiny samples/s and peak memory, one base step, and tiny with vs without the speed choices.

`python -m benchmarks.bench_train` (CPU, a few minutes). Every variant runs in its own fresh process so
its peak memory (max RSS on CPU, max allocated on CUDA) is its own, and all variants of one table run in
the same invocation so they share the machine's load. Inputs are random normalised chips: this measures
the model, not the data pipeline.

Variants (tiny, training step = forward + CLIP loss + backward + AdamW):
  fused-sdpa   what training uses: nn.TransformerEncoderLayer -> scaled_dot_product_attention (fused kernel)
  math-attn    the same model with SDPA forced to its unfused math backend
  compiled     torch.compile of the model (with --compile; compile time reported separately)
and for embedding (inference, no grad): the TransformerEncoderLayer fast path on vs off.

Data pipeline (`--pipeline`, on by default; `--only-pipeline` for just this, ~1-2 min on 2 CPU threads):
real tiny training steps on simulated chip stores (augmentation included), chips in RAM and streamed from
Zarr, read three ways in the same run: the old synchronous loop (a batch read in the training process between
steps, as `ChipSource` did), and `training.data.training_loader` with 0 and with 2 prefetching workers.
Variants are interleaved round by round so they share the machine's load.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import time
from contextlib import nullcontext
from typing import Any

from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from core.loss import clip_loss
from core.model import ModelConfig, MultiModalViT, count_parameters
from data.atomic import atomic_write_json
from training.config import DataConfig, load_config
from training.data import StepBatchSampler, TrainingChips, augment, batch_indices, simulated_stores, training_loader


def flops_per_sample(cfg: ModelConfig, train: bool) -> float:
    """Approximate model FLOPs per chip (all towers): matmuls 2*params*tokens + attention, x3 for backward."""
    tokens = cfg.n_patches + 1
    w, d = cfg.width, cfg.depth
    block = d * (4 * w * w + 2 * int(w * cfg.mlp_ratio) * w)  # qkv+out projections, MLP
    per_tower = 2 * block * tokens + d * 4 * tokens * tokens * w  # + QK^T and AV
    patch = 2 * cfg.patch_size**2 * w * cfg.n_patches  # one channel's patch projection
    total = sum(per_tower + patch * len(ch) for ch in cfg.channels.values())
    return total * (3 if train else 1)


def random_batch(cfg: ModelConfig, n: int, device: str) -> dict[str, torch.Tensor]:
    """Random normalised chips with every channel present."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for mod, ch in cfg.channels.items():
        out[mod] = torch.randn(n, len(ch), cfg.chip_size, cfg.chip_size, generator=g).to(device)
        out[f"{mod}_mask"] = torch.ones(n, len(ch), dtype=torch.bool, device=device)
    return out


def peak_memory_mb(device: str) -> float:
    """Peak memory of this process: CUDA max allocated, else max resident set size."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_variant(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one variant in this (fresh) process; returns samples/s, step time, memory."""
    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    cfg = ModelConfig.from_dict(spec["model"])
    torch.manual_seed(0)
    model = MultiModalViT(cfg).to(device)
    batch = random_batch(cfg, spec["batch"], device)
    variant = spec["variant"]
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()
    attn_ctx = nullcontext
    if variant == "math-attn":
        attn_ctx = lambda: sdpa_kernel(SDPBackend.MATH)  # noqa: E731
    if variant == "fastpath-off":
        torch.backends.mha.set_fastpath_enabled(False)
    net = model
    compile_s = None
    if variant == "compiled":
        net = torch.compile(model)
    train = spec["train"]
    if train:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> None:
            with attn_ctx(), amp:
                out = net(batch)
            loss = clip_loss(out, model.logit_scale)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        model.eval()

        def step() -> None:
            with torch.inference_mode(), attn_ctx(), amp:
                net.encode(batch) if net is model else net(batch)

    t = time.perf_counter()
    for _ in range(spec["warmup"]):
        step()
    _sync(device)
    if variant == "compiled":
        compile_s = time.perf_counter() - t
    times = []
    deadline = time.perf_counter() + spec["seconds"]
    while len(times) < spec["min_steps"] or (time.perf_counter() < deadline and len(times) < spec["max_steps"]):
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    median = times[len(times) // 2]
    return {
        "name": spec["name"], "variant": variant, "train": train, "batch": spec["batch"], "steps": len(times),
        "step_s": median, "samples_per_s": spec["batch"] / median,
        "gflops": flops_per_sample(cfg, train) * spec["batch"] / median / 1e9,
        "peak_mem_mb": peak_memory_mb(device), "params": count_parameters(model),
        "compile_s": compile_s,
    }


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run a variant in a fresh spawned process (own peak memory, no state leaking between variants)."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        try:
            return pool.apply(run_variant, (spec,))
        except Exception as e:  # e.g. torch.compile without a working C++ toolchain: report, keep going
            return {"name": spec["name"], "variant": spec["variant"], "error": f"{type(e).__name__}: {e}"[:200]}


class LegacySyncSource:
    """The old `ChipSource.get_batch` (before the DataLoader), kept here as the benchmark's baseline: in RAM one
    fancy-index of the concatenated float16 tensors, streamed one Zarr read per store, both in the training process."""

    def __init__(self, chips: TrainingChips) -> None:
        self.chips = chips
        first = chips.datasets[0]
        self.memory = ({k: torch.cat([d.tensors[k] for d in chips.datasets]) for k in first.tensors}
                       if hasattr(first, "tensors") else None)
        self.offsets = np.cumsum([0] + [len(d) for d in chips.datasets])

    def get_batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """Model inputs for global chip indices (order kept), read synchronously."""
        if self.memory is not None:
            idx = torch.from_numpy(indices)
            return {k: (v[idx].float() if v.dtype == torch.float16 else v[idx]) for k, v in self.memory.items()}
        which = np.searchsorted(self.offsets, indices, side="right") - 1
        out: dict[str, list[torch.Tensor]] = {}
        order = []
        for s in np.unique(which):
            sel = np.nonzero(which == s)[0]
            b = self.chips.datasets[s].get_batch(indices[sel] - self.offsets[s])
            order.append(sel)
            for k in self.chips.keys:
                out.setdefault(k, []).append(b[k])
        inv = torch.from_numpy(np.argsort(np.concatenate(order)))
        return {k: torch.cat(v)[inv] for k, v in out.items()}


def _pipeline_round(chips: TrainingChips, legacy: LegacySyncSource, variant: str, model: MultiModalViT,
                    opt: torch.optim.Optimizer, batch: int, first: int, steps: int) -> float:
    """Train `steps` steps reading batches one way; seconds for all but the first step (loader start-up excluded)."""
    n = len(chips)
    if variant == "sync (old)":
        batches = (legacy.get_batch(batch_indices(n, batch, m, 0)) for m in range(first, first + steps))
    else:
        workers = int(variant.split("w")[-1])
        sampler = StepBatchSampler(n, batch, 0, 0, 1, first, first + steps)
        batches = iter(training_loader(chips, sampler, workers=workers, prefetch=2))
    t0 = 0.0
    for i, b in enumerate(batches):
        if i == 1:
            t0 = time.perf_counter()
        b = augment(b, torch.Generator().manual_seed(first + i))
        loss = clip_loss(model(b), model.logit_scale)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def run_pipeline(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Samples/s of real tiny training steps with the old synchronous reads vs the DataLoader (0 and 2 workers)."""
    torch.set_num_threads(args.threads)
    cfg = load_config("tiny").model
    data = DataConfig(aois=["conus", "china"], cache_dir=args.cache_dir)
    t = time.perf_counter()
    stores = simulated_stores(data, cfg.chip_size, cfg.channels, [1], args.pipeline_chips, progress=False)
    print(f"pipeline stores ready in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    variants = ["sync (old)", "loader w0", "loader w2"]
    results = []
    for in_memory in (True, False):
        chips = TrainingChips(stores, cfg.channels, in_memory=in_memory)
        legacy = LegacySyncSource(chips)
        torch.manual_seed(0)
        model = MultiModalViT(cfg).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        seconds = {v: 0.0 for v in variants}
        _pipeline_round(chips, legacy, "sync (old)", model, opt, args.batch, 0, 2)  # warm-up (allocations)
        for r in range(args.pipeline_rounds):
            for v in variants:  # interleaved: every variant sees the same background load
                seconds[v] += _pipeline_round(chips, legacy, v, model, opt, args.batch, 1000 * r, args.pipeline_steps + 1)
        for v in variants:
            timed = args.pipeline_rounds * args.pipeline_steps
            results.append({"data": "RAM" if in_memory else "Zarr", "variant": v, "steps": timed,
                            "step_s": seconds[v] / timed, "samples_per_s": timed * args.batch / seconds[v]})
    return results


def print_pipeline(results: list[dict[str, Any]], batch: int) -> list[dict[str, Any]]:
    """The data-pipeline table and each variant's ratio to the old synchronous loop."""
    header = f"{'chips in':<9} {'reader':<11} {'batch':>5} {'steps':>5} {'step ms':>9} {'samples/s':>10} {'vs old':>7}"
    print(header)
    print("-" * len(header))
    ratios = []
    for r in results:
        old = next(x for x in results if x["data"] == r["data"] and x["variant"] == "sync (old)")
        ratio = r["samples_per_s"] / old["samples_per_s"]
        print(f"{r['data']:<9} {r['variant']:<11} {batch:>5} {r['steps']:>5} {r['step_s'] * 1000:>9.1f} "
              f"{r['samples_per_s']:>10.1f} {ratio:>6.2f}x")
        if r["variant"] != "sync (old)":
            ratios.append({"benchmark": f"pipeline {r['data']}", "fast": r["variant"], "slow": "sync (old)", "speedup": ratio})
    return ratios


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: print the table (and optionally write JSON)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_train", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads per measurement")
    p.add_argument("--batch", type=int, default=64, help="tiny batch size")
    p.add_argument("--seconds", type=float, default=15.0, help="measuring time per tiny variant")
    p.add_argument("--base-batch", type=int, default=2)
    p.add_argument("--base-steps", type=int, default=1, help="timed base steps; GPU: a few hundred")
    p.add_argument("--base-warmup", type=int, default=0,
                   help="untimed base steps first (CPU: 0, a step takes minutes and allocation is noise; GPU: 3+)")
    p.add_argument("--no-base", action="store_true", help="skip the base (paper-scale) step")
    p.add_argument("--compile", action="store_true",
                   help="also measure torch.compile (on CPU the inductor build takes minutes)")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    p.add_argument("--no-pipeline", action="store_true", help="skip the data-pipeline comparison")
    p.add_argument("--only-pipeline", action="store_true", help="only the data-pipeline comparison")
    p.add_argument("--pipeline-chips", type=int, default=512, help="simulated chips per AOI (2 AOIs) for the pipeline")
    p.add_argument("--pipeline-steps", type=int, default=4, help="timed training steps per variant and round")
    p.add_argument("--pipeline-rounds", type=int, default=2, help="interleaved rounds of the three readers")
    p.add_argument("--cache-dir", default="runs/data", help="where the pipeline's simulated stores are cached")
    args = p.parse_args(argv)
    if args.only_pipeline:
        t = time.perf_counter()
        ratios = print_pipeline(run_pipeline(args), args.batch)
        print(f"\n{args.threads} threads, load average {os.getloadavg()[0]:.2f}, {time.perf_counter() - t:.0f} s")
        if args.json:
            atomic_write_json(Path(args.json), {"threads": args.threads, "ratios": ratios})
        return 0
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    tiny = load_config("tiny").model.to_dict()
    common = {"device": device, "threads": args.threads, "seconds": args.seconds, "warmup": 2, "min_steps": 3,
              "max_steps": 10_000, "model": tiny, "batch": args.batch}
    specs = [
        {**common, "name": "tiny train", "variant": "fused-sdpa", "train": True},
        {**common, "name": "tiny train", "variant": "math-attn", "train": True},
    ]
    if args.compile:
        specs.append({**common, "name": "tiny train", "variant": "compiled", "train": True, "warmup": 3})
    specs += [
        {**common, "name": "tiny embed", "variant": "fastpath-on", "train": False, "batch": 256},
        {**common, "name": "tiny embed", "variant": "fastpath-off", "train": False, "batch": 256},
    ]
    if not args.no_base:
        base = load_config("base").model.to_dict()
        specs.append({**common, "name": "base train", "variant": "fused-sdpa", "train": True, "model": base,
                      "batch": args.base_batch, "warmup": args.base_warmup, "min_steps": args.base_steps,
                      "max_steps": args.base_steps, "seconds": 0.0})
    results = []
    for spec in specs:
        print(f"measuring {spec['name']} [{spec['variant']}] ...", file=sys.stderr, flush=True)
        results.append(measure(spec))
    # DataLoader workers cannot start inside measure()'s daemonic pool process: the pipeline runs here.
    pipeline = [] if args.no_pipeline else run_pipeline(args)
    load = os.getloadavg()[0]
    print(f"\ndevice {device}, torch {torch.__version__}, {args.threads} threads, load average {load:.2f} "
          f"(other processes share this CPU; compare rows of one run only)\n")
    header = f"{'benchmark':<12} {'variant':<13} {'batch':>5} {'step ms':>9} {'samples/s':>10} {'GFLOP/s':>8} {'peak MB':>8}  note"
    print(header)
    print("-" * len(header))
    for r in results:
        if "error" in r:
            print(f"{r['name']:<12} {r['variant']:<13} failed: {r['error']}")
            continue
        note = f"compile {r['compile_s']:.0f} s" if r.get("compile_s") else ""
        print(f"{r['name']:<12} {r['variant']:<13} {r['batch']:>5} {r['step_s'] * 1000:>9.1f} {r['samples_per_s']:>10.3g} "
              f"{r['gflops']:>8.1f} {r['peak_mem_mb']:>8.0f}  {note}")
    ok = {(r["name"], r["variant"]): r for r in results if "error" not in r}
    ratios = []
    for name, fast, slow in (("tiny train", "fused-sdpa", "math-attn"), ("tiny train", "compiled", "fused-sdpa"),
                             ("tiny embed", "fastpath-on", "fastpath-off")):
        if (name, fast) in ok and (name, slow) in ok:
            ratio = ok[(name, fast)]["samples_per_s"] / ok[(name, slow)]["samples_per_s"]
            ratios.append({"benchmark": name, "fast": fast, "slow": slow, "speedup": ratio})
            print(f"{name}: {fast} / {slow} = {ratio:.2f}x")
    if pipeline:
        print("\ndata pipeline (tiny training steps, real chips):")
        ratios += print_pipeline(pipeline, args.batch)
    params = {r["name"].split()[0]: r["params"] for r in results if "params" in r}
    print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in params.items()))
    if args.json:
        atomic_write_json(Path(args.json), {"device": device, "threads": args.threads, "load_average": load,
                                            "results": results, "pipeline": pipeline, "ratios": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())
