"""The examples' section of the claims report: Markdown (a summary table, then each example in full), JSON."""

from __future__ import annotations

import collections
import json

from ..claim_checks.report import _cell
from .core import VERDICTS, Outcome

TITLE = "The lessons' own worked examples, re-run"


def report_markdown(outcomes: list[Outcome], *, command: str = "optimlab claims --examples",
                    seconds: float | None = None, level: int = 1) -> str:
    """The section; `level` 2 nests it under the claims report's title."""
    h = "#" * level
    checks = [c for o in outcomes for c in o.checks]
    counts = collections.Counter(c.verdict.verdict for c in checks)
    tally = ", ".join(f"{counts[v]} {v}" for v in VERDICTS)
    took = f", {seconds:.0f} s" if seconds is not None else ""
    plural = "s" if len(outcomes) != 1 else ""
    lines = [f"{h} {TITLE}", "",
             f"`{command}`: {len(outcomes)} example{plural}, {len(checks)} statements: {tally}{took}. "
             "Each example is re-implemented from the lesson's setup (model, data, seed, steps, "
             "hyperparameters), run with optimlab's optimizers and torch.optim's, and printed beside "
             "what the lesson says; each verdict follows from the numbers by a rule fixed in advance "
             "(under each example). Every run is seeded and on one thread, so the numbers repeat on the "
             "same machine.", "",
             "| example | lesson | the lesson says | measured | verdict |", "|---|---|---|---|---|"]
    for o in outcomes:
        for c in o.checks:
            verdict = f"**{c.verdict.verdict}**" + (f": {c.verdict.condition}" if c.verdict.condition else "")
            lines.append(f"| `{o.id}` | {_cell(o.lesson)} | {_cell(c.says)} | {_cell(c.measured)} | "
                         f"{_cell(verdict)} |")
    lines += [""]
    for o in outcomes:
        lines += [f"{h}# `{o.id}`: {o.title}", "", f"From {o.lesson}. `{command.split(' --')[0]} --examples "
                  f"{o.id}` runs it alone ({o.seconds:.1f} s here).", "", f"* **Setup**: {o.setup}", "",
                  "```text", o.output.rstrip(), "```", "",
                  "| the lesson says | measured | rule | verdict |", "|---|---|---|---|"]
        for c in o.checks:
            verdict = f"**{c.verdict.verdict}**" + (f": {c.verdict.condition}" if c.verdict.condition else "")
            lines.append(f"| {_cell(c.says)} | {_cell(c.measured)} | {_cell(c.rule)} | {_cell(verdict)} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def to_json(outcomes: list[Outcome]) -> dict:
    """{"examples": [{"id", "lesson", "title", "setup", "output", "checks": [{"says", "measured", "rule",
    "verdict", "condition"}], "numbers", "seconds"}]}"""
    return {"examples": [o.to_json() for o in outcomes]}


def dumps(outcomes: list[Outcome]) -> str:
    return json.dumps(to_json(outcomes), indent=2, ensure_ascii=False, allow_nan=False)
