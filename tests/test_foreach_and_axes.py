"""The lean foreach path and the row/column reductions of the traced graph (Adafactor's fast paths)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import optimlab
from optimlab.engine import graph as g
from optimlab.engine.rule import State, rule

TRACEABLE = [n for n in optimlab.available() if optimlab.spec(n).rule.traceable]


@pytest.mark.parametrize("name", TRACEABLE)
def test_the_foreach_path_never_reads_tensor_data_on_the_host(name):
    """Meta tensors have no data: .item(), .tolist() or numpy on one raises. A foreach step that runs on
    them keeps every per-tensor value on the device (no host sync per step, as on a GPU)."""
    params = [torch.empty(s, device="meta").requires_grad_() for s in [(4, 3), (2, 3, 2, 2), (7,), (1,)]]
    for p in params:
        p.grad = torch.empty(p.shape, device="meta")
    opt = optimlab.create(name, params, path="foreach")
    opt.step()
    opt.step()
    assert all(p.device.type == "meta" for p in params)


def test_fused_row_and_column_sums_do_not_depend_on_the_thread_count():
    """A matrix of several units of work: each row is summed in one place and the columns' partial
    sums are added in unit order, so one thread and two give the same bits."""
    def run(threads):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            gen = torch.Generator().manual_seed(0)
            params = [torch.randn(700, 1000, generator=gen), torch.randn(3000, 90, generator=gen)]
            opt = optimlab.Adafactor(params, path="fused")
            for _ in range(3):
                for p in params:
                    p.grad = torch.randn(p.shape, generator=gen)
                opt.step()
            return [p.detach().clone() for p in params], [s["row_var"].clone() for s in opt.state.values()]
        finally:
            torch.set_num_threads(before)

    one, two = run(1), run(2)
    assert all(torch.equal(a, b) for a, b in zip(one[0] + one[1], two[0] + two[1]))


@pytest.mark.parametrize("path", ["foreach", "fused"])
def test_a_batch_of_matrices_takes_the_tensor_path_and_matches_it(path):
    """matrix_view='last_two' on a 4-D tensor factors each trailing matrix: the fast paths hand such a
    parameter to the tensor path (their row means are per tensor), and the results agree exactly."""
    def run(p):
        gen = torch.Generator().manual_seed(1)
        params = [torch.randn(2, 3, 4, 5, generator=gen).requires_grad_(), torch.randn(6, 5, generator=gen)]
        opt = optimlab.Adafactor(params, matrix_view="last_two", path=p)
        for _ in range(5):
            for q in params:
                q.grad = torch.randn(q.shape, generator=gen)
            opt.step()
        return params

    fast, reference = run(path), run("tensor")
    assert torch.equal(fast[0], reference[0])
    torch.testing.assert_close(fast[1], reference[1], rtol=1e-5, atol=1e-6)


def test_reductions_along_an_axis_trace_to_rows_and_columns():
    @rule(state={"R": State("r", per="row", init=lambda θ, h: θ[:, :1].clone()),
                 "C": State("c", per="col", init=lambda θ, h: θ[:1].clone())},
          matrix=lambda x, h: x)
    def axes(h, θ, g, R, C):
        R = (g * g).mean(dim=-1, keepdim=True)
        C = g.sum(dim=-2, keepdim=True)
        return θ - R @ C / R.mean(dim=-2, keepdim=True), R, C

    traced = g.trace(axes, SimpleNamespace(), ["R", "C"])
    kinds = {n.op: n.kind for n in traced.nodes}
    assert kinds["row_sum"] == g.ROW and kinds["col_sum"] == g.COL and kinds["sum"] == g.PER_TENSOR
    assert traced.outputs["θ"].kind == g.ELEMENT and traced.matrix
    assert {n.op for n in traced.nodes} >= {"ncols", "nrows"}


@pytest.mark.parametrize("write", [
    lambda g_: g_.sum(dim=0, keepdim=True),  # a dimension other than the matrix view's -1 or -2
    lambda g_: g_.sum(dim=-1),  # without keepdim the value would broadcast differently
    lambda g_: g_.sum(dim=-1, keepdim=True) @ g_,  # matrix products other than rows @ columns
])
def test_reductions_the_graph_cannot_express_are_a_trace_error(write):
    @rule(matrix=lambda x, h: x)
    def bad(h, θ, g):
        return (θ - write(g),)

    with pytest.raises(g.TraceError):
        g.trace(bad, SimpleNamespace(), [])


def test_a_row_state_cannot_take_a_value_per_element():
    @rule(state={"R": State("r", per="row")}, matrix=lambda x, h: x)
    def bad(h, θ, g, R):
        return θ, g * g

    with pytest.raises(g.TraceError, match="per row"):
        g.trace(bad, SimpleNamespace(), ["R"])
