"""8-bit AdamW's step time against fp32 AdamW's, on the fused path, interleaved.

    python benchmarks/eightbit_speed.py                    # 25 M fp32 parameters in 10 tensors
    python benchmarks/eightbit_speed.py --total 4e6 --count 200 --reps 30

An elementwise step is bound by memory traffic: fp32 AdamW moves 28 bytes per parameter (read θ, g, m,
v; write θ, m, v), 8-bit AdamW 18 (θ and g as before, one byte each way for m and v, and a float32 absmax
per 256 elements), so the target is ≤ 0.8× fp32 AdamW's time (18/28 = 0.64 if bandwidth were all).
The 8-bit kernel also decodes (a table lookup) and encodes (a 64 KiB table lookup and one comparison)
each state; this measures whether that stays hidden under the memory traffic.

Candidates are interleaved within each repetition (machine load hits them alike); medians reported.
The tensor and foreach 8-bit paths (decode, step, encode in torch ops) and bitsandbytes' AdamW8bit (its
CPU update, if installed) are shown for reference.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import optimlab


def make(total: int, count: int, seed: int = 0) -> tuple[list, list]:
    g = torch.Generator().manual_seed(seed)
    sizes = [total // count] * count
    params = [torch.randn(n, generator=g).requires_grad_() for n in sizes]
    grads = [torch.randn(n, generator=g) * 1e-2 for n in sizes]
    return params, grads


def candidates(total: int, count: int, slow: bool) -> dict:
    out = {}

    def add(label, build):
        params, grads = make(total, count)
        for p, grad in zip(params, grads):
            p.grad = grad
        out[label] = build(params)

    add("adamw fused (fp32 state)", lambda ps: optimlab.create("adamw", ps, path="fused"))
    add("adamw8bit fused", lambda ps: optimlab.create("adamw8bit", ps, path="fused"))
    add("torch AdamW fused", lambda ps: torch.optim.AdamW(ps, fused=True))
    if slow:
        add("adamw8bit foreach", lambda ps: optimlab.create("adamw8bit", ps, path="foreach"))
        add("adamw8bit tensor", lambda ps: optimlab.create("adamw8bit", ps, path="tensor"))
        try:
            import bitsandbytes as bnb
        except ImportError:
            pass
        else:
            add("bitsandbytes AdamW8bit (CPU)", lambda ps: bnb.optim.AdamW8bit(ps))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=float, default=25e6, help="parameters in all (default 25e6)")
    parser.add_argument("--count", type=int, default=10, help="tensors (default 10)")
    parser.add_argument("--reps", type=int, default=20, help="interleaved repetitions (default 20)")
    parser.add_argument("--slow", action="store_true", help="also the tensor/foreach paths and bitsandbytes")
    args = parser.parse_args()
    total = int(args.total)
    opts = candidates(total, args.count, args.slow)
    for opt in opts.values():  # warm up: compile kernels, create state
        opt.step()
    times: dict[str, list[float]] = {label: [] for label in opts}
    for _ in range(args.reps):
        for label, opt in opts.items():
            start = time.perf_counter()
            opt.step()
            times[label].append(time.perf_counter() - start)
    base = statistics.median(times["adamw fused (fp32 state)"])
    print(f"{total:,} fp32 parameters in {args.count} tensors, {torch.get_num_threads()} threads, "
          f"median of {args.reps} interleaved steps")
    for label, ts in times.items():
        median = statistics.median(ts)
        print(f"  {label:<30} {median * 1e3:9.2f} ms   {median / base:5.2f}× fp32 AdamW (fused)")
    ratio = statistics.median(times["adamw8bit fused"]) / base
    state = sum(t.nbytes for s in opts["adamw8bit fused"].state.values() for t in s.values()
                if isinstance(t, torch.Tensor))
    print(f"8-bit state: {state / total:.3f} bytes per parameter; fused step {ratio:.2f}× fp32 AdamW's "
          f"(target ≤ 0.80: {'met' if ratio <= 0.8 else 'missed'})")


if __name__ == "__main__":
    main()
