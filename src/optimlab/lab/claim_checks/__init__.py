"""optimlab.lab.claims (this package: lab/claim_checks): the lessons' checkable claims, each measured by a
small experiment, with a verdict.

    from optimlab.lab.claim_checks import claims, report_markdown, to_json, catalogue
    results = claims(["lion-half-state", "amsgrad-fixes-reddi"], quick=True)
    for r in results:
        print(r.id, r.verdict, r.measured)
    print(report_markdown(claims()))              # every claim at full size: about half a minute
    optimlab.lab.claims(quick=True)               # the same function, reached lazily from optimlab.lab

The catalogue is declarative: one `Claim` per claim (seed, quote, experiment, the rule that turns the
measured numbers into confirmed / refuted / depends), grouped by topic in adam.py, ablated.py (reusing
Break It's ablations), state.py (state and memory), canyon.py (the canyon lesson, Reddi) and lrs.py (lr
sweeps). Every run is seeded and on one thread, so the numbers repeat exactly.
"""

from __future__ import annotations

import difflib
import sys

from . import ablated, adam, canyon, lrs, matrix, state
from . import frontier  # Sophia's 2×, schedule-free without a schedule
from . import eightbit  # 8-bit AdamW's "half the optimizer state"
from . import lowprec  # bf16 training without an fp32 master copy
from .core import VERDICTS, Claim, Context, Result, Verdict, run_claim
from .report import dumps, report_markdown, to_json

CATALOGUE: dict[str, Claim] = {c.id: c for group in (adam, ablated, state, canyon, lrs, matrix, frontier,
                                                                   eightbit, lowprec)
             for c in group.CLAIMS}

__all__ = ["claims", "catalogue", "get", "ids", "report_markdown", "to_json", "dumps", "Claim", "Result",
           "Verdict", "VERDICTS", "CATALOGUE"]


def ids() -> list[str]:
    return list(CATALOGUE)


def get(claim_id: str) -> Claim:
    key = claim_id.strip().lower()
    if key not in CATALOGUE:
        hint = difflib.get_close_matches(key, CATALOGUE, n=1)
        raise ValueError(f"unknown claim {claim_id!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                         + "; see `optimlab claims --list`")
    return CATALOGUE[key]


def catalogue() -> list[Claim]:
    return list(CATALOGUE.values())


def claims(ids: list[str] | str | None = None, *, quick: bool = False,
           progress: bool = False) -> list[Result]:
    """Measure the named claims (all when None), in catalogue order; return one `Result` each.

    quick: reduced sizes (shorter runs, fewer seeds, coarser grids), as the tests use.
    progress: one line per claim on stderr as it finishes.
    """
    if isinstance(ids, str):
        ids = [i for i in ids.split(",") if i.strip()]
    chosen = {get(i).id for i in ids} if ids else set(CATALOGUE)
    context = Context(quick=quick)
    results = []
    for entry in (c for c in CATALOGUE.values() if c.id in chosen):
        results.append(run_claim(entry, context))
        if progress:
            r = results[-1]
            print(f"[{len(results)}/{len(chosen)}] {r.id}: {r.verdict} ({r.seconds:.1f} s)", file=sys.stderr)
    return results
