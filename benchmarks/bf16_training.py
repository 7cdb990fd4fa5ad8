"""bf16 parameters without an fp32 master copy, measured on charlm (docs/lowprecision.md).

Four ways to train the same bf16 model (forward and backward in bf16 in all four, so only the update's
precision differs), AdamW with warmup + cosine, several seeds:

    master      fp32 master weights + a bf16 copy for the forward pass (the usual mixed precision)
    nearest     bf16 parameters, the update rounded to nearest (plain bf16 training)
    stochastic  bf16 parameters, stochastic_rounding=True
    kahan       bf16 parameters, kahan_summation=True

Printed per mode: final validation loss (median and spread over seeds), its gap to the master run,
and the fraction of element updates rounded away (θ unchanged after a step although the update is
nonzero: m ≠ 0), averaged over the last 40% of steps, when the lr is small.

    PYTHONPATH=src python benchmarks/bf16_training.py            # 3 seeds, 600 steps
    PYTHONPATH=src python benchmarks/bf16_training.py --steps 100 --seeds 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor

import torch

import optimlab
from optimlab.lab.claim_checks.lowprec import MODES, OPTIONS, run_mode


def train(mode: str, seed: int, steps: int, lr: float) -> dict:
    torch.set_num_threads(1)  # tiny models: one thread each, two runs at a time
    return run_mode(mode, seed, steps, lr)


def step_times(numel: int = 1 << 22, repeats: int = 30) -> dict[str, float]:
    """Median seconds of one fused AdamW step on `numel` bf16 weights (8 tensors) per bf16 mode, each mode
    measured in turn within every repeat so that machine load hits all alike. (The master run's step is
    an fp32 step plus a copy to bf16; its bytes, not a timing, are the fair comparison: docs.)"""
    import time

    torch.manual_seed(0)
    shapes = [(numel // 8,)] * 8
    setups = {}
    for mode in MODES[1:]:
        params = [torch.randn(s, dtype=torch.bfloat16).requires_grad_() for s in shapes]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        opt = optimlab.create("adamw", params, lr=1e-3, path="fused", rounding_seed=0, **OPTIONS[mode])
        opt.step()  # compile and create state outside the timing
        setups[mode] = opt
    times = {mode: [] for mode in setups}
    for _ in range(repeats):
        for mode, opt in setups.items():
            start = time.perf_counter()
            opt.step()
            times[mode].append(time.perf_counter() - start)
    return {mode: statistics.median(t) for mode, t in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", help="write the runs here")
    parser.add_argument("--speed", action="store_true", help="time the fused step of each mode instead")
    args = parser.parse_args(argv)
    if args.speed:
        times = step_times()
        print(f"fused AdamW step, {1 << 22:,} weights in 8 tensors, {torch.get_num_threads()} threads, "
              "median of 30:")
        for mode, t in times.items():
            print(f"{mode:<11} {1e3 * t:8.2f} ms  {t / times['nearest']:.2f}× nearest")
        return 0
    jobs = [(mode, seed, args.steps, args.lr) for seed in range(args.seeds) for mode in MODES]
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(train, *zip(*jobs)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f, indent=1)
    print(f"charlm, AdamW lr {args.lr:g} (warmup + cosine), {args.steps} steps, {args.seeds} seeds; "
          f"bf16 forward and backward in every mode")
    base = statistics.median(r["val_loss"] for r in runs if r["mode"] == "master")
    master = {r["seed"]: r["val_loss"] for r in runs if r["mode"] == "master"}
    print(f"{'mode':<11} {'val loss (median)':>18} {'min..max':>15} {'vs master':>10} {'per seed':>22} "
          f"{'rounded away':>13}")
    for mode in MODES:
        mine = sorted((r for r in runs if r["mode"] == mode), key=lambda r: r["seed"])
        losses = [r["val_loss"] for r in mine]
        med = statistics.median(losses)
        away = statistics.median(r["rounded_away"] for r in mine)
        paired = " ".join(f"{100 * (r['val_loss'] / master[r['seed']] - 1):+.2f}%" for r in mine)
        print(f"{mode:<11} {med:>18.4f} {min(losses):>7.4f}..{max(losses):<7.4f} "
              f"{100 * (med / base - 1):>+9.2f}% {paired:>22} {100 * away:>12.1f}%")
    print("vs master: median over seeds against the master run's median; per seed: each seed against the "
          "master run of the same seed (same data, same initial weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
