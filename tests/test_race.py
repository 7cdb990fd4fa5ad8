"""Races: the lessons' hand-computed canyon steps, Reddi et al.'s counterexample, noise, user objects, CLI."""

import json
import math

import numpy as np
import pytest
import torch

import optimlab
import optimlab.landscapes
from optimlab.cli import main
from optimlab.lab import race

# --- the canyon L = 100x² + y² from (1, 1), against the canyon lesson's hand-computed steps -----------------

SEED_SGD = [(1.0, 1.0), (-1.0, 0.980), (1.0, 0.960), (-1.0, 0.941)]  # α = 0.01
SEED_MOMENTUM = [(1.0, 1.0), (-1.0, 0.980), (-0.800, 0.942), (0.980, 0.890)]  # α = 0.01, β = 0.9
SEED_ADAM = [(1.0, 1.0), (0.684, 0.684), (0.271, 0.271)]  # α = 0.1, betas (0.9, 0.999), no bias correction


def canyon_grad(x, y):
    return 200 * x, 2 * y


def heavy_ball(lr, beta, steps, x=1.0, y=1.0):
    """v ← βv + g; θ ← θ − αv (the lesson's formula), in plain floats."""
    out, vx, vy = [(x, y)], 0.0, 0.0
    for _ in range(steps):
        gx, gy = canyon_grad(x, y)
        vx, vy = beta * vx + gx, beta * vy + gy
        x, y = x - lr * vx, y - lr * vy
        out.append((x, y))
    return np.array(out)


def adam_reference(grad, steps, lr, b1, b2, start, bias_correction, eps=1e-8, amsgrad=False, schedule=None,
                   bounds=None):
    """Kingma & Ba's Algorithm 1 per coordinate in plain floats (+ Reddi et al.'s AMSGrad max, projection)."""
    θ = list(start)
    m, v, v_max = [0.0] * len(θ), [0.0] * len(θ), [0.0] * len(θ)
    out = [tuple(θ)]
    for t in range(1, steps + 1):
        g = grad(t, *θ)
        α = lr * (schedule(t) if schedule else 1.0)
        for i in range(len(θ)):
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            v_max[i] = max(v_max[i], v[i])
            denom = v_max[i] if amsgrad else v[i]
            c1, c2 = (1 - b1**t, 1 - b2**t) if bias_correction else (1.0, 1.0)
            θ[i] -= α * (m[i] / c1) / (math.sqrt(denom / c2) + eps)
            if bounds:
                θ[i] = min(max(θ[i], bounds[0]), bounds[1])
        out.append(tuple(θ))
    return np.array(out)


def test_sgd_bounces_wall_to_wall_as_the_seed_computes():
    r = race("canyon", "sgd", steps=100)
    pos = r["sgd"].positions
    np.testing.assert_allclose(pos[:4], SEED_SGD, atol=1e-3)
    # closed form at α = 0.01: x ← (1 − 200α)x = −x, y ← (1 − 2α)y = 0.98y
    t = np.arange(101)
    np.testing.assert_allclose(pos[:, 0], (-1.0) ** t, rtol=0, atol=1e-12)
    np.testing.assert_allclose(pos[:, 1], 0.98**t, rtol=1e-12)
    assert np.all(np.sign(pos[1:, 0]) == -np.sign(pos[:-1, 0]))  # x flips sign every single step
    row = r.table()[0]
    assert row["settings"] == "lr=0.01"  # the landscape's default, the lesson's α
    assert row["final_loss"] == pytest.approx(100 + 0.98**200, rel=1e-12)
    assert row["distance"] == pytest.approx(math.hypot(1, 0.98**100), rel=1e-12)


def test_momentum_damps_the_bounce_as_the_seed_computes():
    pos = race("canyon", "momentum", steps=100)["momentum"].positions
    np.testing.assert_allclose(pos[:4], SEED_MOMENTUM, atol=1e-3)
    np.testing.assert_allclose(pos, heavy_ball(0.01, 0.9, 100), rtol=1e-10, atol=1e-12)
    # both modes of the heavy ball shrink by √β per step here: |x| has fallen ~√0.9¹⁰⁰ ≈ 0.005
    assert np.abs(pos[90:, 0]).max() < 0.05 < np.abs(pos[:10, 0]).max()


def test_adam_without_bias_correction_matches_the_seeds_steps():
    pos = race("canyon", "adam_no_bias_correction", steps=50)["adam_no_bias_correction"].positions
    np.testing.assert_allclose(pos[:3], SEED_ADAM, atol=1.5e-3)  # the seed rounds to three digits
    ref = adam_reference(lambda t, x, y: canyon_grad(x, y), 50, 0.1, 0.9, 0.999, (1.0, 1.0), False)
    np.testing.assert_allclose(pos, ref, rtol=1e-10, atol=1e-12)


def test_default_adam_keeps_bias_correction_and_walks_straight_down():
    r = race("canyon", "adam", steps=100)
    pos = r["adam"].positions
    assert r["adam"].settings == "lr=0.1"
    # with bias correction m̂/√v̂ = g/|g| at t = 1: the first step is α·sign(g) in both coordinates
    np.testing.assert_allclose(pos[1], [0.9, 0.9], atol=1e-8)
    ref = adam_reference(lambda t, x, y: canyon_grad(x, y), 100, 0.1, 0.9, 0.999, (1.0, 1.0), True)
    np.testing.assert_allclose(pos, ref, rtol=1e-10, atol=1e-12)
    # the update is invariant to each coordinate's gradient scale, so from x = y it stays on the diagonal
    assert np.abs(pos[:, 0] - pos[:, 1]).max() < 1e-6
    table = {row["optimizer"]: row for row in race("canyon", "sgd,momentum,adam", steps=100).table()}
    final = {name: row["final_loss"] for name, row in table.items()}
    assert final["adam"] < final["momentum"] < 1e-2 < 100 < final["sgd"]


def test_explicit_hyperparameters_win_over_the_landscape_and_presets_over_it_too():
    r = race("canyon", "sgd:lr=0.001,momentum:momentum=0.5,adam:lr=0.01", steps=3)
    assert r.labels == ["sgd:lr=0.001", "momentum:momentum=0.5", "adam:lr=0.01"]
    np.testing.assert_allclose(r["sgd:lr=0.001"].positions[1], [1 - 0.001 * 200, 1 - 0.001 * 2])
    np.testing.assert_allclose(r["momentum:momentum=0.5"].positions, heavy_ball(0.01, 0.5, 3), rtol=1e-12)
    np.testing.assert_allclose(r["adam:lr=0.01"].positions[1], [0.99, 0.99], atol=1e-8)


def test_an_explicit_path_is_honoured_and_agrees_with_the_plain_one():
    # races default to path="tensor" (two numbers: no kernel overhead); an explicit path is honoured
    r = race("canyon", "adam,adam:path=foreach,momentum,momentum:path=foreach", steps=50)
    assert r.runs[1].settings == "lr=0.1, path=foreach"
    # The foreach path folds scalar factors into its multi-tensor ops: a few ulps, not bit for bit.
    np.testing.assert_allclose(r.runs[0].positions, r.runs[1].positions, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(r.runs[2].positions, r.runs[3].positions, rtol=1e-12, atol=1e-15)


def test_user_classes_and_factories_race_too():
    r = race("canyon", {"torch SGD": torch.optim.SGD, "torch Adam": torch.optim.Adam,
                        "slow": lambda params: torch.optim.SGD(params, lr=0.001), "ours": "adam"}, steps=30)
    # a class whose name is a registered optimizer gets that optimizer's landscape defaults
    np.testing.assert_allclose(r["torch SGD"].positions[:4], SEED_SGD, atol=1e-3)
    np.testing.assert_allclose(r["torch Adam"].positions, r["ours"].positions, rtol=1e-12, atol=1e-14)
    assert r["slow"].settings == "user factory"
    np.testing.assert_allclose(r["slow"].positions[1], [0.8, 0.998])  # the factory is used as written
    assert race("canyon", [torch.optim.LBFGS], steps=2).labels == ["LBFGS"]  # its own defaults, a closure
    assert race("canyon", "sgd,sgd", steps=1).labels == ["sgd", "sgd#2"]


@pytest.mark.parametrize("bad,words", [
    ("sgdd", ["unknown optimizer 'sgdd'", "did you mean 'sgd'", "available:", "momentum"]),
    ("sgd:momentm=0.9", ["no hyperparameter 'momentm'", "did you mean 'momentum'"]),
    (42, ["an optimizer is a name"]),
])
def test_bad_optimizers_name_the_valid_choices(bad, words):
    with pytest.raises(ValueError) as err:
        race("canyon", [bad], steps=1)
    for w in words:
        assert w in str(err.value)


def test_instances_and_bad_arguments_are_refused():
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="not an instance"):
        race("canyon", [torch.optim.SGD([p], lr=0.1)], steps=1)
    with pytest.raises(ValueError, match="start needs 2"):
        race("canyon", "sgd", start=(1.0,))
    with pytest.raises(ValueError, match="steps must be"):
        race("canyon", "sgd", steps=0)
    with pytest.raises(ValueError, match="unknown landscape"):
        race("valley", "sgd")
    with pytest.raises(ValueError, match="a list or a dict"):
        race("canyon", 42)


def test_divergence_stops_the_run_at_the_predicted_step():
    # α = 0.02: x ← (1 − 4)x, so |x| = 3ᵗ passes 1e12 at t = 26 (3²⁵ ≈ 8.5e11, 3²⁶ ≈ 2.5e12)
    r = race("canyon", "sgd:lr=0.02", steps=40)
    run = r["sgd:lr=0.02"]
    assert run.stopped == 26
    np.testing.assert_allclose(run.positions[25, 0], (-3.0) ** 25, rtol=1e-12)
    assert np.isnan(run.positions[26:]).all() and "gone at step 26" in r.format()
    row = r.table()[0]
    assert row["stopped"] == 26 and row["final_loss"] is None and row["final_position"] is None


# --- Reddi et al. (2018), §3: Adam with β1 = 0, β2 = 1/(1 + C²) drifts to the wrong end ------------

def reddi_grad(C=3.0):
    return lambda t, x: (C if t % 3 == 1 else -1.0,)


@pytest.mark.parametrize("start", [0.0, 1.0, -1.0])
def test_reddi_adam_goes_to_plus_one_and_amsgrad_to_minus_one(start):
    names = "adam,amsgrad,adam_no_bias_correction,adam:amsgrad=True,bias_correction=False"
    r = race("reddi", names, steps=300, start=[start])
    # 300 = 100 whole periods; the optimum is x = −1 (average loss (C − 2)x/3), and Adam leaves even it
    assert r["adam"].final[0] > 0.97 and r["adam_no_bias_correction"].final[0] > 0.97
    assert r["amsgrad"].final[0] < -0.97 and r["adam:amsgrad=True,bias_correction=False"].final[0] < -0.97
    for run in r.runs:
        assert np.all(np.abs(run.positions) <= 1.0)  # projected onto [−1, 1] after every step
    assert r.table()[1]["final_loss"] == pytest.approx(-1 / 3, abs=0.01)


def test_reddi_matches_the_papers_algorithm_in_plain_floats():
    # the paper's Adam/AMSGrad: β1 = 0, β2 = 1/(1 + C²), no bias correction, α_t = 0.5/√t, projection
    r = race("reddi", "adam_no_bias_correction,adam:amsgrad=True,bias_correction=False", steps=300)
    for label, amsgrad in ((r.labels[0], False), (r.labels[1], True)):
        ref = adam_reference(reddi_grad(), 300, 0.5, 0.0, 1 / 10, (0.0,), False, amsgrad=amsgrad,
                             schedule=lambda t: 1 / math.sqrt(t), bounds=(-1.0, 1.0))
        np.testing.assert_allclose(r[label].positions, ref, rtol=1e-10, atol=1e-12)


def test_reddi_failure_needs_the_theorems_betas():
    # with torch's default betas (0.9, 0.999) Adam averages over many periods and finds x = −1
    r = race("reddi", "adam:betas=(0.9,0.999),sgd", steps=600)
    assert r["adam:betas=(0.9,0.999)"].final[0] < -0.97 and r["sgd"].final[0] < -0.97


# --- noise, schedules ----------------------------------------------------------------------------

def test_noise_is_seeded_shared_and_standard_normal():
    σ, α, n = 5.0, 1e-3, 400
    a = race("canyon", f"sgd:lr={α},sgd:lr={α}", steps=n, noise=σ, seed=3)
    b = race("canyon:noise=5,seed=3", f"sgd:lr={α}", steps=n)
    c = race("canyon", f"sgd:lr={α}", steps=n, noise=σ, seed=4)
    run = a.runs[0]
    np.testing.assert_array_equal(run.positions, a.runs[1].positions)  # every optimizer sees the same noise
    np.testing.assert_array_equal(run.positions, b.runs[0].positions)  # deterministic for a seed
    assert not np.allclose(run.positions, c.runs[0].positions)
    # recover ξ from SGD's steps: θ' = θ − α(∇L(θ) + σξ)
    p = run.positions
    g = np.stack(canyon_grad(p[:-1, 0], p[:-1, 1]), 1)
    ξ = ((p[:-1] - p[1:]) / α - g) / σ
    assert abs(ξ.mean()) < 0.15 and abs(ξ.std() - 1) < 0.1
    assert abs(np.corrcoef(ξ[:, 0], ξ[:, 1])[0, 1]) < 0.15
    assert "noise σ=5 (seed 3)" in a.format()


def test_schedules():
    # inv_sqrt: α_t = 0.01/√t, so x₁ = 1 − 2 = −1 and x₂ = −1·(1 − 2/√2)
    pos = race("canyon", "sgd", steps=2, schedule="inv_sqrt")["sgd"].positions
    assert pos[1, 0] == pytest.approx(-1.0) and pos[2, 0] == pytest.approx(-(1 - 2 / math.sqrt(2)))
    const = race("reddi", "sgd", steps=3, schedule="constant")["sgd"].positions[:, 0]
    np.testing.assert_allclose(const, [0, -0.3, -0.2, -0.1])  # α = 0.1 on gradients 3, −1, −1
    with pytest.raises(ValueError, match="schedule must be"):
        race("canyon", "sgd", schedule="cosine")


# --- the command line ------------------------------------------------------------------------------

def test_cli_json_table(capsys):
    assert main(["race", "--landscape", "canyon", "--optimizers", "sgd,momentum,adam", "--steps", "20",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {r["optimizer"]: r for r in out["rows"]}
    assert out["landscape"] == "canyon" and out["steps"] == 20 and list(rows) == ["sgd", "momentum", "adam"]
    assert rows["sgd"]["final_position"] == pytest.approx([1.0, 0.98**20], rel=1e-12)
    want = heavy_ball(0.01, 0.9, 20)[-1].tolist()
    assert rows["momentum"]["final_position"] == pytest.approx(want, rel=1e-10)


def test_cli_table_and_pictures(tmp_path, capsys):
    png, html, gif = tmp_path / "race.png", tmp_path / "race.html", tmp_path / "race.gif"
    assert main(["race", "-o", "sgd", "adam:lr=0.05", "-n", "12", "--start=-1,0.5", "--out", str(png),
                 "--html", str(html), "--gif", str(gif)]) == 0
    out = capsys.readouterr().out
    assert "start (-1, 0.5)" in out and "adam:lr=0.05" in out and f"wrote {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = html.read_text()
    assert "Plotly.newPlot" in page and '"sliders"' in page
    assert "<script src=" not in page and len(page) > 3_000_000  # plotly.js is embedded: it works offline
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames == 13  # steps 0..12


@pytest.mark.parametrize("landscape", ["reddi", "saddle"])
def test_cli_draws_one_d_and_unbounded_landscapes(landscape, tmp_path):
    assert main(["race", "-l", landscape, "-o", "sgd,amsgrad", "-n", "30", "--out", str(tmp_path / "r.png"),
                 "--html", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.png").stat().st_size > 10_000


def test_cli_errors_are_one_line_and_help_lists_landscapes(capsys):
    assert main(["race", "--landscape", "canyn"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("optimlab race: unknown landscape 'canyn'") and err.count("\n") == 1
    assert main(["race", "--start", "1,a"]) == 2
    with pytest.raises(SystemExit) as done:
        main(["race", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for name in ("canyon", "quadratic", "rosenbrock", "beale", "rastrigin", "himmelblau", "saddle", "reddi"):
        assert f"\n  {name}" in text
    assert main(["race", "--list"]) == 0
    assert "Reddi et al. (2018)" in capsys.readouterr().out


# --- many starts at once ---------------------------------------------------------------------------

def _same_race(alone, together) -> None:
    assert together.start == alone.start and together.labels == alone.labels
    for a, b in zip(alone.runs, together.runs):
        assert (a.settings, a.stopped) == (b.settings, b.stopped)
        np.testing.assert_array_equal(a.positions, b.positions)  # bit for bit, NaN where it had left
        np.testing.assert_array_equal(a.losses, b.losses)


EVERY_OPTIMIZER = sorted(optimlab.available()) + sorted(optimlab.presets)


@pytest.mark.parametrize("landscape", ["canyon", "rotated_canyon", "rosenbrock", "rastrigin", "reddi",
                                       "quadratic:kappa=30,angle=20,noise=0.5,seed=3"])
def test_many_starts_at_once_equal_each_start_alone_bit_for_bit(landscape):
    from optimlab.lab.races import race_many

    L = optimlab.landscapes.get(landscape)
    starts = [None, tuple(0.9 * v for v in L.start), tuple(-0.5 * v + 0.1 for v in L.start)]
    together = race_many(landscape, EVERY_OPTIMIZER, starts, steps=25)
    for start, batch in zip(starts, together):
        _same_race(race(landscape, EVERY_OPTIMIZER, steps=25, start=start), batch)


def test_rows_that_leave_stop_alone_and_the_others_go_on():
    from optimlab.lab.races import race_many

    starts = [(-2.0, 2.0), (0.0, 0.0), (2.5, -1.0), (-3.0, 4.0)]
    together = race_many("rosenbrock", "sgd:lr=0.001", starts, steps=60)
    assert [r.runs[0].stopped for r in together] == [None, None, 4, 7]  # the far starts blow up
    for start, batch in zip(starts, together):
        _same_race(race("rosenbrock", "sgd:lr=0.001", steps=60, start=start), batch)


def test_which_updates_are_elementwise():
    rows = [torch.zeros(3, 2, requires_grad=True)]
    assert optimlab.create("adam", rows).elementwise() and optimlab.create("lion", rows).elementwise()
    for name in ("lamb", "lars", "adafactor", "muon", "shampoo", "soap"):  # norms, rows and columns, matrices
        assert not optimlab.create(name, rows).elementwise(), name


def test_one_optimizer_of_a_race_alone_is_labelled_and_computed_as_in_the_whole_race():
    from optimlab.lab.races import race_many

    whole = race_many("canyon", "adam,sgd,adam", [None, (0.5, 0.5)], steps=30)
    for k in range(3):
        part = race_many("canyon", "adam,sgd,adam", [None, (0.5, 0.5)], steps=30, only=k)
        for one, all_of_it in zip(part, whole):
            assert len(one.runs) == 1 and one.runs[0].label == all_of_it.runs[k].label
            np.testing.assert_array_equal(one.runs[0].positions, all_of_it.runs[k].positions)
    assert [r.label for r in whole[0].runs] == ["adam", "sgd", "adam#2"]
    with pytest.raises(ValueError, match="index of one of the 3 optimizers"):
        race_many("canyon", "adam,sgd,adam", [None], only=3)
