"""8-bit AdamW's final validation loss against fp32 AdamW's, seed by seed (paired), with the noise floor.

    python benchmarks/eightbit_quality.py                          # digits, 16 paired seeds (2-4 min)
    python benchmarks/eightbit_quality.py --task charlm --seeds 4  # ~20 s per seed
    python benchmarks/eightbit_quality.py --ablations              # + which state or tensor matters (~6 min)
    python benchmarks/eightbit_quality.py --seeds 1000 --jobs 2 --no-other-path   # resolves ±2 % (~10 min)

The recipe is the claim's (claim_checks/eightbit.py): AdamW's best lr of the shared grid for the task,
5% warmup + cosine, weight decay 0.1, the same lr for both. Each seed builds the same model, split and
batches for every optimizer, so the per-seed ratio 8-bit / fp32 compares like with like.

What sets the resolution: "8-bit (other path)" is 8-bit AdamW itself on the foreach path (decode, step,
encode in torch ops) against the fused C kernel: the same method, differing in float rounding only. If
8-bit vs fp32 scatters no more than 8-bit vs itself, the final loss cannot tell them apart.

Also printed per run: the largest single-step parameter change divided by the peak lr. Adam's update
|m̂/(√v̂+ε)| stays near 1; a value in the tens is the zero point of v's map (Li et al. 2023, "Memory
Efficient Optimizers with 4-bit States"): a v below ~1.6e-7 of its block's absmax is coded 0 while m is
not, and the step is m̂/ε. `--ablations` adds adamw8bit's option v_without_zero=True (v's lowest code
decodes to 1e-7 of the absmax instead of 0), with the default min_8bit_size and with every tensor coded.

Each run takes one thread (torch.set_num_threads(1)); `--jobs N` runs N seeds at a time in N processes,
which changes no figure: they are losses, not times.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import math
import random
import statistics

import torch

import optimlab
import optimlab.tasks
from optimlab.engine import codec
from optimlab.lab.claim_checks.frontier import warmup_cosine

# AdamW's best lr of the shared grid (1e-3 … 1e-1) with the claim's recipe, as the claim finds it
BEST_LR = {"digits": 3e-2, "charlm": 1e-2}
STEPS = {"digits": 400, "charlm": 200}
MARGIN = 1.02


def run(task: str, make, lr: float, steps: int, seed: int) -> dict:
    """One run of the claim's recipe; the final validation and training loss, and the largest step."""
    problem = optimlab.tasks.get(task).build(seed=seed)
    params = list(problem.model.parameters())
    opt = make(params, lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps))
    largest = 0.0
    for step in range(steps):
        before = [p.detach().clone() for p in params]
        opt.zero_grad()
        problem.loss(step).backward()
        opt.step()
        schedule.step()
        change = max(float((p.detach() - b).abs().max()) for p, b in zip(params, before))
        largest = max(largest, change if math.isfinite(change) else math.inf)
    final = problem.evaluate()
    return {"val": final["val_loss"], "train": final["train_loss"], "largest_step": largest / lr}


# --- the optimizers compared ----------------------------------------------------------------------------


def plain(name: str, **options):
    return lambda params, lr: optimlab.create(name, params, lr=lr, weight_decay=0.1, **options)


def of_class(cls, **options):
    return lambda params, lr: cls(params, lr=lr, weight_decay=0.1, **options)


def with_fp32(index: int):
    """8-bit AdamW with tensor `index` kept in fp32 (its group's min_8bit_size above its size)."""
    def make(params, lr):
        groups = [{"params": [p], **({"min_8bit_size": p.numel() + 1} if i == index else {})}
                  for i, p in enumerate(params)]
        return optimlab.create("adamw8bit", groups, lr=lr, weight_decay=0.1)
    return make


def coded(name: str, codecs: dict):
    return type(name, (optimlab.spec("adamw8bit").cls,), {"codecs": codecs})


def ablations(task: str) -> dict:
    params = list(optimlab.tasks.get(task).build(seed=0).model.parameters())
    big = [i for i, p in enumerate(params) if p.numel() >= 4096]
    out = {"m coded only": of_class(coded("M8bit", {"m": codec.SIGNED})),
           "v coded only": of_class(coded("V8bit", {"v": codec.UNSIGNED})),
           **{f"tensor {i} {tuple(params[i].shape)} fp32": with_fp32(i) for i in big},
           "min_8bit_size=0": plain("adamw8bit", min_8bit_size=0),
           "v_without_zero=True": plain("adamw8bit", v_without_zero=True),
           "v_without_zero=True, min_8bit_size=0": plain("adamw8bit", v_without_zero=True, min_8bit_size=0)}
    return out


# --- statistics: paired, on the log of the ratio (a loss ratio is multiplicative) -------------------------


def paired(ours: list[float], base: list[float], rng: random.Random) -> dict:
    finite = [(a, b) for a, b in zip(ours, base) if math.isfinite(a) and math.isfinite(b)]
    logs = [math.log(a / b) for a, b in finite]
    boot = sorted(statistics.fmean(rng.choices(logs, k=len(logs))) for _ in range(4000))
    mean = statistics.fmean(logs)
    flips = sum(abs(statistics.fmean([x * rng.choice((-1, 1)) for x in logs])) >= abs(mean) - 1e-12
                for _ in range(4000))
    return {"geomean": math.exp(mean), "low": math.exp(boot[100]), "high": math.exp(boot[3899]),
            "p": flips / 4000, "nonfinite": len(ours) - len(finite),
            "ratio_of_medians": statistics.median(ours) / statistics.median(base),
            "median_ratio": statistics.median(a / b for a, b in finite)}


def three_seed(ours: list[float], base: list[float], rng: random.Random) -> float:
    """How often the claim's statistic (ratio of the medians of 3 paired seeds) exceeds the margin, over
    draws of 3 of these seeds."""
    seeds = range(len(ours))
    over = 0
    for _ in range(4000):
        pick = rng.sample(seeds, 3)
        over += statistics.median(ours[i] for i in pick) / statistics.median(base[i] for i in pick) > MARGIN
    return over / 4000


def summary(label: str, ours: list[float], base: list[float], rng: random.Random) -> str:
    s = paired(ours, base, rng)
    bad = f", {s['nonfinite']} non-finite" if s["nonfinite"] else ""
    return (f"{label:44s} geomean {s['geomean']:.3f} (95% CI {s['low']:.3f}-{s['high']:.3f}), sign-flip "
            f"p {s['p']:.2f}; median of ratios {s['median_ratio']:.3f}; ratio of medians "
            f"{s['ratio_of_medians']:.3f}; 3-seed statistic > {MARGIN} in {three_seed(ours, base, rng):.0%} "
            f"of draws{bad}")


@functools.cache  # once per process: the ablations build the task's model
def compared(task: str, other_path: bool, with_ablations: bool) -> tuple[dict, dict]:
    """The main rows (fp32, 8-bit, and 8-bit on the other path) and the ablations asked for."""
    rows = {"fp32": plain("adamw"), "8-bit": plain("adamw8bit")}
    if other_path:
        rows["8-bit (other path)"] = plain("adamw8bit", path="foreach")
    return rows, ablations(task) if with_ablations else {}


def one_seed(task: str, lr: float, steps: int, other_path: bool, with_ablations: bool, seed: int) -> dict:
    """Every row's run for one seed (in a worker process: the rows are made there, lambdas do not pickle)."""
    torch.set_num_threads(1)
    main_rows, extra = compared(task, other_path, with_ablations)
    return {label: run(task, make, lr, steps, seed) for label, make in {**main_rows, **extra}.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="digits", choices=sorted(BEST_LR))
    parser.add_argument("--seeds", type=int, default=16, help="paired seeds 0 … N-1 (default 16)")
    parser.add_argument("--lr", type=float, help="default: AdamW's best of the shared grid for the task")
    parser.add_argument("--steps", type=int, help="default: the claim's (digits 400, charlm 200)")
    parser.add_argument("--ablations", action="store_true", help="also: m or v coded alone, each coded "
                        "tensor fp32 in turn, min_8bit_size=0, and the option v_without_zero=True")
    parser.add_argument("--no-other-path", action="store_true", help="leave out 8-bit AdamW on the foreach "
                        "path (the noise floor row, the slowest): for many seeds")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once, each in its own process")
    args = parser.parse_args()
    if args.seeds < 3:
        parser.error("--seeds must be at least 3")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    torch.set_num_threads(1)
    lr, steps = args.lr or BEST_LR[args.task], args.steps or STEPS[args.task]
    main_rows, extra = compared(args.task, not args.no_other_path, args.ablations)
    results: dict[str, list[dict]] = {k: [] for k in {**main_rows, **extra}}
    print(f"{args.task}: {steps} steps, lr {lr:g}, 5% warmup + cosine, weight decay 0.1; final val loss")
    print(f"{'seed':>4} {'fp32':>8} {'8-bit':>8} {'ratio':>6} {'8-bit other path':>17} {'vs 8-bit':>8}"
          f"   largest step / lr: fp32, 8-bit")
    task_seed = functools.partial(one_seed, args.task, lr, steps, not args.no_other_path, args.ablations)
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        for seed, rows in enumerate(pool.map(task_seed, range(args.seeds))):
            for label, result in rows.items():
                results[label].append(result)
            f, e = rows["fp32"], rows["8-bit"]
            o = rows.get("8-bit (other path)", {"val": math.nan})
            print(f"{seed:4d} {f['val']:8.4f} {e['val']:8.4f} {e['val'] / f['val']:6.3f} {o['val']:17.4f} "
                  f"{o['val'] / e['val']:8.3f}   {f['largest_step']:8.2f} {e['largest_step']:8.2f}",
                  flush=True)
    rng = random.Random(0)
    val = {k: [r["val"] for r in rs] for k, rs in results.items()}
    fp32 = val["fp32"]
    print(f"\nfp32 final val loss over {args.seeds} seeds: {min(fp32):.3f}-{max(fp32):.3f} (median "
          f"{statistics.median(fp32):.3f}); 8-bit: median {statistics.median(val['8-bit']):.3f}")
    print("paired, per-seed ratio of final validation losses (log scale; bootstrap CI over seeds):")
    print(summary("8-bit / fp32", val["8-bit"], fp32, rng))
    if "8-bit (other path)" in val:
        print(summary("8-bit other path / 8-bit (noise)", val["8-bit (other path)"], val["8-bit"], rng))
    train = {k: [r["train"] for r in rs] for k, rs in results.items()}
    print(summary("training loss, 8-bit / fp32", train["8-bit"], train["fp32"], rng))
    for label in extra:
        print(summary(label + " / fp32", val[label], fp32, rng))
    print("\nlargest single-step change / lr (median over seeds, largest; Adam's update is ~1 or below):")
    for label, rs in results.items():
        steps_seen = [r["largest_step"] for r in rs]
        print(f"  {label:44s} {statistics.median(steps_seen):10.3g} {max(steps_seen):10.3g}")


if __name__ == "__main__":
    main()
