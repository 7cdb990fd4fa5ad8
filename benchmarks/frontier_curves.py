"""Validation-loss curves behind the frontier claims, at each optimizer's best lr from the claims' grid.

    python benchmarks/frontier_curves.py                  # writes docs/frontier.png (about a minute)

charlm, 200 steps, one seed: AdamW and Sophia-G with 5% warmup + cosine, schedule-free AdamW at a
constant lr with no warmup (evaluated at x), exactly as `optimlab claims sophia-2x-faster
schedulefree-no-schedule` runs them.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from optimlab.lab.claim_checks.frontier import curve  # noqa: E402
from optimlab.lab.common import single_thread  # noqa: E402

RUNS = [("adamw", 1e-2, True, "AdamW, warmup + cosine, lr 0.01"),
        ("sophia", 3e-3, True, "Sophia-G, warmup + cosine, lr 0.003"),
        ("schedulefree_adamw", 1e-2, False, "schedule-free AdamW, constant lr 0.01")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/frontier.png")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4))
    with single_thread():
        for name, lr, schedule, label in RUNS:
            points = curve("charlm", name, lr, args.steps, max(1, args.steps // 20), schedule)["points"]
            ax.plot(*zip(*points), marker=".", label=label)
            print(f"{label}: final validation loss {points[-1][1]:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (charlm)")
    ax.set_ylim(top=3.2)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
