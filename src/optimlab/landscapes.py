"""Small loss landscapes to watch optimizers on: the canyon 100x² + y² and the classic test functions.

    from optimlab import landscapes
    landscapes.available()                    # ['beale', 'canyon', 'himmelblau', 'quadratic', ...]
    L = landscapes.get("canyon")              # 100x² + y², start (1, 1), minimum (0, 0)
    L = landscapes.get("quadratic:kappa=100,angle=30,noise=0.5,seed=1")   # parameters as text
    L.loss(torch.tensor([1.0, 1.0]))          # 101.0; torch ops, so autograd gives the gradient

A landscape is declarative: formula, loss in torch, minima, default start, view window, and the
learning rates that make the lessons' pictures (SGD bounces on the canyon at α = 0.01, Adam walks
straight down at α = 0.1). `noise=σ` makes the gradients stochastic (g + σξ, ξ ~ N(0, I), seeded);
`bounds` makes the problem constrained (the race clamps the iterate back after each step);
`online` gives a loss that changes with the step t (Reddi et al.'s counterexample).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
from typing import Callable

import torch

from .settings import parse


@dataclasses.dataclass(frozen=True)
class Landscape:
    name: str
    formula: str  # plain text, as printed in tables and titles
    f: Callable  # f(x, y) -> loss, torch ops on tensors of any (matching) shape
    start: tuple[float, ...]
    window: tuple[tuple[float, float], ...]  # ((x0, x1), (y0, y1)): what the plots show
    minima: tuple[tuple[float, ...], ...] = ()  # global minima (none for the saddle)
    lr: dict = dataclasses.field(default_factory=dict)  # optimizer -> default lr; "sgd" and "adam" at least
    hyper: dict = dataclasses.field(default_factory=dict)  # optimizer name -> other default hyperparameters
    steps: int = 100  # a default race length that shows the point
    about: str = ""  # one line: what to look for
    online: Callable | None = None  # online(t, x, ...) -> the loss at step t = 1, 2, …; f is then its average
    bounds: tuple[tuple[float, float], ...] | None = None  # feasible box; iterates are projected onto it
    schedule: Callable[[int], float] | None = None  # lr multiplier at step t (Reddi: 1/√t)
    schedule_text: str = ""
    noise: float = 0.0  # σ of the Gaussian noise added to every gradient
    seed: int = 0
    params: dict = dataclasses.field(default_factory=dict)  # what it was built with, for `text`

    @property
    def dim(self) -> int:
        return len(self.start)

    @property
    def text(self) -> str:
        """The name with its parameters, as `get` reads it back: 'quadratic:kappa=100,angle=30'."""
        extra = dict(self.params)
        if self.noise:
            extra.update(noise=self.noise, seed=self.seed)
        return self.name + (":" + ",".join(f"{k}={_num(v)}" for k, v in extra.items()) if extra else "")

    def loss(self, p: torch.Tensor) -> torch.Tensor:
        """The objective at points p of shape (..., dim); for an online problem, its average over t."""
        return self.f(*p.unbind(-1))

    def loss_at(self, p: torch.Tensor, t: int) -> torch.Tensor:
        """The loss whose gradient the optimizer sees at step t (1-based)."""
        return self.online(t, *p.unbind(-1)) if self.online else self.loss(p)

    @property
    def min_value(self) -> float | None:
        if not self.minima:
            return None
        return float(self.loss(torch.tensor(self.minima[0], dtype=torch.float64)))

    def distance(self, p) -> float:
        """Euclidean distance from p to the nearest global minimum (nan where there is none)."""
        if not self.minima:
            return math.nan
        p = torch.as_tensor(p, dtype=torch.float64)
        return min(float(torch.linalg.vector_norm(p - torch.tensor(m, dtype=torch.float64)))
                   for m in self.minima)

    def project(self, p: torch.Tensor) -> None:
        """Clamp points p (..., dim) onto the feasible box in place (projection onto a box is a clamp)."""
        if self.bounds:
            for i, (lo, hi) in enumerate(self.bounds):
                p[..., i].clamp_(lo, hi)

    def with_noise(self, noise: float, seed: int = 0) -> Landscape:
        if not (isinstance(noise, (int, float)) and noise >= 0):
            raise ValueError(f"noise must be a number ≥ 0, got {noise!r}")
        return dataclasses.replace(self, noise=float(noise), seed=int(seed))

    def describe(self) -> str:
        where = ", ".join(_point(m) for m in self.minima) or "none (unbounded below)"
        lines = [f"{self.text}: {self.formula}", f"  start {_point(self.start)}   minimum {where}"]
        if self.bounds:
            lines.append("  feasible set " + " × ".join(f"[{lo:g}, {hi:g}]" for lo, hi in self.bounds)
                         + " (iterates are clamped onto it)")
        if self.schedule_text:
            lines.append(f"  learning rate {self.schedule_text}")
        if self.noise:
            lines.append(f"  gradients + {self.noise:g}·ξ, ξ ~ N(0, I), seed {self.seed}")
        return "\n".join(lines)


def _num(v) -> str:
    """50.0 -> '50', 0.1 -> '0.1': short, and exact when read back."""
    return repr(int(v)) if float(v).is_integer() else repr(float(v))


def _point(p) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in p) + ")"


# --- the catalogue: one factory per landscape, keyword arguments are its parameters ---------------

_factories: dict[str, Callable[..., Landscape]] = {}


def _register(factory):
    _factories[factory.__name__] = factory
    return factory


@_register
def canyon() -> Landscape:
    return Landscape(
        "canyon", "100x² + y²", lambda x, y: 100 * x**2 + y**2, start=(1.0, 1.0),
        window=((-1.5, 1.5), (-0.5, 1.5)), minima=((0.0, 0.0),), lr={"sgd": 0.01, "adam": 0.1},
        about="the canyon 100x² + y² (the canyon lesson): at α = 0.01 SGD's x flips sign every step, "
              "momentum damps the bounce, Adam walks straight down the diagonal")


@_register
def quadratic(kappa: float = 50.0, angle: float = 0.0) -> Landscape:
    if not kappa >= 1:
        raise ValueError(f"quadratic: kappa (the condition number) must be ≥ 1, got {kappa!r}")
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))

    def f(x, y):  # ½(κu² + v²) in axes (u, v) turned by `angle` from (x, y)
        u, v = c * x + s * y, -s * x + c * y
        return 0.5 * (kappa * u**2 + v**2)

    # start at u = v = 1 whatever the angle: SGD (rotation-invariant) then runs the same race, Adam does not
    start = (c - s, s + c)
    formula = (f"½({kappa:g}x² + y²)" if angle == 0
               else f"½({kappa:g}u² + v²), (u, v) = (x, y) turned {angle:g}°")
    return Landscape(
        "quadratic", formula, f, start=start, window=((-1.6, 1.6), (-1.6, 1.6)), minima=((0.0, 0.0),),
        lr={"sgd": 1.9 / kappa, "adam": 0.1}, params={"kappa": kappa, "angle": angle},
        about="condition number κ: SGD needs α < 2/κ and then shrinks the flat axis by only 1 − α a step; "
              "turn it (angle=30) and Adam's per-coordinate scaling no longer lines up with it")


# Full-matrix preconditioning on a 2-vector: Shampoo's one factor L = Σ ggᵀ and step L^{-1/2}g (full-matrix
# AdaGrad, Gupta et al. 2018 §2 with k = 1), recomputed every step; SOAP's Adam in the eigenbasis of L.
FULL_MATRIX = {"shampoo": {"precondition_1d": True, "start_preconditioning_step": 1,
                           "precondition_frequency": 1, "grafting": "none", "betas": (0.0, 1.0),
                           "eps": 1e-12},
               "soap": {"precondition_1d": True, "precondition_frequency": 1, "weight_decay": 0.0}}


@_register
def rotated_canyon(angle: float = 45.0) -> Landscape:
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))

    def f(x, y):  # the canyon 100u² + v² in axes (u, v) turned by `angle` from (x, y)
        u, v = c * x + s * y, -s * x + c * y
        return 100 * u**2 + v**2

    return Landscape(
        "rotated_canyon", f"100u² + v², (u, v) = (x, y) turned {angle:g}°", f,
        start=(round(c - s, 12), round(s + c, 12)),  # u = v = 1: the canyon's start, turned with it
        window=((-1.6, 1.6), (-0.6, 1.8)), minima=((0.0, 0.0),),
        lr={"sgd": 0.01, "adam": 0.1, "shampoo": 0.1, "soap": 0.1}, hyper=FULL_MATRIX,
        params={"angle": angle},
        about="the canyon turned 45°: SGD runs the same race as on the canyon, Adam's per-coordinate "
              "scaling no longer lines up with the axes, full-matrix Shampoo and SOAP turn with them")


@_register
def rosenbrock(a: float = 1.0, b: float = 100.0) -> Landscape:
    return Landscape(
        "rosenbrock", f"({a:g} − x)² + {b:g}(y − x²)²", lambda x, y: (a - x) ** 2 + b * (y - x**2) ** 2,
        start=(-2.0, 2.0), window=((-2.5, 2.0), (-1.0, 4.5)), minima=((a, a * a),),
        lr={"sgd": 4e-4, "adam": 0.1}, steps=2000, params={"a": a, "b": b},
        about="a curved valley: easy to fall into, slow to follow to (1, 1)")


@_register
def beale() -> Landscape:
    def f(x, y):
        return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2

    return Landscape(
        "beale", "(1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)²", f, start=(1.0, 1.5),
        window=((-1.0, 4.5), (-1.5, 2.0)), minima=((3.0, 0.5),), lr={"sgd": 1e-3, "adam": 0.05}, steps=500,
        about="flat plateaus and steep walls (y³ terms): the gradient's scale varies by orders of magnitude")


@_register
def rastrigin(A: float = 10.0) -> Landscape:
    def f(x, y):
        return 2 * A + x**2 - A * torch.cos(2 * math.pi * x) + y**2 - A * torch.cos(2 * math.pi * y)

    return Landscape(
        "rastrigin", f"{2 * A:g} + x² − {A:g}cos 2πx + y² − {A:g}cos 2πy", f, start=(2.2, -2.6),
        window=((-4.0, 4.0), (-4.0, 4.0)), minima=((0.0, 0.0),), lr={"sgd": 2e-3, "adam": 0.1}, steps=200,
        params={"A": A},
        about="a local minimum near every integer point: gradient methods stop in the nearest")


HIMMELBLAU_MINIMA = ((3.0, 2.0), (-2.805118086952745, 3.131312518250573),
                     (-3.779310253377747, -3.2831859912861696), (3.5844283403304917, -1.8481265269644034))


@_register
def himmelblau() -> Landscape:
    return Landscape(
        "himmelblau", "(x² + y − 11)² + (x + y² − 7)²",
        lambda x, y: (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2,
        start=(0.0, 0.0), window=((-5.0, 5.0), (-5.0, 5.0)), minima=HIMMELBLAU_MINIMA,
        lr={"sgd": 0.01, "adam": 0.1}, steps=200,
        about="four global minima (all 0): which one an optimizer reaches depends on its path")


@_register
def saddle() -> Landscape:
    return Landscape(
        "saddle", "x² − y²", lambda x, y: x**2 - y**2, start=(1.0, 0.01), window=((-1.5, 1.5), (-1.5, 1.5)),
        lr={"sgd": 0.02, "adam": 0.05},
        about="a saddle at (0, 0), unbounded below: SGD's escape grows like (1 + 2α)ᵗ from a tiny y, "
              "Adam normalises the tiny gradient and leaves at once")


@_register
def reddi(C: float = 3.0) -> Landscape:
    if not C > 2:
        raise ValueError(f"reddi: C must be > 2 (else x = +1 is optimal), got {C!r}")

    def online(t, x):  # Reddi et al. (2018) §3: a large gradient C once every three steps, −1 otherwise
        return C * x if t % 3 == 1 else -x

    return Landscape(
        "reddi", f"f_t(x) = {C:g}x if t mod 3 = 1 else −x,  x ∈ [−1, 1]", lambda x: (C - 2) / 3 * x,
        start=(0.0,), window=((-1.05, 1.05),), minima=((-1.0,),), online=online, bounds=((-1.0, 1.0),),
        # the paper's Theorem 1 setting: β1 = 0, β2 = 1/(1 + C²), step size α/√t
        lr={"sgd": 0.1, "adam": 0.5}, hyper={"adam": {"betas": (0.0, 1 / (1 + C * C))}},
        schedule=lambda t: 1 / math.sqrt(t), schedule_text="α/√t (the paper's schedule)",
        steps=1200,  # a whole number of periods: the last point is after a period's two −1 steps
        params={"C": C},
        about="Reddi et al. (2018): the average loss is (C − 2)x/3, best at x = −1; Adam (β1 = 0, "
              "β2 = 1/(1+C²)) forgets the rare large gradient and drifts to +1, AMSGrad's max(v) does not")


def available() -> list[str]:
    return sorted(_factories)


def get(text) -> Landscape:
    """A landscape by name or 'name:key=value,…' (its parameters, noise=, seed=); a Landscape as is."""
    if isinstance(text, Landscape):
        return text
    if not isinstance(text, str):
        raise ValueError(f"a landscape is a name or a Landscape, got {type(text).__name__}")
    name, kwargs = parse(text)
    if name not in _factories:
        hint = difflib.get_close_matches(name, available(), n=1)
        raise ValueError(f"unknown landscape {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                         + f"; available: {', '.join(available())}")
    factory = _factories[name]
    valid = [*inspect.signature(factory).parameters, "noise", "seed"]
    for key, value in kwargs.items():
        if key not in valid:
            raise ValueError(f"landscape {name}: expected key=value with key one of {', '.join(valid)}; "
                             f"got '{key}={value}'")
        if isinstance(value, str):
            raise ValueError(f"landscape {name}: {key} must be a number, got {value!r}")
    noise, seed = kwargs.pop("noise", 0.0), kwargs.pop("seed", 0)
    made = factory(**kwargs)
    return made.with_noise(noise, seed) if noise or seed else made


def catalogue() -> str:
    """Every landscape with its parameters and formula: what `optimlab race --help` lists."""
    lines = []
    for name in available():
        made = _factories[name]()
        signature = inspect.signature(_factories[name]).parameters
        args = ", ".join(f"{k}={p.default:g}" for k, p in signature.items())
        lines.append(f"{name}{f' ({args})' if args else ''}: {made.formula}; start {_point(made.start)}")
    return "\n".join(lines)
