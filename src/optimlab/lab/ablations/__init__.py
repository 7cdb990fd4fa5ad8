"""optimlab.lab.breakit: remove one design decision at a time, measure what breaks, give a verdict.

    from optimlab.lab import breakit
    results = breakit(["bias-correction", "decoupled-decay"], quick=True)
    for r in results:
        print(r.name, r.value, r.unit, r.verdict, r.summary)
    breakit(out="/tmp/breakit")        # all of them; writes breakit.png and breakit.json there

Each ablation is a declarative `Ablation` (what is removed, the lesson's claim, the measured number
defined precisely, the verdict rule) in its own module; `run` returns a `Result`. Every run is seeded,
on one thread, so results repeat exactly.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from . import beta2, bias, clipping, decay, eps, full_matrix, warmup
from .common import Ablation, Panel, Result, Settings, single_thread

ABLATIONS: dict[str, Ablation] = {m.ABLATION.name: m.ABLATION
                                  for m in (bias, warmup, decay, clipping, beta2, eps, full_matrix)}

__all__ = ["breakit", "names", "get", "table", "plot", "write", "to_json", "Ablation", "Result", "Panel",
           "Settings", "ABLATIONS"]


def names() -> list[str]:
    return list(ABLATIONS)


def get(name: str) -> Ablation:
    key = name.strip().lower().replace("_", "-")
    if key not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; available: {', '.join(ABLATIONS)}")
    return ABLATIONS[key]


def breakit(names: list[str] | str | None = None, *, quick: bool = False, seeds: int | None = None,
            workers: int = 1, out: str | os.PathLike | None = None, progress: bool = False) -> list[Result]:
    """Run the named ablations (all when None) and return their results in the order asked.

    quick: reduced sizes (fewer seeds, shorter runs), as the tests use. seeds: override every
    ablation's number of seeds. workers: run ablations in that many processes (one thread each).
    out: a folder for breakit.png (one panel per ablation) and breakit.json.
    """
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    chosen = [get(n).name for n in (names or list(ABLATIONS))]
    if seeds is not None and (not isinstance(seeds, int) or seeds < 1):
        raise ValueError(f"seeds must be a positive integer, got {seeds!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    settings = Settings(quick=quick, seeds=seeds)
    jobs = [(name, settings) for name in chosen]
    from ..sweeps import run_jobs  # the same process pool and progress bar as the lr sweep

    results = run_jobs(_run_one, jobs, workers=workers, progress=progress, unit="ablation")
    if out is not None:
        write(results, out)
    return results


def write(results: list[Result], out: str | os.PathLike) -> None:
    """breakit.json and breakit.png (one panel per ablation) in the folder `out`, created if needed."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "breakit.json").write_text(json.dumps(to_json(results), indent=2, ensure_ascii=False))
    plot(results, folder / "breakit.png")


def _run_one(job: tuple[str, Settings]) -> Result:
    import time

    name, settings = job
    start = time.perf_counter()
    with single_thread():
        result = ABLATIONS[name].run(settings)
    result.seconds = time.perf_counter() - start
    return result


def to_json(results: list[Result]) -> list[dict]:
    out = []
    for r in results:
        a = ABLATIONS[r.name]
        out.append({**r.to_json(), "removed": a.removed, "claim": a.claim, "measure": a.measure,
                    "rule": a.rule})
    return out


def table(results: list[Result]) -> str:
    """One row per ablation (the number, its spread over seeds, the verdict), the finding beneath it."""
    rows = [("ablation", "measured", "spread (seeds)", "verdict", "time")]
    for r in results:
        seeds = r.details.get("seeds")
        spread = "—"
        if r.spread:
            spread = f"{_num(r.spread[0])}–{_num(r.spread[1])}" + (f" ({seeds:g})" if seeds else "")
        rows.append((r.name, f"{_num(r.value)} {r.unit}", spread, r.verdict, f"{r.seconds:.1f} s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i:
            lines.append(f"  └ {results[i - 1].summary}")
    return "\n".join(lines)


def _num(x: float) -> str:
    return "inf" if math.isinf(x) else "nan" if math.isnan(x) else f"{x:#.3g}"


def plot(results: list[Result], path: str | os.PathLike) -> None:
    """One panel per ablation: the curves behind its number, titled with the number and the verdict."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (a notebook's) is left alone

    cols = min(3, len(results))
    rows = math.ceil(len(results) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(results):]:
        ax.set_visible(False)
    for ax, r in zip(axes.flat, results):
        p = r.panel
        for label, (xs, ys) in p.curves.items():
            ys = [y if math.isfinite(y) else float("nan") for y in ys]
            ax.plot(xs, ys, label=label, lw=1.3)
        if p.hline:
            ax.axhline(p.hline[0], color="grey", ls="--", lw=0.9, label=p.hline[1])
        ax.set_yscale("log" if p.logy else "linear")
        ax.set_xscale("log" if p.logx else "linear")
        ax.set_title(f"{p.title}\n{_num(r.value)} {r.unit} → {r.verdict}", fontsize=8.5)
        ax.set_xlabel(p.xlabel, fontsize=8)
        ax.set_ylabel(p.ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    _save_small(fig, path)


def _save_small(fig, path) -> None:
    """PNG with a 256-colour palette: a third of the bytes of full colour, and it looks the same for lines."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    try:
        from PIL import Image
    except ImportError:
        Path(path).write_bytes(buffer.getvalue())
        return
    Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)
