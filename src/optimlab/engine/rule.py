"""What an update rule is: its tensor math, the state it keeps and the scalars it needs each step.

A rule is written once, as a pure function in torch ops that reads like the paper:

    @rule(state={"m": "exp_avg", "v": "exp_avg_sq"}, scalars=bias_corrections)
    def adam(h, θ, g, m, v):
        m = h.beta1 * m + (1 - h.beta1) * g
        ...
        return θ, m, v

`h` holds the hyperparameters of the parameter group, the flags derived from them and the per-step
scalars. Boolean entries are *static*: the rule may branch on them (`if h.amsgrad:`), and each
combination is traced and compiled once. Float entries are *dynamic*: they reach compiled code as
arguments, so a changing lr never recompiles. The engine runs the same function eagerly per tensor,
traced into `torch._foreach_*` calls, or traced into one generated C kernel (see `paths.py`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from types import SimpleNamespace
from typing import Callable, Mapping

import torch


@dataclasses.dataclass(frozen=True)
class State:
    """One per-parameter state tensor of a rule."""

    key: str  # its name in optimizer.state[p]: torch's name where torch has the optimizer
    # When the state exists: always (None), when a flag of h is true (its name), or when a predicate of
    # the parameter holds: `when(θ)`, or `when(θ, h)` where it also depends on the group's
    # hyperparameters (e.g. only for matrices, or a size limit; the fast paths trace once per combination).
    when: str | Callable[[torch.Tensor], bool] | None = None
    init: Callable[[torch.Tensor, SimpleNamespace], torch.Tensor] | None = None  # default: zeros like θ
    per: str = "element"  # one value per "element" of θ, or per "row" / "col" of the rule's matrix view
    # A storage codec (engine/codec.py): the state is kept encoded (8-bit codes and a scale per block)
    # and decoded only to compute. An optimizer may also choose one per state (`RuleOptimizer.codecs`).
    codec: object | None = None

    def create(self, θ: torch.Tensor, h: SimpleNamespace) -> torch.Tensor:
        if self.init is None:
            return torch.zeros_like(θ, memory_format=torch.contiguous_format)
        return self.init(θ, h)


@dataclasses.dataclass(frozen=True)
class Rule:
    """An update rule and what it declares about itself."""

    name: str
    update: Callable  # (h, θ, g, *states) -> (θ, *states); a state not kept is passed and returned as None
    state: Mapping[str, State]  # paper symbol -> State, in the order `update` takes them
    scalars: Callable | None = None  # (h, t, previous scalar state) -> dict of per-step scalars
    flags: Mapping[str, Callable] = dataclasses.field(default_factory=dict)  # static flags from hparams
    scalar_state: Mapping[str, float] = dataclasses.field(default_factory=dict)  # e.g. NAdam's μ product
    # Static flags true where a hyperparameter is nonzero (flag -> hyperparameter): a rule branches on
    # one so that a zero weight decay never computes 0·θ, which is NaN for an inf θ (torch skips it too).
    # `optimlab diff` shows their branches as taken: the rule as written.
    guards: Mapping[str, str] = dataclasses.field(default_factory=dict)
    traceable: bool = True  # False: the math is not elementwise (+ per-tensor sums); per-tensor path only
    # (θ, h) -> the matrix view of θ that per-row and per-column values refer to (see graph.py)
    matrix: Callable | None = None
    batched: bool = False  # True: `update` takes stacks of same-shape parameters (engine/matrix.py)

    def with_flags(self, hyper: Mapping) -> SimpleNamespace:
        """The namespace `h` for a parameter group: hyperparameters plus the flags derived from them."""
        h = SimpleNamespace(**hyper)
        for name, hyperparameter in self.guards.items():
            setattr(h, name, getattr(h, hyperparameter) != 0)
        for name, derive in self.flags.items():
            setattr(h, name, bool(derive(h)))
        return h

    def kept(self, h: SimpleNamespace) -> dict[str, State]:
        """The states this rule may keep under the flags in h (per-parameter conditions aside)."""
        return {sym: s for sym, s in self.state.items() if not isinstance(s.when, str) or getattr(h, s.when)}

    @staticmethod
    def keeps(s: State, θ: torch.Tensor, h: SimpleNamespace | None = None) -> bool:
        """Whether parameter θ has state s, given that its group (hyperparameters h) keeps it."""
        if not callable(s.when):
            return True
        return bool(s.when(θ, h) if _takes_hyperparameters(s.when) else s.when(θ))

    def step_scalars(self, h: SimpleNamespace, t: int, scalar_state: Mapping[str, float]) -> dict:
        """Per-step scalars for update number t (1-based), computed once outside the tensor math."""
        return dict(self.scalars(h, t, dict(scalar_state))) if self.scalars else {}

    def apply(self, h: SimpleNamespace, θ, g, *states):
        """The update, with what every rule shares around it: `maximize` ascends the objective."""
        if getattr(h, "maximize", False):
            g = -g
        return self.update(h, θ, g, *states)


@functools.cache
def _takes_hyperparameters(predicate: Callable) -> bool:
    return len(inspect.signature(predicate).parameters) >= 2


def rule(
    *,
    state: Mapping[str, str | State] | None = None,
    scalars: Callable | None = None,
    flags: Mapping[str, Callable] | None = None,
    scalar_state: Mapping[str, float] | None = None,
    traceable: bool = True,
    guards: Mapping[str, str] | None = None,
    matrix: Callable | None = None,
    batched: bool = False,
) -> Callable[[Callable], Rule]:
    """Declare an update rule; see the module docstring."""

    def declare(update: Callable) -> Rule:
        states = {sym: s if isinstance(s, State) else State(s) for sym, s in (state or {}).items()}
        taken = list(inspect.signature(update).parameters)[3:]
        if taken != list(states):
            raise TypeError(f"rule {update.__name__} takes states {taken} but declares {list(states)}")
        if any(s.per not in ("element", "row", "col") for s in states.values()):
            raise TypeError(f"rule {update.__name__}: a State's `per` is 'element', 'row' or 'col'")
        if matrix is None and any(s.per != "element" for s in states.values()):
            raise TypeError(f"rule {update.__name__}: per-row or per-column states need `matrix=`")
        if batched and traceable:
            raise TypeError(f"rule {update.__name__}: a batched (matrix) rule needs traceable=False")
        return Rule(
            name=update.__name__,
            update=update,
            state=states,
            scalars=scalars,
            flags=dict(flags or {}),
            scalar_state=dict(scalar_state or {}),
            traceable=traceable,
            guards=dict(guards or {}),
            matrix=matrix,
            batched=batched,
        )

    return declare
