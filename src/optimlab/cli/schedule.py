"""optimlab schedule NAME key=value ...: print, plot or dump a learning-rate schedule."""

from __future__ import annotations

import json
import math
import sys

from ._outputs import check, require, save

MAX_STEPS = 10**12  # nothing is kept per update: the table, plot and sparkline sample the schedule
MAX_JSON_POINTS = 1_000_000  # values --json prints at most (use --every for longer schedules)
PLOT_POINTS = 2000

EPILOG = """\
the unit is the optimizer update: t = 0 is the first update, and the value at t is the multiplier of
each param group's base lr for the update that follows t earlier updates.

examples:
  optimlab schedule                                  list schedules and their arguments
  optimlab schedule warmup_cosine total_steps=2000 warmup_steps=100 floor=0.1
  optimlab schedule wsd total_steps=1000 warmup_steps=50 decay_steps=200 shape=1-sqrt \\
                    --out /tmp/wsd.png
  optimlab schedule cosine total_steps=500 --warmup 50 --lr 3e-4 --json
  optimlab schedule multistep milestones=[30,60,80] gamma=0.1 --steps 100
  optimlab schedule '{"name": "sequence", "boundaries": [300], "schedules":
                     [{"name": "constant"}, {"name": "linear_decay", "total_steps": 100}]}'
                                                     (compositions: any Schedule.describe() output)
"""


def register(verbs) -> None:
    p = verbs.add_parser("schedule", help="print, plot (--out) or dump (--json) a learning-rate schedule",
                         description="Evaluate a schedule from optimlab.schedules over optimizer updates "
                         "t = 0..N and show it as a table, a PNG plot or JSON. Arguments are key=value "
                         "(Python literals: 100, 0.1, 1e-4, [30,60]); NAME may also be 'name:k=v,...' or a "
                         "JSON description (for compositions). Nothing is kept per update: a billion-update "
                         "schedule prints at once (the table and the plot sample it).",
                         epilog=EPILOG)
    p.add_argument("name", nargs="?", metavar="NAME", help="schedule name (omit to list them all)")
    p.add_argument("args", nargs="*", metavar="KEY=VALUE",
                   help="the schedule's arguments, e.g. total_steps=1000")
    p.add_argument("--steps", type=int, metavar="N",
                   help="draw t = 0..N (default: the schedule's own length, e.g. total_steps)")
    p.add_argument("--warmup", type=int, metavar="W", default=0,
                   help="prepend a linear warmup of W updates (t/W); the schedule then starts at t = W")
    p.add_argument("--lr", type=float, help="base lr: also show lr = lr * multiplier")
    p.add_argument("--out", metavar="PATH", help="write a plot (PNG, SVG or PDF, by extension) to PATH")
    p.add_argument("--json", action="store_true", help="print the values as JSON instead of a table")
    p.add_argument("--every", type=int, default=1, metavar="K",
                   help="with --json: every K-th update (default 1)")
    p.set_defaults(run=run)


def build(args):
    from optimlab import schedules

    name = args.name
    if name.lstrip().startswith("{"):
        try:
            description = json.loads(name)
        except json.JSONDecodeError as err:
            raise ValueError(f"NAME looks like JSON but is not: {err}") from None
        schedule = schedules.from_dict(description)
    else:
        text = name + (":" if ":" not in name else ",") + ",".join(args.args)
        schedule = schedules.parse(text)
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0 updates, got {args.warmup}")
    if args.warmup:
        schedule = schedules.warmup(schedule, args.warmup)
    steps = args.steps if args.steps is not None else schedule.horizon
    if steps is None:
        raise ValueError(f"{schedule.name} has no natural length; pass --steps N")
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"--steps must be from 1 to {MAX_STEPS:,} updates, got {steps:,}")
    if args.every < 1:
        raise ValueError(f"--every must be >= 1, got {args.every}")
    return schedule, steps


def listing() -> int:
    from optimlab import schedules
    from optimlab.schedules.base import REGISTRY, signature

    width = max(map(len, REGISTRY))
    for name in schedules.available():
        doc = (REGISTRY[name].__doc__ or "").strip().splitlines()[0]
        compose = name in ("warmup", "sequence")
        how = "  (compose: --warmup W, or NAME as a JSON description)" if compose else ""
        print(f"{name:<{width}}  {signature(name)}{how}\n{'':<{width}}  {doc}")
    return 0


def run(args) -> int:
    if args.name is None:
        return listing()
    out = check(args.out, "--out", (".png", ".svg", ".pdf"))
    require(out, "matplotlib")
    schedule, steps = build(args)
    kind = "momentum" if schedule.absolute else "multiplier"
    if args.json:
        dump_json(schedule, steps, args.every, args.lr, kind)
    else:
        table(schedule, steps, args.lr, kind)
    if out is not None:
        if not save(out, lambda path: plot(schedule, steps, args.lr, kind, path)):
            return 1
        print(f"wrote {args.out}", file=sys.stderr if args.json else sys.stdout)
    return 0


def sampled(steps: int, count: int = PLOT_POINTS) -> list[int]:
    """At most `count` update counts from 0 to steps, evenly spread, both ends included."""
    if steps + 1 <= count:
        return list(range(steps + 1))
    return sorted({round(i * steps / (count - 1)) for i in range(count)})


def dump_json(schedule, steps, every, lr, kind) -> None:
    """Every `every`-th value and the last; refused (with the --every to use) beyond a million values."""
    points = steps // every + 1 + (steps % every != 0)
    if points > MAX_JSON_POINTS:
        raise ValueError(f"--json would print {points:,} values (limit {MAX_JSON_POINTS:,}); "
                         f"pass --every {math.ceil(steps / (MAX_JSON_POINTS - 2))} or more")
    ts = [*range(0, steps + 1, every)] + ([steps] if steps % every else [])
    values = [schedule(t) for t in ts]
    out = {"schedule": schedule.describe(), "steps": steps, "unit": "optimizer updates taken", "t": ts,
           kind: values}
    if lr is not None and not schedule.absolute:
        out["lr"] = [lr * v for v in values]
    print(json.dumps(out))


def table(schedule, steps, lr, kind) -> None:
    marks = set(schedule.key_steps(steps))
    rows = sorted((marks if len(marks) <= 40 else set()) | {round(i * steps / 10) for i in range(11)})
    values = {t: schedule(t) for t in rows}  # all before the first line: an overflow is one clear error
    shape = sparkline([schedule(t) for t in sampled(steps, 60)])
    w = max(8, len(str(steps)))
    print(f"{schedule!r}")
    print(f"t = optimizer updates taken, 0..{steps}; value = {kind}"
          + (f", lr = {lr:g} * multiplier" if lr else ""))
    print(f"{'t':>{w}}  {kind:>12}" + (f"  {'lr':>12}" if lr and kind != 'momentum' else ""))
    for t in rows:
        line = f"{t:>{w}}  {values[t]:>12.6g}"
        line += f"  {lr * values[t]:>12.6g}" if lr and kind != "momentum" else ""
        print(line + ("  <- phase" if t in marks and t not in (0, steps) else ""))
    print("shape: " + shape)


def sparkline(values, width: int = 60) -> str:
    bars = "▁▂▃▄▅▆▇█"
    n = len(values)
    k = min(width, n)  # columns
    cols = [values[round(i * (n - 1) / max(k - 1, 1))] for i in range(k)]
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return "".join(bars[min(7, int((v - lo) / span * 8))] for v in cols) + f"  [{lo:.3g} .. {hi:.3g}]"


def plot(schedule, steps, lr, kind, path) -> None:
    from matplotlib.figure import Figure  # no pyplot, no GUI backend needed

    ts = sorted(set(sampled(steps)) | set(schedule.key_steps(steps)))  # sampled, with every phase edge
    values = [schedule(t) for t in ts]
    ys = [lr * v for v in values] if lr and kind != "momentum" else values
    fig = Figure(figsize=(7, 3.2), dpi=120)
    ax = fig.subplots()
    ax.plot(ts, ys, lw=1.8)
    for t in schedule.key_steps(ts[-1]):
        if 0 < t < ts[-1]:
            ax.axvline(t, color="0.8", lw=0.8, ls=":")
    ax.set_xlabel("t (optimizer updates taken)")
    ax.set_ylabel("lr" if ys is not values else kind)
    ax.set_title(repr(schedule), fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
