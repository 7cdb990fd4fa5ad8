"""Muon, Shampoo and SOAP step time against their peers, and Newton–Schulz against torch.matmul.

    python benchmarks/matrix_speed.py                # d = 128, 2 blocks: a minute or two on 2 quiet cores
    python benchmarks/matrix_speed.py --d 256 --blocks 4 --every 10 --rounds 5 --json out.json

The parameters are a transformer's hidden matrices (per block: qkv (3d, d), proj (d, d), fc1 (4d, d),
fc2 (d, 4d)), fp32. Candidates step the same parameters and gradients (each its own copy of both, so
that an optimizer that changes p.grad in place cannot change another's input); each round times every
candidate over one whole refresh period (`--every` steps, so each period holds exactly one
preconditioner refresh), candidates interleaved, so load drifts hit all alike; medians are reported.

* Muon (ns_dtype bf16, as the reference) against torch.optim.Muon;
* Shampoo against pytorch-optimizer's Shampoo (roots every `--every` steps, float32 SVD) and
  ScalableShampoo (the practical form: RMSProp grafting, blocks, start step; roots by a coupled
  Schur–Newton iteration), at the same refresh frequency; optimlab's roots by an eigendecomposition
  (eigh), in float32 as theirs, and in its default float64 beside;
* SOAP against pytorch-optimizer's SOAP, precondition_frequency = `--every`;
* the achieved GFLOP/s of optimlab's Newton–Schulz (one batched call per shape) against torch.matmul
  on the same shapes and dtype (the Gram product X Xᵀ, the iteration's biggest matmul), best of the
  repeats for both.

Targets (issue #10): Muon ≤ 0.8× torch.optim.Muon; Shampoo and SOAP ≤ 0.5× pytorch-optimizer's;
Newton–Schulz ≥ 70 % of the measured matmul rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from types import SimpleNamespace

import torch

import optimlab
from optimlab.optimizers.muon import newton_schulz


def layout(d: int, blocks: int) -> list[tuple[int, int]]:
    return [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)] * blocks


def candidates(every: int) -> dict[str, tuple]:
    """name -> (what it is compared with, factory(params))."""
    import pytorch_optimizer as po

    return {
        "optimlab muon": ("muon", lambda ps: optimlab.create("muon", ps, lr=0.02)),
        "torch.optim.Muon": ("muon", lambda ps: torch.optim.Muon(ps, lr=0.02)),
        "optimlab shampoo": ("shampoo", lambda ps: optimlab.create(  # float32 roots, as the peers
            "shampoo", ps, precondition_frequency=every, start_preconditioning_step=every,
            root_dtype=torch.float32)),
        "optimlab shampoo, float64 roots": ("shampoo", lambda ps: optimlab.create(
            "shampoo", ps, precondition_frequency=every, start_preconditioning_step=every)),
        "pytorch-optimizer Shampoo": ("shampoo",
                                      lambda ps: po.Shampoo(ps, preconditioning_compute_steps=every)),
        "pytorch-optimizer ScalableShampoo": ("shampoo", lambda ps: po.ScalableShampoo(
            ps, start_preconditioning_step=every, preconditioning_compute_steps=every, block_size=1024)),
        "optimlab soap": ("soap", lambda ps: optimlab.create("soap", ps, precondition_frequency=every)),
        "pytorch-optimizer SOAP": ("soap", lambda ps: po.SOAP(ps, precondition_frequency=every)),
    }


def time_period(opt, params, grads, steps: int) -> tuple[float, float]:
    """Wall and CPU seconds per step over `steps` steps (one refresh period). CPU time (all threads of
    this process) counts the work done, not the waiting, so it is the steadier figure on a loaded machine."""
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
    return (time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps


def newton_schulz_rate(shapes, repeats: int) -> list[dict]:
    """GFLOP/s of one batched Newton–Schulz call per shape, and of torch.matmul's X Xᵀ on that shape."""
    h = SimpleNamespace(ns_coefficients=(3.4445, -4.775, 2.0315), ns_steps=5, eps=1e-7,
                        ns_dtype=torch.bfloat16)
    rows = []
    for shape in sorted(set(shapes)):
        k = shapes.count(shape)
        G = torch.randn(k, *shape)
        m, n = min(shape), max(shape)
        flops = k * h.ns_steps * (2 * m * m * n * 2 + 2 * m**3)  # XXᵀ, A·A, B·X
        X = torch.randn(k, m, n, dtype=torch.bfloat16)
        ns, mm = [], []
        for _ in range(repeats):  # interleaved
            start = time.perf_counter()
            newton_schulz(G, h)
            ns.append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(h.ns_steps):
                X @ X.mT
            mm.append((time.perf_counter() - start) / h.ns_steps)
        ns_rate = flops / min(ns) / 1e9  # the best of the repeats: what the machine can do, load aside
        mm_rate = k * 2 * m * m * n / min(mm) / 1e9
        rows.append({"shape": shape, "count": k, "newton_schulz_gflops": ns_rate, "matmul_gflops": mm_rate,
                     "fraction": ns_rate / mm_rate})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=int, default=128, help="model width (default 128)")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--every", type=int, default=5, help="preconditioner refresh period (default 5)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated substrings of candidate names")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # 1: no idle-thread waits on a loaded machine; CPU time = work
    shapes = layout(args.d, args.blocks)
    g = torch.Generator().manual_seed(0)
    start_params = [torch.randn(s, generator=g) * 0.02 for s in shapes]
    grads = [torch.randn(s, generator=g) for s in shapes]
    chosen = {k: v for k, v in candidates(args.every).items()
              if not args.only or any(w in k for w in args.only.split(","))}
    runs = {}
    print(f"warming up {len(chosen)} optimizers ({args.every} steps each)", file=sys.stderr, flush=True)
    for name, (_, make) in chosen.items():  # warm up: state, the first refresh, SOAP's first step
        params, own_grads = [p.clone().requires_grad_() for p in start_params], [g.clone() for g in grads]
        runs[name] = (make(params), params, own_grads)
        time_period(runs[name][0], params, own_grads, args.every)
    times = {name: [] for name in chosen}
    cpu_times = {name: [] for name in chosen}
    for r in range(args.rounds):
        for name, (opt, params, own_grads) in runs.items():
            wall, cpu = time_period(opt, params, own_grads, args.every)
            times[name].append(wall)
            cpu_times[name].append(cpu)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1] * 1e3:.0f}" for k, v in times.items())
              + " ms/step", file=sys.stderr, flush=True)
    median = {name: statistics.median(t) for name, t in times.items()}
    cpu_median = {name: statistics.median(t) for name, t in cpu_times.items()}
    print(f"{len(shapes)} matrices, {sum(torch.Size(s).numel() for s in shapes) / 1e6:.2f} M parameters "
          f"(d = {args.d}, {args.blocks} blocks), fp32, {torch.get_num_threads()} threads, refresh every "
          f"{args.every} steps, median of {args.rounds} rounds of {args.every} steps\n")
    print(f"{'optimizer':<36} {'ms/step':>9} {'vs optimlab':>12} {'CPU ms/step':>12} {'vs optimlab':>12}")
    for name, t in median.items():
        family = chosen[name][0]
        peer = not name.startswith("optimlab")
        ours, ours_cpu = median.get(f"optimlab {family}"), cpu_median.get(f"optimlab {family}")
        ratio = f"{ours / t:>11.2f}×" if ours and peer else ""  # Shampoo: against fp32 roots, as theirs
        cpu_ratio = f"{ours_cpu / cpu_median[name]:>11.2f}×" if ours_cpu and peer else ""
        print(f"{name:<36} {t * 1e3:>9.1f} {ratio:>12} {cpu_median[name] * 1e3:>12.1f} {cpu_ratio:>12}")
    print("\n(vs optimlab: optimlab's time / the peer's; targets ≤ 0.8 for Muon, ≤ 0.5 for Shampoo and SOAP)")
    if any(family == "shampoo" for family, _ in chosen.values()):
        print("(Shampoo's inverse roots: optimlab by eigh; pytorch-optimizer Shampoo by SVD, "
              "ScalableShampoo by a coupled Schur–Newton iteration)")
    rates = newton_schulz_rate(shapes, repeats=max(3, args.rounds))
    print(f"\n{'Newton–Schulz (bf16), shape × count':<36} {'GFLOP/s':>9} {'matmul':>9} {'fraction':>9}")
    for r in rates:
        label = f"{r['shape'][0]}×{r['shape'][1]} × {r['count']}"
        rates_text = f"{r['newton_schulz_gflops']:>9.1f} {r['matmul_gflops']:>9.1f} {r['fraction']:>9.0%}"
        print(f"{label:<36} {rates_text}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "ms_per_step": {k: v * 1e3 for k, v in median.items()},
                       "cpu_ms_per_step": {k: v * 1e3 for k, v in cpu_median.items()},
                       "rounds_ms": {k: [x * 1e3 for x in v] for k, v in times.items()},
                       "newton_schulz": rates}, f, indent=1)


if __name__ == "__main__":
    main()
