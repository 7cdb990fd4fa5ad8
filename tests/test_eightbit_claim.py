"""The 8-bit AdamW claim: its paired interval against Student's t computed independently, its three
outcomes and verdicts on made-up numbers, and its measured numbers consistent with its runs."""

from __future__ import annotations

import math
import statistics

import pytest

from optimlab.lab.claim_checks import claims
from optimlab.lab.claim_checks.eightbit import MARGIN, T975, judge_eightbit, outcome, paired_ratio


def student_t_quantile_975(df: int) -> float:
    """The 97.5% quantile of Student's t by bisection on its CDF, the density integrated numerically."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float, n: int = 20_000) -> float:  # 1/2 + ∫₀ˣ density (Simpson's rule)
        h = x / n
        f = [math.exp(log_norm - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    low, high = 0.0, 20.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < 0.975 else (low, mid)
    return (low + high) / 2


@pytest.mark.parametrize("df", [1, 2, 5, 15, 19])
def test_t_quantiles_match_the_distribution(df):
    assert T975[df] == pytest.approx(student_t_quantile_975(df), abs=2e-3)


def test_paired_interval_is_students_t_on_the_log_ratios():
    ours, base = [0.12, 0.30, 0.05, 0.21], [0.10, 0.33, 0.04, 0.20]
    r = paired_ratio(ours, base)
    logs = [math.log(a / b) for a, b in zip(ours, base)]
    half = student_t_quantile_975(3) * statistics.stdev(logs) / 2  # √4 seeds
    assert r["ratios"] == pytest.approx([a / b for a, b in zip(ours, base)])
    assert r["geomean"] == pytest.approx(math.prod(r["ratios"]) ** 0.25)
    assert r["low"] == pytest.approx(r["geomean"] * math.exp(-half), rel=1e-3)
    assert r["high"] == pytest.approx(r["geomean"] * math.exp(half), rel=1e-3)


def test_a_nonfinite_loss_makes_the_ratio_worse_not_within():
    r = paired_ratio([0.1, math.nan, 0.1], [0.1, 0.1, 0.1])
    assert outcome(r) == "worse"
    with pytest.raises(ValueError, match="same length"):
        paired_ratio([0.1, 0.2], [0.1])


def test_outcomes_by_where_the_interval_lies():
    assert outcome({"low": 0.97, "high": MARGIN}) == "within"
    assert outcome({"low": 1.03, "high": 1.2}) == "worse"
    assert outcome({"low": 0.9, "high": 1.1}) == "unresolved"


def test_verdicts_on_made_up_numbers():
    def numbers(*intervals, state=2.03):
        tasks = [f"t{i}" for i in range(len(intervals))]
        return {"tasks": tasks, "bytes_per_param_4096": state, "adamw_bytes_per_param_4096": 8.0,
                **{t: {"paired": {"low": lo, "high": hi}} for t, (lo, hi) in zip(tasks, intervals)}}

    assert judge_eightbit(numbers((0.99, 1.01), (0.95, 1.02))).verdict == "confirmed"
    found = judge_eightbit(numbers((0.99, 1.01), (0.8, 1.2), (1.05, 1.3)))
    assert found.verdict == "depends"
    assert "within 2% of fp32 AdamW's on t0" in found.condition
    assert "not resolved to 2% by the seeds' scatter on t1" in found.condition
    assert "more than 2% worse on t2" in found.condition
    assert judge_eightbit(numbers((0.99, 1.01), state=4.5)).verdict == "refuted"


def test_quick_claim_numbers_follow_from_its_runs():
    (result,) = claims(["adamw8bit-half-state"], quick=True)
    n = result.numbers
    for task in n["tasks"]:
        r = n[task]
        assert len(r["adamw_finals"]) == len(r["adamw8bit_finals"]) == n["seeds"][task]
        expected = paired_ratio(r["adamw8bit_finals"], r["adamw_finals"])
        assert r["paired"]["ratios"] == pytest.approx(expected["ratios"])
        assert [r["paired"][k] for k in ("geomean", "low", "high")] == pytest.approx(
            [expected[k] for k in ("geomean", "low", "high")])
        assert r["ratio"] == pytest.approx(statistics.median(r["adamw8bit_finals"])
                                           / statistics.median(r["adamw_finals"]))
    assert result.verdict == judge_eightbit(n).verdict
