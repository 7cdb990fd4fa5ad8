"""Landscapes: each loss against its hand-derived gradient, its minima, its window, its text form."""

import math

import pytest
import torch

from optimlab import landscapes

# Closed-form gradients, derived by hand from each formula (not from the module's code).
C3 = 3.0


def grad_canyon(x, y):
    return 200 * x, 2 * y


def grad_rosenbrock(x, y, a=1.0, b=100.0):
    return -2 * (a - x) - 4 * b * x * (y - x * x), 2 * b * (y - x * x)


def grad_beale(x, y):
    t1, t2, t3 = 1.5 - x + x * y, 2.25 - x + x * y**2, 2.625 - x + x * y**3
    return (2 * t1 * (y - 1) + 2 * t2 * (y**2 - 1) + 2 * t3 * (y**3 - 1),
            2 * t1 * x + 2 * t2 * 2 * x * y + 2 * t3 * 3 * x * y**2)


def grad_rastrigin(x, y, A=10.0):
    τ = 2 * math.pi
    return 2 * x + τ * A * torch.sin(τ * x), 2 * y + τ * A * torch.sin(τ * y)


def grad_himmelblau(x, y):
    p, q = x * x + y - 11, x + y * y - 7
    return 4 * x * p + 2 * q, 2 * p + 4 * y * q


def grad_saddle(x, y):
    return 2 * x, -2 * y


def grad_quadratic(kappa, angle):
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    R = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)  # columns: the steep and the flat axis
    H = R @ torch.diag(torch.tensor([kappa, 1.0], dtype=torch.float64)) @ R.T
    return lambda x, y: tuple(H @ torch.stack([x, y]))


CASES = {
    "canyon": grad_canyon,
    "rosenbrock": grad_rosenbrock,
    "beale": grad_beale,
    "rastrigin": grad_rastrigin,
    "himmelblau": grad_himmelblau,
    "saddle": grad_saddle,
    "quadratic:kappa=50,angle=0": grad_quadratic(50.0, 0.0),
    "quadratic:kappa=1000,angle=30": grad_quadratic(1000.0, 30.0),
    # 100u² + v² = ½(200u² + 2v²): twice the quadratic with κ = 100, turned 45°
    "rotated_canyon": lambda x, y: tuple(2 * v for v in grad_quadratic(100.0, 45.0)(x, y)),
}


def autograd(L, p):
    p = p.clone().requires_grad_(True)
    L.loss(p).backward()
    return p.grad


def test_the_catalogue_is_the_issues_list():
    assert landscapes.available() == ["beale", "canyon", "himmelblau", "quadratic", "rastrigin", "reddi",
                                      "rosenbrock", "rotated_canyon", "saddle"]


@pytest.mark.parametrize("text", list(CASES))
def test_autograd_matches_the_hand_derived_gradient(text):
    L = landscapes.get(text)
    g = torch.Generator().manual_seed(0)
    (x0, x1), (y0, y1) = L.window
    for _ in range(20):
        x = x0 + (x1 - x0) * torch.rand((), generator=g, dtype=torch.float64)
        y = y0 + (y1 - y0) * torch.rand((), generator=g, dtype=torch.float64)
        want = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in CASES[text](x, y)])
        torch.testing.assert_close(autograd(L, torch.stack([x, y])), want, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("name", ["canyon", "quadratic", "rosenbrock", "beale", "rastrigin", "himmelblau",
                                  "rotated_canyon"])
def test_minima_are_stationary_global_and_in_view(name):
    L = landscapes.get(name)
    assert L.min_value == pytest.approx(0.0, abs=1e-20)  # all of these have minimum value 0
    grad = CASES.get(name, grad_quadratic(50.0, 0.0))
    for m in L.minima:
        x, y = (torch.tensor(v, dtype=torch.float64) for v in m)
        assert max(abs(float(v)) for v in grad(x, y)) < 1e-8
        (x0, x1), (y0, y1) = L.window
        assert x0 <= m[0] <= x1 and y0 <= m[1] <= y1
    X, Y = torch.meshgrid(torch.linspace(*L.window[0], 301, dtype=torch.float64),
                          torch.linspace(*L.window[1], 301, dtype=torch.float64), indexing="xy")
    assert float(L.loss(torch.stack([X, Y], -1)).min()) >= L.min_value - 1e-12


def test_himmelblau_has_four_minima_of_value_zero():
    L = landscapes.get("himmelblau")
    assert len(L.minima) == 4
    for m in L.minima:
        assert float(L.loss(torch.tensor(m, dtype=torch.float64))) < 1e-20


def test_named_minima_and_starts_are_the_issues():
    assert landscapes.get("canyon").start == (1.0, 1.0) and landscapes.get("canyon").minima == ((0.0, 0.0),)
    rosenbrock = landscapes.get("rosenbrock")
    assert rosenbrock.start == (-2.0, 2.0) and rosenbrock.minima == ((1.0, 1.0),)
    assert landscapes.get("beale").minima == ((3.0, 0.5),)
    assert landscapes.get("saddle").minima == ()  # unbounded below: no minimum, no distance
    assert math.isnan(landscapes.get("saddle").distance((0.0, 0.0)))


@pytest.mark.parametrize("kappa,angle", [(10.0, 0.0), (1000.0, 30.0), (4.0, 90.0)])
def test_quadratic_has_the_chosen_condition_number(kappa, angle):
    L = landscapes.get(f"quadratic:kappa={kappa},angle={angle}")
    H = torch.autograd.functional.hessian(lambda p: L.loss(p), torch.zeros(2, dtype=torch.float64))
    eig, vec = torch.linalg.eigh(H)
    torch.testing.assert_close(eig, torch.tensor([1.0, kappa], dtype=torch.float64))
    steep = vec[:, 1] * torch.sign(vec[0, 1] if abs(vec[0, 1]) > 1e-9 else vec[1, 1])
    want = torch.tensor([math.cos(math.radians(angle)), math.sin(math.radians(angle))], dtype=torch.float64)
    torch.testing.assert_close(steep, want * torch.sign(want[0] if abs(want[0]) > 1e-9 else want[1]))
    # the start sits at u = v = 1 in the landscape's own axes, so L(start) = (κ + 1)/2 for every angle
    assert float(L.loss(torch.tensor(L.start, dtype=torch.float64))) == pytest.approx((kappa + 1) / 2)


def test_reddi_online_losses_and_their_average():
    L = landscapes.get("reddi")
    assert L.dim == 1 and L.bounds == ((-1.0, 1.0),) and L.minima == ((-1.0,),)
    grads = []
    for t in range(1, 7):
        x = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
        L.loss_at(x, t).backward()
        grads.append(float(x.grad))
    assert grads == [C3, -1, -1, C3, -1, -1]  # f_t = Cx when t mod 3 = 1, −x otherwise
    # the objective is the average over a period, (C − 2)x/3, best at x = −1
    for x in (-1.0, 0.2, 1.0):
        p = torch.tensor([x], dtype=torch.float64)
        assert float(L.loss(p)) == pytest.approx(sum(float(L.loss_at(p, t)) for t in (1, 2, 3)) / 3)
    assert L.min_value == pytest.approx(-(C3 - 2) / 3)
    p = torch.tensor([1.7])
    L.project(p)
    assert float(p) == 1.0


def test_text_form_round_trips_and_carries_noise():
    L = landscapes.get("quadratic:kappa=100,angle=30,noise=0.5,seed=7")
    assert (L.params, L.noise, L.seed) == ({"kappa": 100, "angle": 30}, 0.5, 7)
    again = landscapes.get(L.text)
    assert (again.formula, again.noise, again.seed, again.start) == (L.formula, L.noise, L.seed, L.start)
    assert landscapes.get(L) is L


@pytest.mark.parametrize("text,words", [
    ("canyn", ["unknown landscape 'canyn'", "did you mean 'canyon'", "available: beale, canyon"]),
    ("quadratic:kapa=3", ["kappa, angle, noise, seed", "'kapa=3'"]),
    ("quadratic:kappa=0.5", ["kappa", "≥ 1"]),
    ("reddi:C=2", ["C must be > 2"]),
    ("canyon:noise=-1", ["noise must be a number ≥ 0"]),
    ("rastrigin:A=big", ["A must be a number"]),
])
def test_bad_landscapes_say_what_is_valid(text, words):
    with pytest.raises(ValueError) as err:
        landscapes.get(text)
    for w in words:
        assert w in str(err.value)


def test_catalogue_lists_every_landscape_with_its_formula():
    text = landscapes.catalogue()
    for name in landscapes.available():
        assert landscapes.get(name).formula in text
    assert "quadratic (kappa=50, angle=0)" in text


def test_rotated_canyon_is_the_canyon_turned_45_degrees():
    L, canyon = landscapes.get("rotated_canyon"), landscapes.get("canyon")
    c = math.sqrt(0.5)
    turn = torch.tensor([[c, -c], [c, c]], dtype=torch.float64)  # (u, v) -> (x, y)
    uv = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(L.loss(uv @ turn.T), canyon.loss(uv), rtol=1e-12, atol=1e-12)
    start = turn @ torch.tensor(canyon.start, dtype=torch.float64)
    torch.testing.assert_close(torch.tensor(L.start, dtype=torch.float64), start, rtol=0, atol=1e-12)
