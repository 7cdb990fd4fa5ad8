"""The API's requests: sizes bounded, names checked by the library itself, errors naming the field.

Each text field (a landscape, an optimizer, a schedule) is checked by the same parser the command line
uses, so a bad name or hyperparameter is a 422 whose `loc` names the field and whose message is the
library's own ("unknown optimizer 'adm' (did you mean 'adam'?)"), before any work is queued.
"""

from __future__ import annotations

import functools
import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

import optimlab
from optimlab import landscapes, schedules
from optimlab.lab import ablations
from optimlab.lab.claim_checks import ids as claim_ids
from optimlab.memory import PRECISIONS
from optimlab.settings import split_list

# The bounds of one request: together with the time limits in `pool`, what keeps every answer quick.
LIMITS = {"steps": 2000, "optimizers": 6, "precondition_steps": 500, "resolution": 200,
          "sweep_optimizers": 3, "sweep_lrs": 8, "sweep_seeds": 2, "sweep_steps": 300, "sweep_work": 2400,
          "claims": 8,
          "schedule_steps": 1_000_000, "schedule_points": 2000}

Text = Annotated[str, Field(min_length=1, max_length=200)]


def library_check(fn):
    """Run a validator that asks the library; whatever it raises becomes a ValueError, i.e. a 422."""
    @functools.wraps(fn)
    def checked(cls, value, *args):
        try:
            return fn(cls, value, *args)
        except ValueError:
            raise
        except Exception as err:  # noqa: BLE001  (a TypeError from a literal of the wrong type, a SyntaxError…)
            raise ValueError(f"{type(err).__name__}: {err}") from None
    return checked


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _landscape(text: str) -> landscapes.Landscape:
    return landscapes.get(text)


def _optimizer_texts(items: list[str], most: int) -> list[str]:
    texts = split_list(items)
    if not texts:
        raise ValueError("give at least one optimizer")
    if len(texts) > most:
        raise ValueError(f"at most {most} optimizers per request, got {len(texts)}")
    return texts


def _try_optimizer(text: str, dim: int) -> None:
    """Build it once on a dummy parameter: a bad hyperparameter value fails here, naming the optimizer."""
    import torch

    spec, hyper = optimlab.resolve(text)
    hyper.pop("path", None)
    try:
        spec.create([torch.zeros(dim, dtype=torch.float64, requires_grad=True)], **hyper)
    except Exception as err:  # noqa: BLE001  (whatever the constructor says is the answer to the user)
        raise ValueError(f"{text}: {err}") from None


class RaceRequest(Request):
    landscape: Text = Field("canyon", description="a landscape name or name:key=value,… (see /api/meta)")
    optimizers: list[Text] = Field(["sgd", "momentum", "adam"], min_length=1, max_length=LIMITS["optimizers"],
                                   description="registry names, presets or name:key=value,…")
    steps: int | None = Field(None, ge=1, le=LIMITS["steps"], description="default: the landscape's")
    start: list[float] | None = Field(None, min_length=1, max_length=2,
                                      description="default: the landscape's")
    noise: float | None = Field(None, ge=0, le=100, description="σ of Gaussian noise on every gradient")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    schedule: Literal["landscape", "constant", "inv_sqrt"] = "landscape"

    @field_validator("landscape")
    @classmethod
    @library_check
    def known_landscape(cls, v: str) -> str:
        _landscape(v)
        return v

    @field_validator("optimizers")
    @classmethod
    @library_check
    def known_optimizers(cls, v: list[str], info: ValidationInfo) -> list[str]:
        texts = _optimizer_texts(v, LIMITS["optimizers"])
        dim = _landscape(info.data["landscape"]).dim if "landscape" in info.data else 2
        for text in texts:
            _try_optimizer(text, dim)
        return texts

    @field_validator("start")
    @classmethod
    def start_fits(cls, v: list[float] | None, info: ValidationInfo) -> list[float] | None:
        if v is None:
            return v
        if not all(math.isfinite(x) and abs(x) <= 1e6 for x in v):
            raise ValueError(f"every coordinate must be a finite number within ±1e6, got {v}")
        if "landscape" in info.data and len(v) != _landscape(info.data["landscape"]).dim:
            raise ValueError(f"{info.data['landscape']} is {_landscape(info.data['landscape']).dim}-D: "
                             f"start needs that many numbers, got {len(v)}")
        return v


class SurfaceRequest(Request):
    landscape: Text = "canyon"
    resolution: int = Field(120, ge=10, le=LIMITS["resolution"], description="grid points per axis")

    @field_validator("landscape")
    @classmethod
    @library_check
    def known_landscape(cls, v: str) -> str:
        _landscape(v)
        return v


class PreconditionRequest(Request):
    kappa: float = Field(50.0, ge=1, le=1e4, description="condition number of the quadratic")
    angle: float = Field(30.0, ge=-90, le=90, description="rotation of its axes, degrees")
    steps: int = Field(60, ge=1, le=LIMITS["precondition_steps"])


class BreakItRequest(Request):
    name: Literal[tuple(ablations.names())] = Field(description="the ablation (see /api/meta)")
    seeds: int = Field(1, ge=1, le=2, description="seeds at the reduced size (more: slower, steadier)")


class SweepRequest(Request):
    optimizers: list[Text] = Field(["sgd", "adam"], min_length=1, max_length=LIMITS["sweep_optimizers"])
    task: Literal["digits"] = "digits"
    lrs: str = Field("1e-3:1:4", max_length=100, description="LO:HI:N log-spaced, or comma-separated")
    steps: int = Field(100, ge=1, le=LIMITS["sweep_steps"])
    seeds: int = Field(1, ge=1, le=LIMITS["sweep_seeds"])
    factor: float = Field(2.0, gt=1, le=100)
    metric: Literal["val_loss", "train_loss"] = "val_loss"

    @field_validator("optimizers")
    @classmethod
    @library_check
    def no_lr(cls, v: list[str]) -> list[str]:
        texts = _optimizer_texts(v, LIMITS["sweep_optimizers"])
        for text in texts:
            _try_optimizer(text, 2)
            if "lr" in optimlab.resolve(text)[1]:
                raise ValueError(f"{text!r} sets lr; the sweep chooses lr")
        if len(set(texts)) != len(texts):
            raise ValueError(f"an optimizer is listed twice: {texts}")
        return texts

    @field_validator("lrs")
    @classmethod
    @library_check
    def few_lrs(cls, v: str) -> str:
        from optimlab.lab.sweeps import parse_lrs

        if len(parse_lrs(v)) > LIMITS["sweep_lrs"]:
            raise ValueError(f"at most {LIMITS['sweep_lrs']} learning rates, got {len(parse_lrs(v))}")
        return v

    @field_validator("seeds")
    @classmethod
    def bounded_work(cls, v: int, info: ValidationInfo) -> int:
        from optimlab.lab.sweeps import parse_lrs

        if {"optimizers", "lrs", "steps"} <= set(info.data):
            runs = len(info.data["optimizers"]) * len(parse_lrs(info.data["lrs"])) * v
            if runs * info.data["steps"] > LIMITS["sweep_work"]:
                raise ValueError(f"optimizers × lrs × seeds × steps = {runs * info.data['steps']} training "
                                 f"steps; at most {LIMITS['sweep_work']} per request")
        return v


class ClaimsRequest(Request):
    ids: list[Literal[tuple(claim_ids())]] = Field(min_length=1, max_length=LIMITS["claims"],
                                                   description="claims to measure at reduced size")


Argument = (int | float | bool | Annotated[str, Field(max_length=50)]
            | Annotated[list[int | float], Field(max_length=100)])


class ScheduleRequest(Request):
    name: Literal[tuple(n for n in schedules.available() if n not in ("warmup", "sequence"))] = "cosine"
    args: dict[Annotated[str, Field(max_length=50)], Argument] = Field(
        {"total_steps": 1000}, max_length=12, description="the schedule's arguments (see /api/meta)")
    steps: int | None = Field(None, ge=1, le=LIMITS["schedule_steps"], description="default: its own length")
    warmup: int = Field(0, ge=0, le=LIMITS["schedule_steps"], description="a linear warmup first (updates)")
    lr: float | None = Field(None, gt=0, le=100, description="a base lr: also answer lr = lr × multiplier")
    points: int = Field(1000, ge=10, le=LIMITS["schedule_points"], description="at most this many values")

    @field_validator("args")
    @classmethod
    @library_check
    def valid_args(cls, v: dict, info: ValidationInfo) -> dict:
        if "name" in info.data:
            schedules.get(info.data["name"], **v)
        return v


class MemoryRequest(Request):
    params: float = Field(7e9, ge=1, le=1e13, description="parameter count")
    optimizer: Text = "adamw"
    precision: Literal[tuple(PRECISIONS)] = "bf16-mixed"
    zero: int = Field(2, ge=0, le=3, description="ZeRO stage (0: nothing sharded, whatever the ranks)")
    ranks: int = Field(8, ge=1, le=100_000, description="data-parallel ranks the stages 1–3 shard over")

    @field_validator("optimizer")
    @classmethod
    @library_check
    def known_optimizer(cls, v: str) -> str:
        optimlab.resolve(v)
        return v


class DiffRequest(Request):
    a: Text = "adam"
    b: Text = "adamw"
    context: int = Field(2, ge=0, le=50)

    @field_validator("a", "b")
    @classmethod
    @library_check
    def known(cls, v: str) -> str:
        from optimlab.source import describe

        describe(v)
        return v
