"""What the playground computes: each function takes a validated request as a dict and returns JSON.

Every number comes from the library (races, landscapes, ablations, schedules, sweeps, the memory
planner, the rule diff, the claims); this module only calls it and shapes the answer for the pages.
The heavy ones run in worker processes (see `pool`), so each must be importable and picklable by name.
"""

from __future__ import annotations

import math
import re

import numpy as np

# Values to start the schedule page with, for the arguments a schedule requires (it has no default).
EXAMPLES = {"total_steps": 1000, "period": 250, "step_size_up": 100, "gamma": 0.995, "warmup_steps": 100,
            "milestones": [300, 600, 800], "step_size": 300}

# Full-matrix rules, shown on the preconditioning page when another branch has registered them.
FULL_MATRIX = ("shampoo", "soap", "muon")


def finite(value):
    """JSON has no NaN or infinity: None in their place, recursively; numpy values as Python numbers."""
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, np.ndarray):
        return finite(value.tolist())
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)  # dtypes and the like: shown, not computed with


def no_lesson_numbers(text: str) -> str:
    """The library's claims name the lesson file they quote (000–009); the pages name lessons by topic."""
    text = re.sub(r"(?:seed|lesson) 00\d's", "the lesson's", text)
    text = text.replace("the seed's", "the lesson's").replace("the seeds'", "the lessons'")
    text = re.sub(r"\s*\((?:seed |lesson )?00\d(?:, ?00\d)*\)", "", text)
    return re.sub(r"(?:seed|lesson) 00\d(?:, ?00\d)*(?:; )?", "", text).replace("()", "").strip()


# --- races ---------------------------------------------------------------------------------------

def race(request: dict) -> dict:
    """`optimlab race` as JSON: each optimizer's settings, trajectory, losses and final point."""
    from optimlab.lab.races import race as run_race

    return _race_answer(run_race(request["landscape"], request["optimizers"], steps=request.get("steps"),
                                 start=request.get("start"), noise=request.get("noise"),
                                 seed=request.get("seed"), schedule=request.get("schedule", "landscape")))


def races(request: dict) -> list[dict]:
    """Race requests that differ only in their start ("starts"), run together: one answer per start
    (with "only": k, just the k-th optimizer's runs, for a race spread over several workers)."""
    from optimlab.lab.races import race_many

    results = race_many(request["landscape"], request["optimizers"], request["starts"],
                        steps=request.get("steps"), noise=request.get("noise"), seed=request.get("seed"),
                        schedule=request.get("schedule", "landscape"), only=request.get("only"))
    return [_race_answer(result) for result in results]


def _race_answer(result) -> dict:
    from optimlab.settings import parse

    L = result.landscape
    runs = []
    for run, row in zip(result.runs, result.table()):
        _, hyper = parse("shown:" + run.settings) if run.settings else ("", {})
        runs.append({**row, "hyper": hyper, "positions": run.positions, "losses": run.losses})
    return finite({"landscape": L.text, "name": L.name, "formula": L.formula, "dim": L.dim,
                   "start": list(result.start), "steps": result.steps, "minima": L.minima,
                   "min_value": L.min_value, "runs": runs})


def precondition(request: dict) -> dict:
    """The quadratic ½(κu² + v²) turned by an angle, raced by SGD, momentum, Adam and any full-matrix rule.

    Each optimizer runs on its own, so one that cannot take a 2-vector (a matrix-only rule) is reported
    beside the others instead of failing the page.
    """
    import optimlab

    text = f"quadratic:kappa={request['kappa']!r},angle={request['angle']!r}"
    names = ["sgd", "momentum", "adam", *(n for n in FULL_MATRIX if n in optimlab.available())]
    answer, skipped = None, {}
    for name in names:
        try:
            one = race({"landscape": text, "optimizers": [name], "steps": request["steps"]})
        except (ValueError, TypeError, RuntimeError) as err:
            skipped[name] = str(err)
            continue
        if answer is None:
            answer = one
        else:
            answer["runs"] += one["runs"]
    answer["skipped"] = skipped
    return answer


def surface(request: dict) -> dict:
    """The landscape's loss on a grid over its view window (a curve for a 1-D landscape), for contours."""
    import torch

    from optimlab import landscapes

    L = landscapes.get(request["landscape"])
    n = request.get("resolution", 120)
    axes = [torch.linspace(lo, hi, n, dtype=torch.float64) for lo, hi in L.window]
    with torch.no_grad():
        if L.dim == 1:
            z = L.loss(axes[0].unsqueeze(-1))
        else:
            grid = torch.stack(torch.meshgrid(*axes, indexing="xy"), dim=-1)
            z = L.loss(grid)
    return finite({"landscape": L.text, "formula": L.formula, "dim": L.dim, "axes": [a.numpy() for a in axes],
                   "loss": z.numpy(), "minima": L.minima, "start": L.start, "min_value": L.min_value})


# --- Break It, sweeps, claims ----------------------------------------------------------------------

def breakit(request: dict) -> dict:
    """One ablation at reduced size (quick, few seeds): its number, verdict, claim and the curves behind."""
    from optimlab.lab import ablations

    (result,) = ablations.breakit([request["name"]], quick=True, seeds=request.get("seeds", 1))
    (shown,) = ablations.to_json([result])
    panel = result.panel
    shown["panel"] = {"title": panel.title, "xlabel": panel.xlabel, "ylabel": panel.ylabel,
                      "logx": panel.logx, "logy": panel.logy, "hline": panel.hline,
                      "curves": {label: {"x": xs, "y": ys} for label, (xs, ys) in panel.curves.items()}}
    for key in ("claim", "summary"):
        shown[key] = no_lesson_numbers(shown[key])
    return finite(shown)


def sweep(request: dict) -> dict:
    from optimlab.lab.sweeps import sweep as run_sweep

    result = run_sweep(request["optimizers"], task=request["task"], lrs=request["lrs"],
                       steps=request["steps"],
                       seeds=request["seeds"], factor=request["factor"], metric=request["metric"])
    out = result.to_json()
    for row in out["optimizers"].values():  # 'inf' strings from to_json: None for JSON readers
        row["median"] = [v if isinstance(v, float) else None for v in row["median"]]
        row["runs"] = [[v if isinstance(v, float) else None for v in r] for r in row["runs"]]
    out["table"] = result.table()
    return finite(out)


def claims(request: dict) -> dict:
    from optimlab.lab.claim_checks import claims as run_claims

    results = run_claims(request["ids"], quick=True)
    rows = []
    for r in results:
        row = r.to_json()
        row.pop("seed", None)
        for key in ("claim", "measured", "rule", "experiment", "condition"):
            row[key] = no_lesson_numbers(row.get(key) or "")
        rows.append(row)
    return finite({"claims": rows})


def claims_catalogue() -> list[dict]:
    from optimlab.lab.claim_checks import catalogue

    return [{"id": c.id, "claim": no_lesson_numbers(c.claim), "experiment": no_lesson_numbers(c.experiment),
             "rule": no_lesson_numbers(c.rule), "reference": c.reference} for c in catalogue()]


# --- the cheap ones, computed in the server process --------------------------------------------------

def schedule(request: dict) -> dict:
    """A schedule's multiplier (or momentum) at t = 0..steps, thinned to at most `points` values."""
    from optimlab import schedules

    built = schedules.get(request["name"], **request.get("args", {}))
    if request.get("warmup"):
        built = schedules.warmup(built, request["warmup"])
    steps = request.get("steps") or built.horizon
    if steps is None:
        raise ValueError(f"steps: {built.name} has no natural length; give steps")
    every = max(1, math.ceil(steps / request.get("points", 1000)))
    ts = list(range(0, steps + 1, every))
    if ts[-1] != steps:
        ts.append(steps)
    values = [built(t) for t in ts]
    kind = "momentum" if built.absolute else "multiplier"
    out = {"schedule": built.describe(), "repr": repr(built), "steps": steps, "kind": kind, "t": ts,
           "values": values, "key_steps": built.key_steps(steps)}
    if request.get("lr") is not None and not built.absolute:
        out["lr"] = [request["lr"] * v for v in values]
    return finite(out)


def memory(request: dict) -> dict:
    """The plan for the chosen ZeRO stage and ranks, and for every stage on the same ranks to compare."""
    from optimlab.memory import COMPONENTS, plan

    model, optimizer, precision = request["params"], request["optimizer"], request["precision"]
    # stage 0 shards nothing (every rank holds what one rank does); the ranks still set the comparison
    zero = request["zero"]
    chosen = plan(model, optimizer, precision, zero=zero, ranks=request["ranks"] if zero else 1)
    stages = []
    for zero in range(4):
        ranks = request["ranks"] if zero else 1  # stage 0 shards nothing: every rank holds what one rank does
        p = plan(model, optimizer, precision, zero=zero, ranks=ranks)
        stages.append({"zero": zero, "ranks": ranks, "per_rank": p.per_rank, "total_bytes": p.total_bytes})
    return finite({"plan": chosen.as_dict(), "table": chosen.table(), "components": list(COMPONENTS),
                   "stages": stages})


def diff(request: dict) -> dict:
    from optimlab.source import describe
    from optimlab.source import diff as rule_diff

    label_a, source_a = describe(request["a"])
    label_b, source_b = describe(request["b"])
    text = rule_diff(request["a"], request["b"], context=request.get("context", 2))
    return {"a": label_a, "b": label_b, "diff": text, "same": not text,
            "source_a": "\n".join(source_a), "source_b": "\n".join(source_b)}


def meta() -> dict:
    """What the pages offer: landscapes, optimizers, schedules, ablations, precisions, claims."""
    import inspect

    import optimlab
    from optimlab import landscapes, schedules
    from optimlab.lab import ablations
    from optimlab.memory import PRECISIONS, RECOMPUTE
    from optimlab.schedules.base import REGISTRY

    scapes = []
    for name in landscapes.available():
        L = landscapes.get(name)
        params = {k: p.default for k, p in inspect.signature(landscapes._factories[name]).parameters.items()}
        scapes.append({"name": name, "formula": L.formula, "dim": L.dim, "start": L.start, "window": L.window,
                       "minima": L.minima, "steps": L.steps, "about": no_lesson_numbers(L.about),
                       "params": params, "lr": L.lr, "schedule": L.schedule_text})
    optimizers = []
    for name in [*optimlab.available(), *optimlab.presets]:
        s = optimlab.spec(name)
        optimizers.append({"name": name, "idea": s.idea, "base": s.base or name, "defaults": s.defaults,
                           "capabilities": sorted(s.capabilities)})
    scheds = []
    for name in schedules.available():
        if name in ("warmup", "sequence"):  # compositions: the page offers warmup as its own control
            continue
        args = [{"name": k, "required": p.default is inspect.Parameter.empty,
                 "default": EXAMPLES.get(k) if p.default is inspect.Parameter.empty else p.default}
                for k, p in inspect.signature(REGISTRY[name]).parameters.items()]
        doc = (REGISTRY[name].__doc__ or "").strip().splitlines()
        scheds.append({"name": name, "args": args, "doc": doc[0] if doc else ""})
    breaks = [{"name": a.name, "removed": a.removed, "claim": no_lesson_numbers(a.claim),
               "measure": a.measure,
               "rule": a.rule} for a in ablations.ABLATIONS.values()]
    return finite({"landscapes": scapes, "optimizers": optimizers, "schedules": scheds, "ablations": breaks,
                   "precisions": list(PRECISIONS), "recompute": list(RECOMPUTE),
                   "full_matrix": [n for n in FULL_MATRIX if n in optimlab.available()]})


HEAVY = {"race": race, "races": races, "precondition": precondition, "breakit": breakit, "sweep": sweep,
         "claims": claims, "surface": surface}


def prepare() -> None:
    """Each worker, once: one thread (tiny tensors; processes give the parallelism), the library imported."""
    import torch

    import optimlab.lab.races  # noqa: F401

    torch.set_num_threads(1)


def run(kind: str, request: dict) -> dict:
    """The worker's entry point: one heavy computation by name."""
    return HEAVY[kind](request)
