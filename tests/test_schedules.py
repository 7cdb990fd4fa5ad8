"""optimlab.schedules: closed forms at the boundaries, torch's own schedulers, resume, CLI."""

import io
import json
import math
import pickle
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.optim import lr_scheduler as L

import optimlab
from optimlab import schedules as S
from optimlab.cli import main


# --- closed forms at first, last, end of warmup and each milestone --------------------------------------

def test_warmup_cosine_is_the_seed_recipe():
    s = S.warmup_cosine(total_steps=100_000, warmup_steps=2000, floor=0.1)
    assert s(0) == 0.0                       # seed: step / warmup_steps
    assert s(1000) == 0.5
    assert s(2000) == 1.0                    # end of warmup: the peak
    assert s(51_000) == pytest.approx(0.55)  # halfway through the cosine: 0.1 + 0.9 / 2
    assert s(100_000) == pytest.approx(0.1, abs=1e-15)
    assert s(150_000) == pytest.approx(0.1, abs=1e-15)  # held at the floor, never climbs back

    def seed_lambda(step):  # the lesson's LambdaLR function, with math.pi for its 3.14159
        if step < 2000:
            return step / 2000
        progress = (step - 2000) / (100_000 - 2000)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(progress * math.pi))
    for t in [0, 1, 1999, 2000, 2001, 10_000, 77_777, 99_999, 100_000]:
        assert s(t) == pytest.approx(seed_lambda(t), abs=1e-15)


def test_cosine_and_floor_boundaries():
    assert S.cosine(10)(0) == 1.0 and S.cosine(10)(10) == 0.0 and S.cosine(10)(5) == pytest.approx(0.5)
    c = S.cosine(10, floor=0.2)
    assert c(0) == 1.0 and c(5) == pytest.approx(0.6)
    assert c(10) == pytest.approx(0.2) and c(11) == pytest.approx(0.2)


@pytest.mark.parametrize("shape,mid", [("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - math.sqrt(0.5))])
def test_wsd_phases(shape, mid):
    s = S.wsd(total_steps=1000, warmup_steps=100, decay_steps=200, shape=shape, floor=0.0)
    assert [s(0), s(50), s(100), s(500), s(799), s(800)] == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert s(900) == pytest.approx(mid)
    assert s(1000) == pytest.approx(0.0, abs=1e-15) and s(5000) == pytest.approx(0.0, abs=1e-15)
    assert S.wsd(1000).decay_steps == 200  # default cool-down: the last 20%
    assert S.wsd(1000, decay_steps=100, floor=0.1)(1000) == pytest.approx(0.1)


def test_other_closed_forms():
    assert [S.step(10, 0.5)(t) for t in (0, 9, 10, 19, 20)] == [1, 1, 0.5, 0.5, 0.25]
    m = S.multistep([30, 60, 80], gamma=0.1)
    assert [m(t) for t in (0, 29)] == [1.0, 1.0]
    assert [m(t) for t in (30, 59, 60, 80, 1000)] == pytest.approx([0.1, 0.1, 0.01, 0.001, 0.001])
    assert S.exponential(0.9)(3) == pytest.approx(0.729)
    i = S.inverse_sqrt(100)
    assert [i(0), i(50), i(100), i(400), i(10_000)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.1])
    assert [S.linear_decay(10, 0.1)(t) for t in (0, 5, 10, 20)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    assert [S.polynomial(10, power=2)(t) for t in (0, 5, 10, 12)] == pytest.approx([1.0, 0.25, 0.0, 0.0])
    w = S.linear_warmup(4, start=0.2)
    assert [w(t) for t in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    r = S.cosine_restarts(period=10, mult=2, floor=0.0, decay=0.5)
    assert [r(0), r(5), r(10), r(20), r(30), r(70)] == pytest.approx([1.0, 0.5, 0.5, 0.25, 0.25, 0.125])
    oc = S.one_cycle(100, pct_start=0.3, div_factor=25, final_div_factor=1e4)
    assert oc(0) == pytest.approx(1 / 25) and oc(29) == 1.0 and oc(99) == pytest.approx(1 / 25 / 1e4)
    cy = S.cyclical(4, low=0.2)
    assert [cy(t) for t in (0, 2, 4, 6, 8)] == pytest.approx([0.2, 0.6, 1.0, 0.6, 0.2])
    assert S.constant(0.5)(123) == 0.5


def test_composition():
    seq = S.sequence([S.constant(1.0), S.linear_decay(10), S.constant(0.05)], boundaries=[5, 15])
    assert [seq(t) for t in (0, 4, 5, 10, 14, 15, 100)] == pytest.approx([1, 1, 1, 0.5, 0.1, 0.05, 0.05])
    w = S.warmup(S.step(10, 0.5), 4)
    assert [w(t) for t in (0, 2, 4, 13, 14)] == pytest.approx([0.0, 0.5, 1.0, 1.0, 0.5])
    half = S.warmup(S.constant(0.5), 2)  # the ramp meets the schedule it leads into: no jump
    assert [half(t) for t in range(4)] == pytest.approx([0.0, 0.25, 0.5, 0.5])
    assert seq.key_steps(100) == [0, 5, 15]


# --- monotonicity where it should hold ------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(total=st.integers(2, 3000), frac=st.floats(0, 0.9), floor=st.floats(0, 1))
def test_warmup_cosine_rises_then_falls_within_bounds(total, frac, floor):
    warm = min(int(frac * total), total - 1)
    s = S.warmup_cosine(total, warm, floor)
    values = [s(t) for t in range(total + 3)]
    assert all(a <= b for a, b in zip(values[:warm], values[1:warm + 1]))
    assert all(a >= b - 1e-15 for a, b in zip(values[warm:], values[warm + 1:]))
    assert all(min(floor, 0.0 if warm else floor) - 1e-12 <= v <= 1.0 for v in values)


@pytest.mark.parametrize("s,peak", [(S.cosine(50, 0.1), 0), (S.linear_decay(50), 0),
                                    (S.polynomial(50, 3.0), 0), (S.step(7), 0),
                                    (S.multistep([5, 9, 30]), 0), (S.exponential(0.95), 0),
                                    (S.inverse_sqrt(3), 3), (S.wsd(80, 0, 30, "1-sqrt"), 0),
                                    (S.wsd(80, 0, 30, "cosine"), 0), (S.one_cycle(60, 0.05), 2)])
def test_decays_never_increase_after_the_peak(s, peak):
    values = [s(t) for t in range(120)]
    assert values[peak] == 1.0 and values[:peak] == sorted(values[:peak])  # rises to the peak ...
    assert all(a >= b - 1e-15 for a, b in zip(values[peak:], values[peak + 1:])), s  # ... then never rises


# --- equality with torch's schedulers over many updates -------------------------------------------------

def lrs(make, n, lr=0.5, adam=False):
    """lr (and momentum) used by each of n updates when `make(optimizer)` drives the optimizer."""
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([p], lr=lr) if adam else torch.optim.SGD([p], lr=lr, momentum=0.9)
    sched = make(opt)
    out, mom = [], []
    for _ in range(n):
        g = opt.param_groups[0]
        out.append(g["lr"])
        mom.append(g["betas"][0] if adam else g["momentum"])
        opt.step()
        sched.step()
    return out, mom


TORCH_TWINS = [
    (lambda o: L.CosineAnnealingLR(o, T_max=100, eta_min=0.05), S.cosine(100, floor=0.1), 101),
    (lambda o: L.CosineAnnealingLR(o, T_max=37), S.cosine(37), 38),
    (lambda o: L.LinearLR(o, 1.0, 0.1, total_iters=100), S.linear_decay(100, floor=0.1), 150),
    (lambda o: L.LinearLR(o, 0.25, 1.0, total_iters=10), S.linear_warmup(10, start=0.25), 30),
    (lambda o: L.PolynomialLR(o, total_iters=100, power=1.0), S.linear_decay(100), 130),
    (lambda o: L.PolynomialLR(o, total_iters=100, power=2.0), S.polynomial(100, power=2.0), 150),
    (lambda o: L.StepLR(o, step_size=7, gamma=0.5), S.step(7, gamma=0.5), 100),
    (lambda o: L.MultiStepLR(o, milestones=[10, 25, 60], gamma=0.3), S.multistep([10, 25, 60], 0.3), 100),
    (lambda o: L.ExponentialLR(o, gamma=0.97), S.exponential(0.97), 200),
    (lambda o: L.CosineAnnealingWarmRestarts(o, T_0=10, eta_min=0.05), S.cosine_restarts(10, floor=0.1), 100),
    (lambda o: L.CosineAnnealingWarmRestarts(o, T_0=10, T_mult=2), S.cosine_restarts(10, mult=2), 320),
    (lambda o: L.OneCycleLR(o, 0.5, total_steps=100, cycle_momentum=False), S.one_cycle(100), 100),
    (lambda o: L.OneCycleLR(o, 0.5, total_steps=100, pct_start=0.25, anneal_strategy="linear",
                            div_factor=10.0, final_div_factor=100.0, cycle_momentum=False),
     S.one_cycle(100, 0.25, div_factor=10, final_div_factor=100, anneal="linear"), 100),
    (lambda o: L.OneCycleLR(o, 0.5, total_steps=90, three_phase=True, cycle_momentum=False),
     S.one_cycle(90, three_phase=True), 90),
    (lambda o: L.CyclicLR(o, 0.05, 0.5, 7, 4, cycle_momentum=False), S.cyclical(7, 4, low=0.1), 200),
    (lambda o: L.CyclicLR(o, 0.05, 0.5, 5, mode="triangular2", cycle_momentum=False),
     S.cyclical(5, low=0.1, mode="triangular2"), 200),
    (lambda o: L.CyclicLR(o, 0.05, 0.5, 6, mode="exp_range", gamma=0.99, cycle_momentum=False),
     S.cyclical(6, low=0.1, mode="exp_range", gamma=0.99), 200),
    (lambda o: L.SequentialLR(o, [L.LinearLR(o, 0.1, 1.0, 5), L.ExponentialLR(o, 0.9)], milestones=[5]),
     S.sequence([S.linear_warmup(5, 0.1), S.exponential(0.9)], boundaries=[5]), 40),
]


@pytest.mark.parametrize("make_torch,schedule,n", TORCH_TWINS, ids=[repr(s)[:40] for _, s, _ in TORCH_TWINS])
def test_equal_to_torch(make_torch, schedule, n):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecation chatter (SequentialLR)
        theirs, _ = lrs(make_torch, n)
    ours, _ = lrs(lambda o: S.attach(o, schedule), n)
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("adam", [False, True])
def test_momentum_cycling_equal_to_torch(adam):
    theirs = lrs(lambda o: L.OneCycleLR(o, 0.5, total_steps=50), 50, adam=adam)
    ours = lrs(lambda o: S.attach(o, S.one_cycle(50), momentum=S.one_cycle_momentum(50)), 50, adam=adam)
    assert ours[0] == pytest.approx(theirs[0], abs=1e-15) and ours[1] == pytest.approx(theirs[1], abs=1e-15)
    assert min(ours[1]) == pytest.approx(0.85) and max(ours[1]) == pytest.approx(0.95)
    theirs = lrs(lambda o: L.CyclicLR(o, 0.05, 0.5, 5, mode="triangular2"), 60, adam=adam)
    ours = lrs(lambda o: S.attach(o, S.cyclical(5, low=0.1, mode="triangular2"),
                                  momentum=S.cyclical_momentum(5, mode="triangular2")), 60, adam=adam)
    assert ours == (pytest.approx(theirs[0], abs=1e-15), pytest.approx(theirs[1], abs=1e-15))


def test_groups_keep_their_ratios():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = optimlab.create("adamw", [{"params": [a], "lr": 1e-3}, {"params": [b], "lr": 1e-2}])
    sched = S.attach(opt, S.warmup_cosine(20, 5))
    for t in range(25):
        m = S.warmup_cosine(20, 5)(t)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3 * m, 1e-2 * m], abs=1e-18)
        opt.step()
        sched.step()


# --- resume: a checkpoint at update k continues exactly as the uninterrupted run ------------------------

def make_run(kind):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = (optimlab.create("adamw", model.parameters(), lr=1e-2) if kind == "optimlab"
           else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    sched = S.attach(opt, S.wsd(total_steps=30, warmup_steps=5, decay_steps=10, shape="1-sqrt"))
    return model, opt, sched


def train(model, opt, sched, start, stop, seen):
    for t in range(start, stop):
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(t))
        seen.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        sched.step()


@pytest.mark.parametrize("kind", ["optimlab", "torch"])
def test_resume_gives_the_same_lrs_and_weights(kind):
    reference, opt, sched = make_run(kind)
    straight = []
    train(reference, opt, sched, 0, 30, straight)

    model, opt, sched = make_run(kind)
    resumed = []
    train(model, opt, sched, 0, 12, resumed)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)  # only numbers and descriptions: no pickled code
    model2, opt2, sched2 = make_run(kind)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    assert sched2.last_epoch == 12
    train(model2, opt2, sched2, 12, 30, resumed)
    assert resumed == straight and len(set(straight)) > 10  # the lr really moved
    assert torch.equal(model2.weight, reference.weight) and torch.equal(model2.bias, reference.bias)


def test_loading_sets_the_lr_even_without_the_optimizer_state():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = S.attach(opt, S.cosine(10))
    for _ in range(4):
        opt.step()
        sched.step()
    state = sched.state_dict()
    fresh = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    again = S.attach(fresh, S.cosine(10))
    again.load_state_dict(state)
    assert fresh.param_groups[0]["lr"] == pytest.approx(S.cosine(10)(4))
    assert again.get_last_lr() == [S.cosine(10)(4)]
    other = S.attach(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), S.cosine(20))
    with pytest.warns(UserWarning, match="checkpoint was saved with"):
        other.load_state_dict(state)


# --- descriptions, errors, CLI -------------------------------------------------------------------------

EXAMPLES = [S.constant(0.3), S.linear_warmup(5), S.cosine(10, 0.1), S.warmup_cosine(100, 10),
            S.wsd(100, 5, 20), S.linear_decay(9), S.polynomial(9, 2.0), S.step(3), S.multistep([2, 5]),
            S.exponential(0.9),
            S.inverse_sqrt(4), S.cosine_restarts(5, 2), S.one_cycle(50), S.one_cycle_momentum(50),
            S.cyclical(3), S.cyclical_momentum(3), S.sequence([S.constant(), S.cosine(5)], [3])]


@pytest.mark.parametrize("s", EXAMPLES, ids=lambda s: s.name)
def test_describe_round_trips(s):
    d = s.describe()
    assert S.from_dict(json.loads(json.dumps(d))) == s
    assert pickle.loads(pickle.dumps(s)) == s
    assert [S.from_dict(d)(t) for t in range(12)] == [s(t) for t in range(12)]


@pytest.mark.parametrize("make,match", [
    (lambda: S.cosine(-5), "total_steps must be >= 1"),
    (lambda: S.cosine(10.5), "whole number"),
    (lambda: S.cosine(10, floor=1.5), "floor must be in"),
    (lambda: S.warmup_cosine(100, 100), "warmup_steps .* must be less than total_steps"),
    (lambda: S.warmup_cosine(100, 200), "must be less than total_steps"),
    (lambda: S.wsd(100, 50, 60), "must not exceed total_steps"),
    (lambda: S.wsd(100, shape="sqrt"), "shape must be one of"),
    (lambda: S.multistep([30, 10]), "strictly increasing"),
    (lambda: S.multistep([]), "non-empty"),
    (lambda: S.exponential(0.0), "gamma must be in"),
    (lambda: S.one_cycle(10, pct_start=0.05), "phase of no updates"),
    (lambda: S.one_cycle(10, pct_start=1.0), "pct_start must be in"),
    (lambda: S.cyclical(0), "step_size_up must be >= 1"),
    (lambda: S.sequence([S.constant()], [5]), "needs 0 boundaries"),
    (lambda: S.cosine(10)(-1), "non-negative"),
    (lambda: S.cosine(10)(2.5), "whole number"),
    (lambda: S.parse("cosin:total_steps=3"), "did you mean 'cosine'"),
    (lambda: S.parse("cosine:total=3"), "did you mean 'total_steps'"),
    (lambda: S.attach(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1), S.one_cycle_momentum(9)),
     "momentum values"),
    (lambda: S.attach(torch.optim.Adagrad([torch.nn.Parameter(torch.zeros(1))]), S.one_cycle(9),
                      momentum=S.one_cycle_momentum(9)), "no momentum"),
])
def test_bad_arguments_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_parse_text_form():
    assert S.parse("multistep:milestones=[30,60,80],gamma=0.5") == S.multistep([30, 60, 80], 0.5)
    expected = S.wsd(100, decay_steps=10, shape="1-sqrt")
    assert S.parse("wsd:total_steps=100,decay_steps=10,shape=1-sqrt") == expected


def test_cli_json_matches_the_schedule(capsys):
    assert main(["schedule", "warmup_cosine", "total_steps=40", "warmup_steps=8", "--lr", "0.01",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    s = S.warmup_cosine(40, 8)
    assert out["t"] == list(range(41)) and out["multiplier"] == [s(t) for t in range(41)]
    assert out["lr"] == pytest.approx([0.01 * s(t) for t in range(41)])
    assert main(["schedule", "cosine", "total_steps=100", "--warmup", "10", "--json", "--every", "30"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["t"] == [0, 30, 60, 90, 110] and out["multiplier"][-1] == 0.0


def test_cli_table_plot_and_errors(capsys, tmp_path):
    assert main(["schedule", "multistep", "milestones=[3,6]", "gamma=0.5", "--steps", "8"]) == 0
    text = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[3:-1]}
    assert rows["3"] == ["0.5", "<-", "phase"] and rows["6"] == ["0.25", "<-", "phase"]
    assert rows["8"] == ["0.25"]
    assert text.splitlines()[-1].startswith("shape: ███▃▃▃▁▁▁")
    png = tmp_path / "s.png"
    assert main(["schedule", "one_cycle", "total_steps=50", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["schedule", "exponential", "gamma=0.9"]) == 2
    assert "no natural length; pass --steps N" in capsys.readouterr().err
    assert main(["schedule", "warmup_cosine", "total_steps=10", "warmup_steps=20"]) == 2
    assert main(["schedule"]) == 0 and "warmup_cosine" in capsys.readouterr().out
