"""The claims report: Markdown (a table, then each claim in full) and JSON."""

from __future__ import annotations

import collections
import json

from .core import VERDICTS, Result


def report_markdown(results: list[Result], *, command: str = "optimlab claims",
                    seconds: float | None = None) -> str:
    counts = collections.Counter(r.verdict for r in results)
    tally = ", ".join(f"{counts[v]} {v}" for v in VERDICTS)
    size = "reduced sizes (--quick)" if results and results[0].quick else "full sizes"
    took = f", {seconds:.0f} s" if seconds is not None else ""
    lines = ["# The lessons' claims, measured", "",
             f"`{command}`: {len(results)} claims, {tally} ({size}{took}). Each verdict follows from the "
             "measured numbers by a rule fixed in advance (under each claim below). Where a lesson and a "
             "paper disagree, the paper and the measurement win.", "",
             "| id | lesson | verdict | claim | measured |", "|---|---|---|---|---|"]
    for r in results:
        verdict = f"**{r.verdict}**" + (f": {r.condition}" if r.condition else "")
        lines.append(f"| `{r.id}` | {r.seed} | {_cell(verdict)} | {_cell(r.claim)} | {_cell(r.measured)} |")
    lines += ["", "## The claims in full", ""]
    for r in results:
        lines += [f"### `{r.id}` (lesson {r.seed}): {r.verdict}", "", f"> {r.claim}", "",
                  f"* **Experiment**: {r.experiment}", f"* **Measured**: {r.measured}",
                  f"* **Rule**: {r.rule}",
                  f"* **Verdict**: {r.verdict}" + (f": {r.condition}" if r.condition else "")]
        if r.reference:
            lines.append(f"* **Reference**: {r.reference}")
        lines += [f"* **Time**: {r.seconds:.1f} s", ""]
    return "\n".join(lines).rstrip() + "\n"


def to_json(results: list[Result]) -> dict:
    """{"claims": [{"id", "seed", "lesson", "claim", "measured", "verdict", "condition", "rule", …}]}

    "seed" is the lesson's short name (docs/lessons.md), "lesson" its title."""
    return {"claims": [r.to_json() for r in results]}


def dumps(results: list[Result]) -> str:
    return json.dumps(to_json(results), indent=2, ensure_ascii=False, allow_nan=False)


def _cell(text: str) -> str:
    """Markdown table cells: no pipes, no line breaks."""
    return text.replace("|", "\\|").replace("\n", " ")
