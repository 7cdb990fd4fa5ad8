"""optimlab breakit: every ablation at reduced size, its numbers checked against expectations derived
independently of the code under test (closed forms, the data's own statistics, the dtypes' ranges)."""

from __future__ import annotations

import collections
import json
import math

import numpy as np
import pytest
import torch

from optimlab.cli import main
from optimlab.lab import ablations, breakit
from optimlab.lab.ablations import beta2, bias, decay
from optimlab.lab.ablations.common import Settings, first_below, single_thread

QUICK = Settings(quick=True)


@pytest.fixture(scope="module")
def results():
    """Each ablation run once at reduced size, on demand."""
    cache = {}

    def get(name):
        if name not in cache:
            with single_thread():
                cache[name] = ablations.get(name).run(QUICK)
        return cache[name]

    return get


# --- bias correction ----------------------------------------------------------------------------


def test_first_step_sizes_follow_the_closed_form():
    # with correction m̂₁/√v̂₁ = g/|g|: every coordinate moves by lr; without, by (1 − β₁)/√(1 − β₂) · lr
    assert bias.first_step_ratio(True) == pytest.approx(1.0, abs=1e-3)
    assert bias.first_step_ratio(False) == pytest.approx(0.1 / math.sqrt(0.001), rel=1e-3)


def test_without_bias_correction_adam_is_faster_at_its_default_lr_and_slower_at_ten_times_it(results):
    r = results("bias-correction")
    d = r.details
    # larger early steps (up to ~6.5× at t ≈ 10) act as a larger lr: faster at 1e-3, worse at 1e-2
    assert r.value < 0.6 and d["steps_without_lr0.001"] < d["steps_with_lr0.001"]
    assert d["ratio_lr0.01"] > 1.0
    assert r.verdict == "refuted"
    assert r.spread[0] <= r.value <= r.spread[1]


def test_first_below():
    assert first_below([3.0, 2.0, 0.5, 0.1], 0.5, every=5) == 10
    assert first_below([3.0, 2.0], 0.5) == math.inf


# --- Adam + L2 vs AdamW -------------------------------------------------------------------------


def test_adamw_shrinks_a_zero_gradient_weight_by_exactly_one_minus_lr_lambda_per_step():
    curves = decay.shrink_curves("adamw", decay.LAMBDA, steps=50, n=8)
    expected = [(1 - decay.LR * decay.LAMBDA) ** t for t in range(51)]
    np.testing.assert_allclose(curves[0.0], expected, rtol=1e-6)


def test_l2_inside_adam_decays_at_lambda_over_sqrt_v(results):
    r = results("decoupled-decay")
    assert r.value == pytest.approx(0.1, rel=0.1)  # the lesson's quick check: λ/√v̂ = λ/10
    d = r.details
    for s in (1, 10, 100):
        assert d[f"kappa_over_lambda_adamw_s{s}"] == pytest.approx(1.0, rel=0.01)  # AdamW: λ at every scale
    assert d["kappa_over_lambda_adam_s100"] == pytest.approx(0.01, rel=0.15)
    assert d["kappa_over_lambda_adam_s1"] == pytest.approx(1.0, rel=0.1)
    # zero loss gradient: Adam + L2 takes steps of at most lr·sign(θ), so halving from 1 needs ≥ 0.5/lr steps
    assert 0.5 / decay.LR <= d["halving_steps_adam_zero_grad"] <= 0.7 / decay.LR
    assert r.verdict == "confirmed"


# --- ε with low-precision state -----------------------------------------------------------------


def test_eps_changes_nothing_in_bf16_because_v_never_underflows_but_fp16_needs_it(results):
    r = results("eps-bf16")
    d = r.details
    assert torch.finfo(torch.bfloat16).tiny == torch.finfo(torch.float32).tiny  # the reason, in two dtypes
    assert d["v_underflow_share_bf16_eps1e-08"] == 0.0
    assert r.value == pytest.approx(1.0, abs=0.03)
    assert d["v_underflow_share_fp16_eps1e-06"] > 0.01  # fp16: (1 − β₂)g² < 6e-8 rounds to zero
    assert d["fp16_eps1e-8_failed_seeds"] >= 1
    assert d["loss_fp16_eps1e-06"] < 0.5
    assert r.verdict == "refuted"


# --- gradient clipping --------------------------------------------------------------------------


def test_clipping_matters_for_adam_and_more_for_sgd_on_a_spiky_task(results):
    r = results("clipping")
    d = r.details
    assert r.value > 1.5 and r.verdict == "refuted"
    assert d["sgd_loss_no_clip"] > 3 * d["sgd_loss_clip"]
    # the mechanism: without clipping the bad batch keeps steering Adam's update (through m)
    assert d["adam_spike_cosine_lag5_no_clip"] > d["adam_spike_cosine_lag5_clip"] + 0.15


# --- β₂ under a non-stationary objective --------------------------------------------------------


def test_least_squares_optimum_matches_numpy():
    x, y, optimum = beta2.data()
    design = np.c_[x.numpy().astype(np.float64), np.ones(len(x))]
    w, *_ = np.linalg.lstsq(design, y.numpy().astype(np.float64), rcond=None)
    assert optimum == pytest.approx(np.mean((design @ w - y.numpy()) ** 2), rel=1e-6)


def test_beta2_095_recovers_faster_only_when_the_gradient_scale_drops(results):
    r = results("beta2")
    d = r.details
    assert r.value > 3  # stale v̂ under β₂ = 0.999 after a 100× drop
    assert d["ratio_target_only"] < 1  # scale unchanged: 0.999 is the faster one
    assert d["step_over_lr_after_scale_drop_beta2_0.999"] < d["step_over_lr_after_scale_drop_beta2_0.95"]
    assert d["forget_steps_0.999"] == pytest.approx(math.log(100) / -math.log(0.999))
    assert r.verdict == "depends"


# --- warmup -------------------------------------------------------------------------------------


def test_without_warmup_the_post_ln_transformer_collapses_to_the_unigram_model_at_a_high_lr(results):
    from pydoc_data.topics import topics

    text = "".join(topics[k] for k in sorted(topics))
    counts = collections.Counter(text[: int(len(text) * 0.9)])
    total = sum(counts.values())
    unigram = -sum(c / total * math.log(c / total) for c in counts.values())  # the corpus's own statistics
    r = results("warmup")
    d = r.details
    assert d["unigram_entropy"] == pytest.approx(unigram, rel=1e-6)
    assert abs(d["loss_no_warmup_high_lr"] - unigram) < 0.15
    assert r.value > 0.2  # warmup rescues it
    assert abs(d["gap_good_lr"]) < 0.1  # at the good lr warmup changes little
    assert r.verdict == "depends"


# --- the API and the command line ---------------------------------------------------------------


def test_breakit_writes_a_figure_and_json(tmp_path):
    out = breakit(["decoupled_decay"], quick=True, out=tmp_path)
    assert [r.name for r in out] == ["decoupled-decay"]
    saved = json.loads((tmp_path / "breakit.json").read_text())
    assert saved[0]["value"] == pytest.approx(out[0].value)
    assert saved[0]["measure"] == ablations.ABLATIONS["decoupled-decay"].measure
    png = (tmp_path / "breakit.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "decoupled-decay" in ablations.table(out) and "confirmed" in ablations.table(out)


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="available: bias-correction"):
        breakit(["no-such-thing"])
    with pytest.raises(ValueError, match="seeds"):
        breakit(["decoupled-decay"], seeds=0)
    with pytest.raises(ValueError, match="workers"):
        breakit(["decoupled-decay"], workers=0)


def test_cli_json_and_errors(capsys):
    assert main(["breakit", "decoupled-decay", "--quick", "--json", "--workers", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["name"] == "decoupled-decay" and data[0]["value"] == pytest.approx(0.1, rel=0.1)
    assert main(["breakit", "nonsense", "--workers", "1"]) == 2
    assert "unknown ablation 'nonsense'" in capsys.readouterr().err
    assert main(["breakit", "--list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ablations.names())
    assert listing.count("rule") == len(ablations.names())
