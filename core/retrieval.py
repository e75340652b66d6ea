"""Cross-modal retrieval on held-out simulated chips: top-1 / top-5 per modality pair, in both directions.

`python -m core.retrieval --checkpoint checkpoints/tiny-sim [--seed 99 --chips 512] [--json out.json]`

The held-out chips are built the way pretraining builds its held-out set (`training.pretrain.build_data`):
one simulated store per AOI with `data.simulate.simulate_store` at the held-out seed, each of
`ceil(chips / n_aois)` chips on a near-square grid (`data.simulate.grid_shape`, centred in the AOI), then
`chips` picked evenly over their concatenation. (This module rebuilds that path from the same `data`
functions because `core` may not import `training`.) The seed defaults to the checkpoint's
`data.heldout_seed`, and a seed the checkpoint was trained on is refused, so the chips were never seen in
training. For each ordered pair (query modality a, target modality b) over the chips holding both:
the share of chips whose own b-embedding is among the k nearest b-embeddings of its a-embedding
(inner product of L2-normalised vectors; ties count against the chip), with chance k / n.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from core.checkpoint import SHIPPED_CHECKPOINT, read_model_card
from core.embed import embed_positions, load_model
from data.cli import KnownError, command_line
from data.landcover import DEFAULT_AOIS
from data.simulate import cached_store, grid_shape
from data.store import ChipStore

DEFAULT_KS: tuple[int, ...] = (1, 5)
DEFAULT_HELDOUT_SEED = 99
DEFAULT_CHIPS = 512
DEMO_SEED = 0  # the workspace's demo AOIs: never trained on either


class RetrievalError(KnownError):
    """Retrieval cannot run as asked (a training seed, no modality pair): the message says the fix."""


def topk_accuracy(za: np.ndarray, zb: np.ndarray, ks: Sequence[int] = DEFAULT_KS, block: int = 2048) -> dict[int, float]:
    """Share of rows i whose zb[i] is among the k nearest zb rows of za[i] (inner product), for each k.

    The rank of the true match is the number of targets scoring strictly higher, plus the other targets
    tying with it (ties count against the query, so a collapsed embedding scores chance, not 1).
    """
    za, zb = np.asarray(za, dtype=np.float32), np.asarray(zb, dtype=np.float32)
    if za.shape != zb.shape or za.ndim != 2:
        raise RetrievalError(f"paired embeddings must have the same [n, D] shape, got {za.shape} and {zb.shape}")
    n = len(za)
    if n == 0:
        return {int(k): float("nan") for k in ks}
    ranks = np.empty(n, dtype=np.int64)
    for a in range(0, n, block):
        s = za[a:a + block] @ zb.T                                  # [b, n]
        own = s[np.arange(len(s)), np.arange(a, a + len(s))]
        ranks[a:a + len(s)] = (s >= own[:, None]).sum(axis=1) - 1   # others at least as similar
    return {int(k): float(np.mean(ranks < k)) for k in ks}


def training_seeds(card: dict) -> list[int] | None:
    """The simulated seeds a checkpoint was trained on (None when its meta does not say)."""
    data = ((card.get("meta") or {}).get("train_config") or {}).get("data") or {}
    seeds = data.get("seeds")
    return [int(s) for s in seeds] if seeds is not None else None


def heldout_stores(aois: Sequence[str], seed: int, chips: int, *, chip_size: int, channels: dict[str, list[str]],
                   cache_dir: str | Path, progress: bool = False) -> list[ChipStore]:
    """One simulated store per AOI at `seed`, `ceil(chips / len(aois))` chips each (as pretraining's held-out set)."""
    per_aoi = math.ceil(chips / len(aois))
    rows, cols = grid_shape(per_aoi)
    stores = [cached_store(Path(cache_dir) / f"c{chip_size}-n{per_aoi}-s{seed}" / aoi, aoi, rows, cols, seed,
                           chip_size=chip_size, channels=channels, progress=progress) for aoi in aois]
    return stores


def embed_heldout(model, stores: Sequence[ChipStore], chips: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Embeddings of `chips` chips picked evenly over the stores' concatenation: ({key: [n, D]}, {key: bool [n]})."""
    sizes = [len(s) for s in stores]
    total = sum(sizes)
    pick = np.unique(np.linspace(0, total - 1, min(chips, total)).round().astype(np.int64))
    starts = np.cumsum([0] + sizes)
    vec: dict[str, list[np.ndarray]] = {}
    pres: dict[str, list[np.ndarray]] = {}
    for i, store in enumerate(stores):
        local = pick[(pick >= starts[i]) & (pick < starts[i + 1])] - starts[i]
        v, p = embed_positions(store, model, local)
        for k in v:
            vec.setdefault(k, []).append(v[k])
            pres.setdefault(k, []).append(p[k])
    return {k: np.concatenate(x) for k, x in vec.items()}, {k: np.concatenate(x) for k, x in pres.items()}


def retrieval_table(vectors: dict[str, np.ndarray], present: dict[str, np.ndarray],
                    ks: Sequence[int] = DEFAULT_KS) -> pd.DataFrame:
    """One row per ordered modality pair (query -> target): n chips holding both, top-k per k, chance."""
    mods = [k for k in vectors if k != "fused"]
    rows = []
    for a in mods:
        for b in mods:
            if a == b:
                continue
            ok = np.asarray(present[a], bool) & np.asarray(present[b], bool)
            n = int(ok.sum())
            if n < 2:
                continue
            acc = topk_accuracy(vectors[a][ok], vectors[b][ok], ks)
            row = {"query": a, "target": b, "n": n}
            for k in ks:
                row[f"top{k}"] = acc[int(k)]
                row[f"chance_top{k}"] = min(1.0, k / n)
            rows.append(row)
    return pd.DataFrame(rows)


def run_retrieval(checkpoint: str | Path = SHIPPED_CHECKPOINT, *, seed: int | None = None, chips: int = DEFAULT_CHIPS,
                  aois: Sequence[str] | None = None, ks: Sequence[int] = DEFAULT_KS, cache_dir: str | Path | None = None,
                  device: str = "cpu", allow_training_seed: bool = False, progress: bool = False) -> dict:
    """Held-out cross-modal retrieval of a checkpoint: {'table': DataFrame, 'settings': dict}."""

    checkpoint = Path(checkpoint)
    card = read_model_card(checkpoint)
    data_cfg = ((card.get("meta") or {}).get("train_config") or {}).get("data") or {}
    if seed is None:
        seed = int(data_cfg.get("heldout_seed", DEFAULT_HELDOUT_SEED))
    trained = training_seeds(card)
    if trained is not None and seed in trained and not allow_training_seed:
        raise RetrievalError(f"seed {seed} is one of the checkpoint's training seeds {trained}: pick a held-out seed "
                             f"(e.g. {data_cfg.get('heldout_seed', DEFAULT_HELDOUT_SEED)})")
    if chips < 2:
        raise RetrievalError(f"chips must be >= 2, got {chips}")
    if aois is None:
        aois = list(data_cfg.get("aois") or DEFAULT_AOIS)
    model = load_model(checkpoint, device=device)
    cfg = model.cfg
    with tempfile.TemporaryDirectory(prefix="retrieval-") as tmp:
        stores = heldout_stores(list(aois), int(seed), int(chips), chip_size=cfg.chip_size,
                                channels={k: list(v) for k, v in cfg.channels.items()},
                                cache_dir=cache_dir or tmp, progress=progress)
        vectors, present = embed_heldout(model, stores, int(chips))
    table = retrieval_table(vectors, present, ks)
    settings = {"checkpoint": str(checkpoint), "seed": int(seed), "chips": int(len(next(iter(vectors.values())))),
                "aois": list(aois), "ks": [int(k) for k in ks], "training_seeds": trained,
                "never_trained_on": trained is not None and int(seed) not in trained}
    return {"table": table, "settings": settings}


def markdown(result: dict) -> str:
    """The retrieval table as markdown, with both directions of each pair and chance."""
    t, s = result["table"], result["settings"]
    ks = s["ks"]
    lines = [f"# Cross-modal retrieval on held-out simulated chips (seed {s['seed']}, {s['chips']} chips, "
             f"AOIs {', '.join(s['aois'])})", "",
             f"Checkpoint `{s['checkpoint']}`; training seeds {s['training_seeds']}"
             + ("" if s["never_trained_on"] else " (unknown or including this seed)") + ".", "",
             "| query -> target | n | " + " | ".join(f"top-{k}" for k in ks) + " | " +
             " | ".join(f"chance top-{k}" for k in ks) + " |",
             "|---|---|" + "---|" * (2 * len(ks))]
    for r in t.itertuples(index=False):
        d = r._asdict()
        lines.append(f"| {d['query']} -> {d['target']} | {d['n']} | "
                     + " | ".join(f"{d[f'top{k}']:.3f}" for k in ks) + " | "
                     + " | ".join(f"{d[f'chance_top{k}']:.4f}" for k in ks) + " |")
    return "\n".join(lines) + "\n"


@command_line
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m core.retrieval",
        description="Cross-modal retrieval of a checkpoint on simulated chips it never saw (a held-out seed, built "
        "like pretraining's held-out set): top-k per ordered modality pair (query -> target) with chance.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT), help="checkpoint directory")
    ap.add_argument("--seed", type=int, default=None,
                    help="simulation seed of the held-out chips (default: the checkpoint's data.heldout_seed, else "
                    f"{DEFAULT_HELDOUT_SEED}); a training seed is refused")
    ap.add_argument("--chips", type=int, default=DEFAULT_CHIPS, help="held-out chips in all")
    ap.add_argument("--aois", nargs="+", default=None, help="AOIs (default: the checkpoint's training AOIs)")
    ap.add_argument("--k", nargs="+", type=int, default=list(DEFAULT_KS), help="k of top-k")
    ap.add_argument("--cache-dir", default=None, help="keep the simulated stores here (default: a temp dir)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="also write the table and settings to this JSON file")
    ap.add_argument("--allow-training-seed", action="store_true", help="do not refuse a training seed")
    args = ap.parse_args(argv)
    res = run_retrieval(args.checkpoint, seed=args.seed, chips=args.chips, aois=args.aois, ks=args.k,
                        cache_dir=args.cache_dir, device=args.device, allow_training_seed=args.allow_training_seed)
    print(markdown(res))
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": res["settings"],
                                               "pairs": res["table"].to_dict(orient="records")}, indent=2))
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
