"""The claims checker: every claim at reduced size, its numbers against independent arithmetic or
theory, its verdict against its rule, and the report's and the command's formats."""

from __future__ import annotations

import functools
import json
import math
import re

import pytest
import torch

from optimlab.cli import main
from optimlab.lab import lessons
from optimlab.lab.claim_checks import VERDICTS, catalogue, claims, get, report_markdown, to_json
from optimlab.lab.claim_checks import adam as adam_claims
from optimlab.lab.claim_checks import canyon, lrs
from optimlab.lab.claim_checks.core import Verdict, depends


@functools.cache
def quick_results() -> dict:
    """Every claim at reduced size, once per test process (about 15 s on one thread)."""
    return {r.id: r for r in claims(quick=True)}


def measured(claim_id: str):
    return quick_results()[claim_id]


# --- the catalogue --------------------------------------------------------------------------------

def test_catalogue_has_at_least_twelve_claims_from_several_lessons_each_fully_declared():
    entries = catalogue()
    assert len(entries) >= 12
    assert len({c.id for c in entries}) == len(entries)
    assert len({c.seed for c in entries}) >= 4
    for c in entries:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", c.id), c.id
        assert c.seed in lessons.names(), c.seed  # a lesson's short name, never a file number
        assert c.claim.strip() and c.experiment.strip() and c.rule.strip()


def test_every_claim_runs_at_reduced_size_with_a_verdict_and_its_condition():
    results = quick_results()
    assert list(results) == [c.id for c in catalogue()]
    for r in results.values():
        assert r.verdict in VERDICTS
        assert r.measured.strip()
        assert (r.verdict == "depends") == bool(r.condition.strip()), r.id
        json.dumps(r.to_json(), allow_nan=False)  # numbers are JSON (inf and nan as text)


def test_a_depends_verdict_must_state_its_condition():
    with pytest.raises(ValueError, match="condition"):
        depends(" ")
    with pytest.raises(ValueError):
        Verdict("probably")


def test_unknown_claim_is_a_value_error_with_a_hint():
    with pytest.raises(ValueError, match="lion-half-state"):
        get("lion-half-stat")


# --- state and memory -----------------------------------------------------------------------------

def test_lion_state_is_exactly_half_of_adams_so_not_3x():
    half, three = measured("lion-half-state"), measured("lion-3x-memory")
    assert half.numbers["ratio_by_shape"] == [0.5, 0.5, 0.5]
    assert half.numbers["ratio_allocated"] == 0.5
    # torch's own Adam allocates the same 8 bytes per parameter (m and v) that the ratio divides by
    p = torch.zeros(64, 32, requires_grad=True)
    p.grad = torch.ones_like(p)
    ref = torch.optim.Adam([p])
    ref.step()
    torch_bytes = sum(t.numel() * t.element_size() for k, t in ref.state[p].items() if k != "step")
    assert torch_bytes / p.numel() == half.numbers["adam_bytes_per_param"] == 8
    assert half.numbers["lion_bytes_per_param"] == 4
    assert (half.verdict, three.verdict) == ("confirmed", "refuted")
    assert three.numbers["adam_over_lion_with_master"] == pytest.approx(12 / 8)
    assert three.numbers["adam_over_lion_total"] == pytest.approx(16 / 12)


def test_adafactor_keeps_one_row_and_one_column_statistic():
    r = measured("adafactor-o-d-plus-m")
    assert r.numbers["bytes"] == [4 * (d + m) for d, m in r.numbers["shapes"]]
    assert r.numbers["adam_bytes"] == [8 * d * m for d, m in r.numbers["shapes"]]
    assert r.numbers["allocated_512x2048"] == 4 * (512 + 2048)
    assert r.verdict == "confirmed"
    half = measured("adafactor-half-memory")
    assert half.numbers["total_ratio"] == pytest.approx(0.5, abs=0.01)  # 2 + 2 + 4 + ~0 vs 2 + 2 + 4 + 8
    assert half.numbers["state_ratio"] < 0.01
    assert half.verdict == "depends" and "footprint" in half.condition


def test_the_lessons_memory_figures_against_bytes_per_parameter_by_hand():
    state70 = measured("memory-70b-state").numbers
    assert state70["optimizer_state_bytes"] == pytest.approx(70e9 * 8)  # m and v, fp32
    assert state70["master_weights_bytes"] == pytest.approx(70e9 * 4)
    assert state70["total_bytes"] == pytest.approx(70e9 * 16)  # the lesson's 1.12 TB is everything
    seven = measured("memory-7b-total").numbers
    assert seven["total_bytes"] == pytest.approx(7e9 * (4 + 4 + 8))
    assert seven["total_bytes"] - seven["gradients_bytes"] == pytest.approx(84e9)
    thirteen = measured("memory-13b-zero2").numbers
    assert thirteen["total_bytes"] == pytest.approx(13e9 * 16)
    assert thirteen["zero2_8_ranks_per_rank_bytes"] == pytest.approx(13e9 * (2 + (2 + 8 + 4) / 8))
    verdicts = {i: measured(i).verdict for i in ("memory-70b-state", "memory-7b-total", "memory-7b-state",
                                                 "memory-13b-zero2")}
    assert verdicts == {"memory-70b-state": "refuted", "memory-7b-total": "refuted",
                        "memory-7b-state": "confirmed", "memory-13b-zero2": "confirmed"}


# --- Adam's update --------------------------------------------------------------------------------

def test_without_bias_correction_the_first_step_is_0_1_over_root_0_001_eta():
    r = measured("no-correction-first-step")
    # m₁ = 0.1g, v₁ = 0.001g²: the step is 0.1g/(√(0.001g²) + ε) = 0.1/√0.001 ≈ 3.162 (ε shows at |g| = 2)
    assert r.numbers["first_step_over_lr"] == pytest.approx(
        [0.1 * g / (math.sqrt(0.001 * g * g) + 1e-8) for g in (200, 2)], rel=1e-12)
    assert r.numbers["first_step_over_lr"] == pytest.approx([0.1 / math.sqrt(0.001)] * 2, rel=1e-6)
    # under a constant gradient the uncorrected step is (1 − β₁ᵗ)/√(1 − β₂ᵗ) times the corrected one
    by_hand = [(1 - 0.9**t) / math.sqrt(1 - 0.999**t) for t in range(1, r.numbers["steps"] + 1)]
    peak = max(range(len(by_hand)), key=by_hand.__getitem__)
    assert r.numbers["peak_step"] == peak + 1
    assert r.numbers["peak_ratio"] == pytest.approx(by_hand[peak], rel=1e-6)
    assert r.numbers["ratio_at_100"] == pytest.approx(by_hand[99], rel=1e-6)
    assert r.verdict == "refuted"  # larger, not "10x too small"


def test_with_bias_correction_the_first_step_is_exactly_eta_per_coordinate():
    r = measured("first-step-not-enormous")
    assert r.numbers["v_hat_over_g2_max_error"] < 1e-6  # v̂₁ = g₁²
    assert r.numbers["first_max"] <= 1 + 1e-4
    assert r.numbers["first_median"] == pytest.approx(1, abs=1e-4)
    assert r.numbers["later_mean"] < r.numbers["first_median"]
    assert r.verdict == "refuted"


def test_adam_is_scale_invariant_without_eps_and_eps_breaks_it_only_for_small_gradients():
    r = measured("adam-scale-invariant")
    assert max(r.numbers["deviation_eps_0"]) < 1e-12
    by_k = dict(zip(r.numbers["k"], r.numbers["deviation_eps_1e-8"]))
    assert by_k[1.0] < 1e-3
    assert by_k[min(by_k)] > 0.5  # k·g far below ε: the update all but vanishes
    ks = sorted(by_k)
    # below k = 1, a smaller scale gives a larger deviation
    assert all(by_k[a] >= by_k[b] for a, b in zip(ks, ks[1:]) if b <= 1)
    assert r.verdict == "confirmed"


def test_steady_state_step_sizes_match_the_ema_of_noise():
    n = measured("adam-steady-step-eta").numbers
    step = {name: n[adam_claims._key("step_over_lr", name, 1e-3)] for name in adam_claims.SNRS}
    assert step["constant"] == pytest.approx(1, abs=1e-3)
    # |μ| = σ: m ≈ μ, v ≈ μ² + σ², so the step is 1/√2
    assert step["snr_1"] == pytest.approx(1 / math.sqrt(2), rel=0.03)
    # μ = 0: m is an EMA of N(0, 1) with std √((1 − β₁)/(1 + β₁)); E|m| = std·√(2/π), and v ≈ 1
    assert step["zero_mean"] == pytest.approx(math.sqrt(0.1 / 1.9) * math.sqrt(2 / math.pi), rel=0.05)
    for name in adam_claims.SNRS:  # the gradient's scale does not matter
        assert n[adam_claims._key("step_over_lr", name, 1e3)] == pytest.approx(step[name], rel=0.01)
    assert measured("adam-steady-step-eta").verdict == "depends"


def test_clipping_verdict_follows_from_the_ratios():
    r = measured("clipping-adam-vs-sgd")
    n = r.numbers
    assert n["sgd_share_clipped"] == 1.0  # 0.1 is below every gradient norm on digits
    assert n["sgd_step_ratio"] < 0.5  # SGD's step is capped
    adam = max(abs(math.log(n["adam_loss_ratio"])), abs(math.log(n["adam_step_ratio"])))
    sgd = max(abs(math.log(n["sgd_loss_ratio"])), abs(math.log(n["sgd_step_ratio"])))
    expected = ("confirmed" if adam < math.log(1.25) and sgd > math.log(1.5) else "refuted" if adam >= sgd
                else "depends")
    assert r.verdict == expected


def test_clipping_rule_on_made_up_numbers():
    judge = adam_claims.judge_clipping
    base = {"sgd_loss_ratio": 18.0, "sgd_step_ratio": 0.35, "adam_grad_norm_cv": 0.35,
            "adam_grad_norm_last_over_first": 0.47}
    assert judge({**base, "adam_loss_ratio": 1.1, "adam_step_ratio": 0.95}).verdict == "confirmed"
    assert judge({**base, "adam_loss_ratio": 0.58, "adam_step_ratio": 1.38}).verdict == "depends"
    assert judge({**base, "adam_loss_ratio": 30.0, "adam_step_ratio": 1.0}).verdict == "refuted"


# --- reused ablations -----------------------------------------------------------------------------

def test_bias_correction_ratio_is_steps_without_over_steps_with():
    r = measured("no-bias-correction-slower")
    n = r.numbers
    assert n["seeds"] == 1  # one seed: the median ratio is the ratio itself
    assert n["value"] == pytest.approx(n["steps_without_lr1e-3"] / n["steps_with_lr1e-3"])
    inside = [1.10 <= v <= 1.30 for v in (n["value"], n["ratio_lr1e-2"])]
    assert r.verdict == ("confirmed" if all(inside) else "depends" if any(inside) else "refuted")


def test_l2_decay_is_a_tenth_of_adamws_at_root_v_10():
    r = measured("adamw-vs-l2-at-sqrt-v-10")
    assert r.numbers["value"] == pytest.approx(0.1, rel=0.05)
    assert r.verdict == "confirmed"


def test_v_survives_in_bf16_far_below_eps_but_not_in_fp16():
    r = measured("eps-bf16-underflow")

    def threshold(dtype):
        """The smallest power of ten g with (1 − β₂)g² at least half the dtype's least subnormal."""
        least = torch.finfo(dtype).tiny * torch.finfo(dtype).eps
        return next(10.0**-e for e in range(45, -1, -1) if 1e-3 * (10.0**-e) ** 2 >= least / 2)

    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
        assert r.numbers[f"smallest_grad_kept_{name}"] == pytest.approx(threshold(dtype)), name
    assert r.numbers["smallest_grad_kept_bf16"] < 1e-8 < r.numbers["smallest_grad_kept_fp16"]
    underflows, helps = r.numbers["v_underflow_share_bf16_eps1e-08"] > 0, r.numbers["value"] > 1.1
    assert r.verdict == ("confirmed" if underflows and helps else "refuted" if not (underflows or helps)
                         else "depends")


def test_beta2_verdict_follows_from_the_recovery_ratios():
    r = measured("beta2-095-adapts")
    n = r.numbers
    assert n["value"] == pytest.approx(n["steps_scale_drop_beta2_0.999"] / n["steps_scale_drop_beta2_0.95"])
    drop, stay = n["value"], n["ratio_target_only"]
    assert r.verdict == ("confirmed" if drop > 2 and stay > 0.8 else "depends" if drop > 2 else "refuted")


# --- the canyon lesson and Reddi's counterexample -------------------------------------------------

def test_canyon_numbers_against_the_recursions_by_hand():
    sgd = measured("sgd-flips-forever").numbers
    assert sgd["sign_flips"] == sgd["steps"] and sgd["max_abs_x_minus_1"] == 0
    assert sgd["y_ratio_per_step"] == pytest.approx(1 - 2 * 0.01)
    # heavy ball: v = 200 → x = −1; v = 0.9·200 − 200 = −20 → Δx = +0.2;
    # x = −0.8, v = 0.9·(−20) − 160 = −178 → Δx = +1.78
    momentum = measured("momentum-bounce-tenth")
    assert momentum.numbers["dx"] == pytest.approx([-2.0, 0.2, 1.78])
    assert momentum.verdict == "confirmed"
    # Adam without bias correction, by hand from (1, 1) with g = (200, 2): x and y stay equal
    x, m, v, points = 1.0, 0.0, 0.0, []
    for _ in range(2):
        g = 200 * x
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        x -= 0.1 * m / (math.sqrt(v) + 1e-8)
        points.append(x)
    adam = measured("adam-equal-speed")
    assert adam.numbers["adam_no_bias_correction_first_points"] == pytest.approx(points, rel=1e-6)
    assert adam.numbers["adam_first_points"][0] == pytest.approx(0.9)  # η·sign(g) with the correction
    assert adam.verdict == "confirmed"


def test_amsgrad_reaches_the_optimum_where_adam_ends_at_the_worst_point():
    r = measured("amsgrad-fixes-reddi")
    assert r.numbers["adam_final_x"] == pytest.approx(1.0)
    assert r.numbers["amsgrad_final_x"] == pytest.approx(-1.0, abs=0.05)
    assert r.verdict == "confirmed"


def test_reddi_rule_on_made_up_numbers():
    judge = canyon.judge_reddi
    assert judge({"adam_final_x": 1.0, "amsgrad_final_x": -0.99, "steps": 9}).verdict == "confirmed"
    assert judge({"adam_final_x": -1.0, "amsgrad_final_x": -0.99, "steps": 9}).verdict == "refuted"
    assert judge({"adam_final_x": 1.0, "amsgrad_final_x": -0.7, "steps": 9}).verdict == "depends"


# --- learning-rate sweeps -------------------------------------------------------------------------

def test_vertex_of_a_log_parabola_is_found_between_grid_points():
    grid = [10 ** (-4 + k / 3) for k in range(10)]
    losses = [math.exp((math.log10(lr) - math.log10(3e-3)) ** 2) for lr in grid]
    assert lrs.vertex_lr(grid, losses) == pytest.approx(3e-3, rel=1e-9)
    assert lrs.vertex_lr(grid, sorted(losses)) == grid[0]  # best at the grid's end: the grid point itself


def test_sweep_claims_read_consistent_numbers_and_follow_their_rules():
    sens, ratio = measured("adam-lr-insensitive"), measured("adam-lr-10-100x-smaller")
    n = sens.numbers
    step = math.log10(n["grid_step"])
    for o in ("sgd", "adam"):
        assert n[f"{o}_width"] / step == pytest.approx(round(n[f"{o}_width"] / step))  # whole grid steps
        assert abs(math.log10(n[f"{o}_vertex_lr"] / n[f"{o}_best_lr"])) <= step / 2 + 1e-9
    assert n["adam_best_lr"] < n["sgd_best_lr"]
    assert sens.verdict == ("confirmed" if n["adam_width"] - n["sgd_width"] >= 1 - 1e-9 else "refuted")
    r = n["sgd_vertex_lr"] / n["adam_vertex_lr"]
    assert ratio.verdict == ("confirmed" if 10 / 1.25 <= r <= 100 * 1.25 else "refuted")
    lion_small, lion_large = measured("lion-lr-3x-smaller"), measured("lion-larger-lr")
    q = lion_small.numbers["adamw_vertex_lr"] / lion_small.numbers["lion_vertex_lr"]
    assert lion_small.verdict == ("confirmed" if 3 / 1.25 <= q <= 10 * 1.25 else "depends" if q > 1
                                  else "refuted")
    assert lion_large.verdict == ("confirmed" if 1 / q > 1.25 else "refuted" if 1 / q < 1 / 1.25
                                  else "depends")


def test_lion_moves_every_coordinate_with_a_signal_by_exactly_eta():
    r = measured("lion-step-is-eta")
    n = r.numbers
    assert n["share_eta"] + n["share_zero"] + n["share_other"] == pytest.approx(1)
    assert n["share_other"] == 0
    assert n["share_zero"] >= n["share_never_a_gradient"] > 0  # digits has constant pixels
    assert r.verdict == "depends"


# --- the report and the command -------------------------------------------------------------------

def test_markdown_report_has_a_row_and_a_section_per_claim():
    results = [measured("lion-half-state"), measured("adafactor-half-memory"), measured("sgd-flips-forever")]
    text = report_markdown(results, command="optimlab claims --quick", seconds=1.0)
    assert "`optimlab claims --quick`: 3 claims, 2 confirmed, 0 refuted, 1 depends" in text
    for r in results:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{r.id}` |"))
        assert row.count(" | ") == 4  # five cells: pipes inside the text are escaped
        assert f"**{r.verdict}**" in row
        assert f"### `{r.id}` (lesson {r.seed}): {r.verdict}" in text
    assert measured("adafactor-half-memory").condition in text


def test_json_has_exactly_the_claims_list_with_the_required_fields():
    data = to_json([measured("memory-7b-state")])
    assert list(data) == ["claims"]
    entry = data["claims"][0]
    assert {"id", "seed", "lesson", "claim", "measured", "verdict"} <= set(entry)
    assert (entry["seed"], entry["lesson"]) == ("canyon", lessons.get("canyon").title)
    assert entry["numbers"]["optimizer_state_bytes"] == pytest.approx(56e9)


def test_cli_json_subset(capsys):
    assert main(["claims", "memory-70b-state", "lion-3x-memory", "--quick", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [c["id"] for c in data["claims"]] == ["lion-3x-memory", "memory-70b-state"]  # catalogue order
    assert [c["verdict"] for c in data["claims"]] == ["refuted", "refuted"]
    assert [c["seed"] for c in data["claims"]] == ["adam-vs-sgd", "curvature-bets"]
    assert all(c["claim"] and c["measured"] for c in data["claims"])


def test_cli_markdown_to_a_file_and_the_list(tmp_path, capsys):
    out = tmp_path / "report.md"
    assert main(["claims", "memory-7b-state", "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# The lessons' claims, measured")
    assert "| `memory-7b-state` | canyon | **confirmed**" in text
    capsys.readouterr()
    assert main(["claims", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(c.id in listed for c in catalogue())


def test_cli_unknown_claim_exits_2_with_one_line(capsys):
    assert main(["claims", "lion-3x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown claim 'lion-3x'" in err


def test_optimlab_lab_claims_is_the_function_even_after_its_package_is_imported():
    import optimlab.lab.claim_checks  # noqa: F401  (importing a submodule must not rebind the name)

    assert optimlab.lab.claims is claims
    assert optimlab.lab.claims(["memory-7b-state"], quick=True)[0].id == "memory-7b-state"
