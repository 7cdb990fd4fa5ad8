"""What a bench writes: DIR/report.md (tables and their reading), DIR/profile.png, DIR/curves.png.

Everything in the report except the seconds columns depends only on the seeds, so an interrupted and
resumed bench writes the same report (`timings=False` leaves the seconds out, for comparing two).
"""

from __future__ import annotations

import dataclasses
import math

from ..common import fmt
from .scoring import INF, median_spread, profile

TAUS = [1 + k * 0.05 for k in range(81)]  # τ from 1 to 5, for the picture
READ_AT = (1.0, 2.0, INF)  # the τ the tables quote


@dataclasses.dataclass
class Row:
    """One (task, optimizer, default-or-tuned) cell: the runs over seeds."""
    hyper: dict
    records: list[dict]

    def steps(self) -> list[float]:
        return [INF if r["steps_to_target"] is None else r["steps_to_target"] for r in self.records]

    def seconds(self) -> list[float]:
        return [INF if r["seconds_to_target"] is None else r["seconds_to_target"] for r in self.records]

    def finals(self, goal: str) -> list[float]:
        bad = -INF if goal == "max" else INF
        return [bad if r["final"] is None else r["final"] for r in self.records]

    def failures(self) -> str:
        diverged = sum(r["status"] == "diverged" for r in self.records)
        errors = sum(r["status"] == "error" for r in self.records)
        return ", ".join(part for part in (f"{diverged} diverged" if diverged else "",
                                           f"{errors} error" if errors else "") if part) or "–"


def rows(result) -> dict[tuple[str, str, str], Row]:
    """(task, optimizer, 'default' | 'tuned') → Row, from the records of this plan only."""
    from . import key, tuned_setting

    plan, done = result.plan, result.records
    out = {}
    for task in plan.tasks:
        for text in plan.optimizers:
            chosen = tuned_setting(plan, task, text, done)
            for kind, hyper in (("default", {}), ("tuned", chosen)):
                runs = [done[key(task, text, hyper, s)] for s in range(plan.seeds)]
                out[task.name, text, kind] = Row(hyper, runs)
    return out


def times(result, table: dict, kind: str, what: str) -> dict[str, dict[str, float]]:
    """times[optimizer][task]: the median over seeds of steps (or seconds) to target; a miss is inf."""
    return {o: {t.name: median_spread(getattr(table[t.name, o, kind], what)())[0] for t in result.plan.tasks}
            for o in result.plan.optimizers}


def spread(values: list[float], digits: int = 3) -> str:
    med, lo, hi = median_spread(values)
    if not math.isfinite(med):
        hits = sum(math.isfinite(v) for v in values)
        return "miss" + (f" ({hits}/{len(values)} hit)" if hits else "")
    text = fmt(med, digits)
    return text if lo == hi else f"{text} [{fmt(lo, digits)}–{'miss' if math.isinf(hi) else fmt(hi, digits)}]"


def setting(hyper: dict) -> str:
    parts = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in hyper.items()]
    return ", ".join(parts) or "default"


def edge(plan, task, text: str, hyper: dict) -> str:
    """' ↑' or ' ↓' when the chosen lr is the grid's largest or smallest: the best lr may lie beyond it."""
    lrs = [t.get("lr", plan.defaults(text).get("lr")) for t in plan.trials(task, text)]
    lrs = [lr for lr in lrs if isinstance(lr, (int, float))]
    if len(set(lrs)) < 3:
        return ""
    lr = hyper.get("lr", plan.defaults(text).get("lr"))
    return " ↑" if lr == max(lrs) else " ↓" if lr == min(lrs) else ""


def write_report(result, pictures: bool = True, timings: bool = True) -> str:
    text = report_text(result, timings=timings)
    (result.out / "report.md").write_text(text)
    if pictures:
        table = rows(result)
        plot_profile(result, table, result.out / "profile.png")
        plot_curves(result, table, result.out / "curves.png")
    return text


def report_text(result, timings: bool = True) -> str:
    plan, table = result.plan, rows(result)
    steps_t, steps_d = times(result, table, "tuned", "steps"), times(result, table, "default", "steps")
    rho_t, rho_d = profile(steps_t, READ_AT), profile(steps_d, READ_AT)
    lines = [f"# optimlab bench{' (quick)' if plan.quick else ''}", "",
             f"{len(plan.optimizers)} optimizers × {len(plan.tasks)} tasks; tuning budget {plan.budget} "
             f"trials per optimizer and task on seed 0; {plan.seeds} seed(s) per reported setting. Times to "
             "target are medians over seeds [min–max]; a miss is ∞ (shown as 'miss'). Steps are exact; "
             "seconds are training time only, on a machine whose load the numbers carry.", "",
             "## Overview", "",
             "ρ(τ) is the fraction of tasks on which an optimizer reaches the target within τ × the fastest "
             "optimizer's steps (tuned runs); 'solved' counts the tasks it reaches at all.", "",
             "| optimizer | solved (default) | solved (tuned) | ρ(1) | ρ(2) | failed runs |",
             "|---|---|---|---|---|---|"]
    order = sorted(plan.optimizers, key=lambda o: (-rho_t[o][2], -rho_t[o][1], -rho_t[o][0], o))
    n = len(plan.tasks)
    for o in order:
        failed = sum(r["status"] != "ok" for t in plan.tasks for k in ("default", "tuned")
                     for r in table[t.name, o, k].records)
        lines.append(f"| {o} | {round(rho_d[o][2] * n)}/{n} | {round(rho_t[o][2] * n)}/{n} "
                     f"| {rho_t[o][0]:.2f} | {rho_t[o][1]:.2f} | {failed or '–'} |")
    lines += ["", "## Reading", "", *reading(result, table, steps_t, steps_d), "",
              "In the tables below, rows are sorted by tuned steps to target. ↑ / ↓ after a tuned setting: "
              "its lr is the largest / smallest of the grid, so a better one may lie beyond it.", ""]
    for task in plan.tasks:
        arrow = "≥" if task.goal == "max" else "≤"
        lines += [f"## {task.name}: {task.metric} {arrow} {task.target:g} within {task.steps} steps", "",
                  f"Target: {task.why}. Evaluated every {task.eval_every} steps.", "",
                  "| optimizer | default: steps | default: final | tuned setting | tuned: steps | "
                  + ("tuned: seconds | " if timings else "") + "tuned: final | failures |",
                  "|---|---|---|---|---|" + ("---|" if timings else "") + "---|---|"]
        cells = {o: (table[task.name, o, "default"], table[task.name, o, "tuned"]) for o in plan.optimizers}
        for o in sorted(plan.optimizers, key=lambda o: (median_spread(cells[o][1].steps())[0],
                                                        _worse_first(task, cells[o][1]), o)):
            d, t = cells[o]
            lines.append(f"| {o} | {spread(d.steps())} | {spread(d.finals(task.goal), 4)} "
                         f"| {setting(t.hyper)}{edge(plan, task, o, t.hyper)} | {spread(t.steps())} | "
                         + (f"{spread(t.seconds(), 2)} | " if timings else "")
                         + f"{spread(t.finals(task.goal), 4)} | {_failures(d, t)} |")
        lines.append("")
    errors = {(r["optimizer"], r["error"]) for r in result.records.values()
              if r["status"] == "error" and r["task"] in {t.name for t in plan.tasks}}
    if errors:
        lines += ["## Errors", "", *(f"* {o}: `{e}`" for o, e in sorted(errors)), ""]
    lines += ["## Pictures", "", "![performance profile](profile.png)", "",
              "![learning curves](curves.png)", ""]
    return "\n".join(lines)


def _worse_first(task, row: Row) -> float:
    med = median_spread(row.finals(task.goal))[0]
    return -med if task.goal == "max" else med


def _failures(d: Row, t: Row) -> str:
    a, b = d.failures(), t.failures()
    return "–" if a == b == "–" else f"default {a}; tuned {b}"


def reading(result, table, steps_t, steps_d) -> list[str]:
    """The reading, derived from the numbers: where AdamW wins, where it does not, what tuning bought."""
    plan = result.plan
    out = []
    ref = "adamw" if "adamw" in plan.optimizers else None
    fastest_on, end_on = [], []
    for task in plan.tasks:
        finals = {o: _worse_first(task, table[task.name, o, "tuned"]) for o in plan.optimizers}
        ranked = sorted(plan.optimizers, key=lambda o: (finals[o], o))
        sign = -1 if task.goal == "max" else 1
        end = f"best at the end: {ranked[0]} ({fmt(sign * finals[ranked[0]], 4)})"
        if ref and ranked[0] != ref:
            end += f", AdamW {fmt(sign * finals[ref], 4)} (rank {ranked.index(ref) + 1} of {len(ranked)})"
        elif ref:
            end_on.append(task.name)
        finite = {o: steps_t[o][task.name] for o in plan.optimizers if math.isfinite(steps_t[o][task.name])}
        if not finite:
            out.append(f"* **{task.name}**: no optimizer reaches the target in the median seed; {end}.")
            continue
        fastest = min(finite.values())
        winners = sorted(o for o, v in finite.items() if v == fastest)
        line = f"* **{task.name}**: fastest to the target {', '.join(winners)} ({fmt(fastest)} steps)"
        if ref and ref in winners:
            fastest_on.append(task.name)
        elif ref:
            a = steps_t[ref][task.name]
            line += (", AdamW misses it" if math.isinf(a) else f", AdamW {fmt(a)} steps ({a / fastest:.2g}×)")
        missed = sorted(o for o in plan.optimizers if math.isinf(steps_t[o][task.name]))
        if missed:
            line += f"; missed even when tuned: {', '.join(missed)}"
        out.append(f"{line}; {end}.")

    def solved(row):
        return sum(math.isfinite(v) for v in row.values())

    n = len(plan.tasks)
    if ref:
        out.append(f"* **AdamW**, tuned, is the fastest (or tied) on {len(fastest_on)}/{n} tasks"
                   + (f" ({', '.join(fastest_on)})" if fastest_on else "")
                   + f" and best at the end on {len(end_on)}/{n}"
                   + (f" ({', '.join(end_on)})" if end_on else "")
                   + f". With its defaults it reaches {solved(steps_d[ref])}/{n} targets, tuned "
                   f"{solved(steps_t[ref])}/{n}: 'safe default' is a claim about the first number.")
    safest = sorted(plan.optimizers, key=lambda o: (-solved(steps_d[o]), o))
    best = solved(steps_d[safest[0]])
    out.append(f"* With defaults only, the most targets ({best}/{n}) are reached by "
               f"{', '.join(o for o in safest if solved(steps_d[o]) == best)}.")
    gains = sorted(((solved(steps_t[o]) - solved(steps_d[o]), o) for o in plan.optimizers), reverse=True)
    needy = [f"{o} (+{g})" for g, o in gains if g > 0]
    if needy:
        out.append(f"* Tuning the learning rate mattered most for {', '.join(needy[:5])} "
                   "(tasks solved tuned minus tasks solved with defaults).")
    if "sgd" in plan.optimizers:
        out.append("* `sgd` is plain SGD (momentum 0, torch's default); add the `momentum` or `nesterov` "
                   "preset with `--optimizers` to check the advice about SGD with momentum.")
    return out


def plot_profile(result, table, path) -> None:
    """Performance profiles: ρ(τ) against τ, steps and (if timed) seconds, tuned solid and default dashed."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # never pyplot: the caller's backend stays as it is

    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    colours = colormaps["tab20"]
    for ax, what in zip(axes, ("steps", "seconds")):
        for kind, style in (("tuned", "-"), ("default", ":")):
            rho = profile(times(result, table, kind, what), TAUS)
            for k, o in enumerate(result.plan.optimizers):
                jitter = 0.004 * (k - len(result.plan.optimizers) / 2)  # keep equal curves apart
                ax.step(TAUS, [r + jitter for r in rho[o]], style, where="post", color=colours(k % 20),
                        label=o if kind == "tuned" else None, lw=1.6 if kind == "tuned" else 1.0)
        ax.set_xlabel(f"τ (within τ × the fastest optimizer's {what} to target)")
        ax.set_title(f"{what} to target: tuned (solid), default (dotted)", fontsize=9)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"fraction of the {len(result.plan.tasks)} tasks")
    axes[1].legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def plot_curves(result, table, path) -> None:
    """Per task: the held-out metric against steps for each optimizer's tuned setting (median over seeds)."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.figure import Figure  # never pyplot: the caller's backend stays as it is

    tasks = result.plan.tasks
    cols = min(len(tasks), 3)
    rows_ = math.ceil(len(tasks) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows_))
    axes = fig.subplots(rows_, cols, squeeze=False)
    colours = colormaps["tab20"]
    for ax, task in zip(axes.flat, tasks):
        for k, o in enumerate(result.plan.optimizers):
            runs = [r for r in table[task.name, o, "tuned"].records if r["steps"]]
            if not runs:
                continue
            grid = max((r["steps"] for r in runs), key=len)
            values = np.full((len(runs), len(grid)), np.nan)
            for i, r in enumerate(runs):
                values[i, :len(r["values"])] = [np.nan if v is None else v for v in r["values"]]
            with np.errstate(all="ignore"):
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    median = np.nanmedian(values, axis=0)
            ax.plot(grid, median, color=colours(k % 20), lw=1.2, label=o)
        ax.axhline(task.target, color="k", ls="--", lw=0.8)
        ax.set_title(f"{task.name} (tuned; dashed: target)", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(task.metric)
        if task.goal == "min":
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
