"""The frontier claims (Sophia's 2×, schedule-free without a schedule): numbers consistent with their
definitions, verdicts that follow their rules, and the schedule they compare against."""

from __future__ import annotations

import functools
import math

import pytest

from optimlab.lab.claim_checks import claims, get
from optimlab.lab.claim_checks.frontier import FLOOR, judge_schedulefree, judge_sophia, warmup_cosine


@functools.cache
def quick() -> dict:
    return {r.id: r for r in claims(["sophia-2x-faster", "schedulefree-no-schedule"], quick=True)}


def test_sophia_numbers_follow_from_its_curve():
    n = quick()["sophia-2x-faster"].numbers
    assert n["target"] == min(n["adamw_finals"])  # AdamW's best final loss over the grid
    assert n["sophia_final"] == min(n["sophia_finals"])
    reached = next((s for s, loss in n["sophia_points"] if loss <= n["target"]), None)
    assert n["sophia_steps_to_target"] == reached
    if reached:
        assert n["speedup_steps"] == pytest.approx(n["steps"] / reached)
        assert n["speedup_gradient_evaluations"] < n["speedup_steps"]  # the Hessian refreshes cost
    else:
        assert n["speedup_steps"] == n["speedup_gradient_evaluations"] == 0.0
    assert quick()["sophia-2x-faster"].verdict == judge_sophia(n).verdict


def test_schedulefree_numbers_follow_from_the_runs():
    n = quick()["schedulefree-no-schedule"].numbers
    for task in n["tasks"]:
        r = n[task]
        assert r["cosine_final"] == min(r["cosine_finals"])
        assert r["schedulefree_final"] == min(r["schedulefree_finals"])
        assert r["ratio"] == pytest.approx(r["schedulefree_final"] / r["cosine_final"])
    assert quick()["schedulefree-no-schedule"].verdict == judge_schedulefree(n).verdict


def test_sophia_rule_on_made_up_numbers():
    base = {"task": "charlm"}
    assert judge_sophia({**base, "speedup_gradient_evaluations": 2.0}).verdict == "confirmed"
    assert judge_sophia({**base, "speedup_gradient_evaluations": 1.6}).verdict == "confirmed"
    found = judge_sophia({**base, "speedup_gradient_evaluations": 1.3})
    assert found.verdict == "depends" and "1.3" in found.condition
    assert judge_sophia({**base, "speedup_gradient_evaluations": 1.05}).verdict == "refuted"
    assert judge_sophia({**base, "speedup_gradient_evaluations": 0.0}).verdict == "refuted"  # never reached


def test_schedulefree_rule_on_made_up_numbers():
    def numbers(*ratios):
        tasks = [f"t{i}" for i in range(len(ratios))]
        return {"tasks": tasks, **{t: {"ratio": r} for t, r in zip(tasks, ratios)}}

    assert judge_schedulefree(numbers(0.9, 1.02)).verdict == "confirmed"
    assert judge_schedulefree(numbers(1.03, 1.5)).verdict == "refuted"
    found = judge_schedulefree(numbers(1.0, 1.1))
    assert found.verdict == "depends" and "t0" in found.condition and "t1" in found.condition


def test_warmup_then_cosine_to_a_tenth():
    f = warmup_cosine(200)  # 10 warmup steps
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == pytest.approx(1.0)
    assert f(105) == pytest.approx(FLOOR + (1 - FLOOR) * 0.5)  # half way through the decay
    assert f(199) == pytest.approx(FLOOR + (1 - FLOOR) * 0.5 * (1 + math.cos(math.pi * 189 / 190)))
    assert min(f(s) for s in range(200)) >= FLOOR


def test_the_claims_are_in_the_catalogue():
    assert get("sophia-2x-faster").seed == get("schedulefree-no-schedule").seed == "modern-variants"
