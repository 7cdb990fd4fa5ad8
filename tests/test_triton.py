"""The Triton backend, run through Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, conftest.py).

The kernels are the ones a GPU runs, generated from the same traced graph as the C kernel; the
interpreter executes them with numpy, so CI checks every traceable optimizer without a GPU. Shapes are
small and odd (1 element, a partial last chunk, several chunks) so the masks and the chunk table are
exercised.
"""

from __future__ import annotations

import pytest
import torch

import optimlab
from cases import TEST_VALUES, train
from optimlab.engine import cgen, graph, paths, tritongen
from optimlab.engine.rule import rule

pytest.importorskip("triton", reason="the test extra installs triton")  # a core install has no triton

SHAPES = [(1,), (3, 5), (2 * tritongen.BLOCK + 7,), (2, 3, 2, 2)]
TRACEABLE = [n for n in optimlab.available() if optimlab.spec(n).rule.traceable]
# Adafactor's matrix views: one element, a single row or column, several tiles each way with partial
# ones (tritongen.BR × BC tiles), a conv weight (factored flattened), and vectors (its unfactored V).
MATRICES = [(1, 1), (1, 7), (9, 1), (2 * tritongen.BR + 1, tritongen.BC + 6), (2, 3, 2, 2), (5,), (1,)]


def run(name: str, path: str, dtype=torch.float32, steps: int = 6, **hyper):
    make = lambda ps: optimlab.create(name, ps, path=path, **hyper)  # noqa: E731
    return train(make, steps=steps, dtype=dtype, shapes=SHAPES)


ULPS = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 2**-6}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", TRACEABLE)
def test_triton_kernels_equal_the_rule_as_written(name, dtype):
    reference, ref_opt = run(name, "tensor", dtype)
    params, opt = run(name, "triton", dtype)
    for p, q in zip(params, reference):
        torch.testing.assert_close(p.double(), q.double(), rtol=ULPS[dtype], atol=ULPS[dtype])
        for key, value in opt.state[p].items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value.double(), ref_opt.state[q][key].double(), rtol=ULPS[dtype],
                                           atol=ULPS[dtype], msg=key)


@pytest.mark.parametrize("name", TRACEABLE)
def test_every_flag_reaches_the_triton_kernel(name):
    """Each boolean hyperparameter set to its test value gives the rule-as-written's answer on triton too."""
    spec = optimlab.spec(name)
    flags = {k: TEST_VALUES[k] for k, v in spec.defaults.items()
             if isinstance(v, bool) and k not in spec.preset}
    if flags.get("nesterov"):
        flags["momentum"] = 0.9
    reference, _ = run(name, "tensor", weight_decay=0.1, **flags) if "weight_decay" in spec.defaults else \
        run(name, "tensor", **flags)
    params, _ = run(name, "triton", weight_decay=0.1, **flags) if "weight_decay" in spec.defaults else \
        run(name, "triton", **flags)
    for p, q in zip(params, reference):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5)


def test_reductions_are_deterministic_and_a_changing_lr_builds_nothing():
    first, _ = run("lamb", "triton", weight_decay=0.1)
    again, _ = run("lamb", "triton", weight_decay=0.1)
    assert all(torch.equal(p, q) for p, q in zip(first, again))
    params = [torch.randn(s).requires_grad_() for s in SHAPES]
    opt = optimlab.LAMB(params, path="triton")
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 / (1 + step))
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    built = len(paths._kernels)
    for _ in range(5):
        opt.step()
        schedule.step()
    assert len(paths._kernels) == built


def test_every_op_of_the_graph_has_an_entry_in_every_backend():
    ops = graph.UNARY | graph.BINARY | {"where"}
    assert ops <= set(tritongen.OPS), ops - set(tritongen.OPS)
    assert ops <= set(graph.NUMPY_OPS), ops - set(graph.NUMPY_OPS)
    for op in ops:  # the C emitter knows each op (it raises on an unknown one)
        cgen._expr(op, ["a", "b", "c"], "float")


def test_the_triton_path_says_where_it_runs(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="the triton path runs on CUDA tensors"):
        run("adamw", "triton", steps=1)

    @rule(traceable=False)
    def by_row(h, θ, g):  # not elementwise: each row moves by its mean gradient
        return (θ - h.lr * g.mean(dim=-1, keepdim=True),)

    class ByRow(optimlab.SGD):
        rule = by_row

    with pytest.raises(ValueError, match="not elementwise"):
        ByRow([torch.zeros(2, requires_grad=True)], path="triton")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("view", ["flatten", "last_two"])
def test_row_and_column_statistics_equal_the_rule_as_written(dtype, view):
    """Adafactor's row and column means, their reductions and the rank-one 1/√V̂ on tiles of the matrix
    view; with `last_two` a 4-D weight is a batch of matrices, which runs the rule as written."""
    def run_adafactor(path):
        make = lambda ps: optimlab.Adafactor(ps, path=path, matrix_view=view, weight_decay=0.1)  # noqa: E731
        return train(make, steps=5, dtype=dtype, shapes=MATRICES)

    (reference, ref_opt), (params, opt) = run_adafactor("tensor"), run_adafactor("triton")
    for p, q in zip(params, reference):
        torch.testing.assert_close(p.double(), q.double(), rtol=ULPS[dtype], atol=ULPS[dtype])
        assert opt.state[p].keys() == ref_opt.state[q].keys()
        for key, value in opt.state[p].items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(value.double(), ref_opt.state[q][key].double(), rtol=ULPS[dtype],
                                           atol=ULPS[dtype], msg=key)
