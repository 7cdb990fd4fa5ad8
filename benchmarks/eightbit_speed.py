"""8-bit AdamW's step time against fp32 AdamW's, on the fused path, interleaved.

    python benchmarks/eightbit_speed.py                    # 25 M fp32 parameters in 10 tensors, CPU
    python benchmarks/eightbit_speed.py --total 4e6 --count 200 --reps 30
    python benchmarks/eightbit_speed.py --device cuda      # the Triton kernels on a GPU

An elementwise step is bound by memory traffic: fp32 AdamW moves 28 bytes per parameter (read θ, g, m,
v; write θ, m, v), 8-bit AdamW 18 (θ and g as before, one byte each way for m and v, and a float32 absmax
per 256 elements), so the target is ≤ 0.8× fp32 AdamW's time (18/28 = 0.64 if bandwidth were all).
The 8-bit kernel also decodes (byte-table permutes on AVX-512, a gathered table on a GPU) and encodes
(the decade of |q| and its bucket, by arithmetic) each state; this measures whether that stays hidden
under the memory traffic.

The fused path is the C kernel on the CPU and the Triton kernels on CUDA (`--device cuda`), where the
8-bit kernel reads and writes the codes itself; a GPU's steps are timed with CUDA events, synchronised
around each timed step, and also replayed from CUDA graphs (capturable=True; the kernels without the
host's per-step work, which on a fast GPU can outlast them). Candidates are interleaved within each
repetition (machine load hits them alike); medians reported. On the CPU the tensor and foreach 8-bit
paths (decode, step, encode in torch ops) and bitsandbytes' AdamW8bit (its CPU update, if installed)
are shown for reference (`--slow`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import optimlab


def make(total: int, count: int, device: torch.device, seed: int = 0) -> tuple[list, list]:
    g = torch.Generator().manual_seed(seed)
    sizes = [total // count] * count
    params = [torch.randn(n, generator=g).to(device).requires_grad_() for n in sizes]
    grads = [(torch.randn(n, generator=g) * 1e-2).to(device) for n in sizes]
    return params, grads


# On a GPU: fp32 and 8-bit AdamW with capturable=True, each step replayed from a CUDA graph.
GRAPHS = ("adamw graph (fp32 state)", "adamw8bit graph")


def candidates(total: int, count: int, slow: bool, device: torch.device) -> tuple[dict, str, str]:
    """The optimizers to time, and the labels of the baseline and of the 8-bit fused step."""
    out = {}

    def add(label, build):
        params, grads = make(total, count, device)
        for p, grad in zip(params, grads):
            p.grad = grad
        out[label] = build(params)

    fused = "triton" if device.type == "cuda" else "fused"
    base, eight = f"adamw {fused} (fp32 state)", f"adamw8bit {fused}"
    add(base, lambda ps: optimlab.create("adamw", ps, path=fused))
    add(eight, lambda ps: optimlab.create("adamw8bit", ps, path=fused))
    add("torch AdamW fused", lambda ps: torch.optim.AdamW(ps, fused=True))
    if device.type == "cuda":  # the kernels alone: capturable steps replayed from CUDA graphs
        from step_speed import captured

        add(GRAPHS[0], lambda ps: captured(optimlab.create("adamw", ps, capturable=True)))
        add(GRAPHS[1], lambda ps: captured(optimlab.create("adamw8bit", ps, capturable=True)))
    if slow:
        add("adamw8bit foreach", lambda ps: optimlab.create("adamw8bit", ps, path="foreach"))
        if device.type == "cpu":
            add("adamw8bit tensor", lambda ps: optimlab.create("adamw8bit", ps, path="tensor"))
        try:
            import bitsandbytes as bnb
        except ImportError:
            pass
        else:
            add(f"bitsandbytes AdamW8bit ({device.type})", lambda ps: bnb.optim.AdamW8bit(ps))
    return out, base, eight


def timed_step(opt, device: torch.device) -> float:
    """One step's seconds: wall time on the CPU; on a GPU, CUDA events around it, the queue drained."""
    if device.type != "cuda":
        start = time.perf_counter()
        opt.step()
        return time.perf_counter() - start
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    opt.step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=float, default=25e6, help="parameters in all (default 25e6)")
    parser.add_argument("--count", type=int, default=10, help="tensors (default 10)")
    parser.add_argument("--reps", type=int, default=None, help="interleaved steps (default 20; cuda 30)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1; cuda 3)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the tensors live")
    parser.add_argument("--slow", action="store_true", help="also the tensor/foreach paths and bitsandbytes")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("eightbit_speed.py: --device cuda needs a CUDA device; there is none here "
              "(torch.cuda.is_available() is False)", file=sys.stderr)
        sys.exit(2)
    reps = args.reps or (30 if device.type == "cuda" else 20)
    total = int(args.total)
    opts, base_label, eight_label = candidates(total, args.count, args.slow, device)
    warmup = args.warmup if args.warmup is not None else (3 if device.type == "cuda" else 1)
    for _ in range(warmup):  # compile kernels, create state, settle clocks
        for opt in opts.values():
            opt.step()
    times: dict[str, list[float]] = {label: [] for label in opts}
    for _ in range(reps):
        for label, opt in opts.items():
            times[label].append(timed_step(opt, device))
    base = statistics.median(times[base_label])
    where = (torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} threads")
    print(f"{total:,} fp32 parameters in {args.count} tensors, {where}, median of {reps} interleaved steps; "
          f"against {base_label}")
    for label, ts in times.items():
        median = statistics.median(ts)
        print(f"  {label:<34} {median * 1e3:9.3f} ms   {median / base:5.2f}× fp32 AdamW")
    ratio = statistics.median(times[eight_label]) / base
    state = sum(t.nbytes for s in opts[eight_label].state.values() for t in s.values()
                if isinstance(t, torch.Tensor))
    print(f"8-bit state: {state / total:.3f} bytes per parameter; {eight_label} step {ratio:.2f}× fp32 "
          f"AdamW's (target ≤ 0.80: {'met' if ratio <= 0.8 else 'missed'})")
    if device.type == "cuda":
        kernels = statistics.median(times[GRAPHS[1]]) / statistics.median(times[GRAPHS[0]])
        print(f"replayed from CUDA graphs (the kernels without the host's per-step work): 8-bit "
              f"{kernels:.2f}× fp32 AdamW's (target ≤ 0.80: {'met' if kernels <= 0.8 else 'missed'})")


if __name__ == "__main__":
    main()
