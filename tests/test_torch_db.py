"""torch's own optimizer test database, run against optimlab: an independent suite (their cases, not ours).

`torch.testing._internal.common_optimizers.optim_db` lists, per optimizer, the configurations torch tests
(`optim_inputs_func`, with the implementation keywords foreach/fused/differentiable added as torch's own
tests add them) and the inputs that must fail (`optim_error_inputs_func`). For every optimizer optimlab
shares with torch, each configuration runs side by side with torch in float64 (complex128 too where torch
supports complex parameters) and must agree to 1e-9; each error input must raise the same exception type.

Configurations that ask for what optimlab does not do are not skipped: they are listed in UNSUPPORTED
with the reason, and their test asserts the clear error optimlab raises instead.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from cases import backward, make_params
from torch.testing._internal.common_optimizers import (
    OptimizerErrorEnum,
    _get_optim_inputs_including_global_cliquey_kwargs,
    optim_db,
)

import optimlab

NAMES = {"SGD": "sgd", "Adagrad": "adagrad", "RMSprop": "rmsprop", "Adam": "adam", "AdamW": "adamw",
         "NAdam": "nadam", "RAdam": "radam", "Adafactor": "adafactor"}
# What optimlab adds so that its configuration means what torch's does.
OURS = {"adafactor": {"matrix_view": "last_two"}}  # torch factors the last two dimensions of a 4-D tensor
# torch keywords optimlab refuses, and why (the test asserts the error that says so).
UNSUPPORTED = {
    "differentiable": "optimlab updates parameters in place under no_grad: "
                      "autograd cannot run through step()",
}
STEPS = 10
INFOS = [info for info in optim_db if info.optim_cls.__name__ in NAMES]


def unsupported(kwargs: dict) -> str | None:
    return next((key for key in UNSUPPORTED if kwargs.get(key)), None)


def with_foreach(configs):
    """torch's tests add foreach=True only on devices with foreach kernels; its foreach code runs on the CPU
    too, so each plain configuration is also run with foreach=True (optimlab's foreach path)."""
    for config in configs:
        yield config.desc, config.kwargs
        if not any(config.kwargs.get(k) for k in ("fused", "differentiable")):
            yield f"{config.desc} & foreach", {**config.kwargs, "foreach": True}


def configurations():
    for info in INFOS:
        torch_name = info.optim_cls.__name__
        dtypes = [torch.float64] + ([torch.complex128] if info.supports_complex else [])
        for dtype in dtypes:
            configs = _get_optim_inputs_including_global_cliquey_kwargs("cpu", dtype, info)
            for i, (desc, kwargs) in enumerate(with_foreach(configs)):
                label = f"{torch_name}-{str(dtype)[6:]}-{i}-{desc}".replace(" ", "_")
                yield pytest.param(info, dtype, kwargs, id=label)


CONFIGURATIONS = list(configurations())


def run(make, dtype, steps=STEPS):
    """`make(params)` stepped on seeded gradients that depend on the parameters."""
    if dtype.is_complex:
        g = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in [(4, 3), (1,), (5,)]]
    else:
        params = make_params(dtype)
    opt = make(params)
    for step in range(steps):
        if dtype.is_complex:
            noise = torch.Generator().manual_seed(100 + step)
            for j, p in enumerate(params):
                p.grad = (j + 1) * p.detach() + torch.randn(p.shape, generator=noise, dtype=dtype)
        else:
            backward(params, step)
        opt.step()
    return params


def reference(info, dtype, kwargs):
    """torch's result for the configuration; where torch refuses it (its fused kernels take no complex
    parameters), torch's for-loop implementation of the same configuration, and the reason."""
    try:
        return run(lambda ps: info.optim_cls(ps, **kwargs), dtype), None
    except RuntimeError as err:
        plain = {**kwargs, "fused": False, "foreach": False}
        return run(lambda ps: info.optim_cls(ps, **plain), dtype), str(err).splitlines()[0]


@pytest.fixture(autouse=True)
def _float64(float64_default):
    """torch keeps scalar state in the default dtype: float64 for parity (see conftest.py)."""


@pytest.mark.parametrize("info,dtype,kwargs", CONFIGURATIONS)
def test_torch_configuration_matches_torch(info, dtype, kwargs):
    name = NAMES[info.optim_cls.__name__]
    ours = {**kwargs, **OURS.get(name, {})}
    refused = unsupported(kwargs)
    if refused:
        with pytest.raises(ValueError, match=f"{refused}=True is not supported"):
            optimlab.create(name, make_params(dtype), **ours)
        return
    try:
        info.optim_cls(make_params(dtype), **kwargs)
    except Exception as err:  # noqa: BLE001 -- torch refuses the configuration itself (tensor lr with foreach=True): so must we
        with pytest.raises(type(err)):
            optimlab.create(name, make_params(dtype), **ours)
        return
    expected, torch_refused = reference(info, dtype, kwargs)
    if torch_refused:
        assert kwargs.get("fused") and dtype.is_complex, torch_refused  # the one case torch refuses
    mine = run(lambda ps: optimlab.create(name, ps, **ours), dtype)
    for p, q in zip(mine, expected):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-9)


def test_the_configurations_optimlab_refuses_are_counted():
    """Listed, not hidden: every configuration asking for differentiable=True (torch adds one per base
    configuration), and nothing else."""
    refused = [c for c in CONFIGURATIONS if unsupported(c.values[2])]
    print(f"\n{len(CONFIGURATIONS)} configurations; {len(refused)} ask for what optimlab refuses:")
    for c in refused:
        print(f"  {c.id}: {UNSUPPORTED[unsupported(c.values[2])]}")
    count = {(str(dtype)[6:], unsupported(kwargs)): 0
             for _, dtype, kwargs in (c.values for c in CONFIGURATIONS)}
    for _, dtype, kwargs in (c.values for c in CONFIGURATIONS):
        count[str(dtype)[6:], unsupported(kwargs)] += 1
    print(count)
    assert {unsupported(c.values[2]) for c in refused} == {"differentiable"}
    assert len(refused) == sum(1 for c in CONFIGURATIONS if c.values[2].get("differentiable"))


def error_inputs():
    for info in INFOS:
        for i, error in enumerate(info.optim_error_inputs_func(device="cpu", dtype=torch.float64)):
            yield pytest.param(info, error, id=f"{info.optim_cls.__name__}-{i}-{error.error_type.__name__}")


ERROR_INPUTS = list(error_inputs())


@pytest.mark.parametrize("info,error", ERROR_INPUTS)
def test_torch_error_input_raises_the_same_exception_type(info, error):
    name = NAMES[info.optim_cls.__name__]
    cls = optimlab.spec(name).cls
    given = error.optimizer_error_input
    kwargs = {**given.kwargs, **OURS.get(name, {})}
    if issubclass(error.error_type, Warning):
        with pytest.warns(error.error_type):
            cls(given.params, **kwargs)
        return
    if error.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        with pytest.raises(error.error_type):
            cls(given.params, **kwargs)
    else:
        opt = cls(given.params, **kwargs)
        with pytest.raises(error.error_type), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.step()


def test_all_of_torchs_error_inputs_run():
    assert len(ERROR_INPUTS) == 71
