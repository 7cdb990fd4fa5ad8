"""The distributed contract, for every registered optimizer and preset: two gloo processes on the CPU
train under FSDP2 (uneven shards, one of them empty), DDP and ZeroRedundancyOptimizer and equal
single-process training on the same global batch; distributed checkpoints resume exactly, on two ranks
and resharded onto one; torch's state-making dummy step changes nothing; clipping and the gradient
monitor see global norms. The two processes are spawned once for the whole module
(tests/distributed_harness.py runs every case in them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import optimlab
from optimlab import registry

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import distributed_harness as harness  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")

NAMES = harness.names()
TOLERANCE = {"fp32": 1e-6, "fp64": 1e-10}
SETTINGS = [("fsdp2", "fp32"), ("fsdp2", "fp64"), ("ddp", "fp32"), ("ddp", "fp64"), ("zero1", "fp32")]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both ranks' run of every case (once per module): the results and the folder of checkpoints."""
    out = tmp_path_factory.mktemp("distributed")
    port = str(29400 + os.getpid() % 500)
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src"), "OMP_NUM_THREADS": "1"}
    script = str(HERE / "distributed_harness.py")
    procs = [subprocess.Popen([sys.executable, script, str(r), "2", port, str(out)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
             for r in range(2)]
    try:
        outputs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(o[1][-4000:] for o in outputs)
    return json.loads((out / "results.json").read_text()), out


def _result(ranks, key: str) -> dict:
    results, _ = ranks
    assert key in results, f"{key} was not run"
    assert "failure" not in results[key], f"{key}: {results[key]['failure']}"
    return results[key]


@pytest.mark.parametrize("setting,precision", SETTINGS, ids=[f"{s}-{p}" for s, p in SETTINGS])
@pytest.mark.parametrize("name", NAMES)
def test_sharded_training_equals_single_process_training(ranks, name, setting, precision):
    err = _result(ranks, f"{name}/{setting}/{precision}")["error"]
    assert err <= TOLERANCE[precision], f"{name} under {setting} ({precision}) differs by {err:.3g}"


@pytest.mark.parametrize("name", NAMES)
def test_communication_in_a_step_is_what_the_rule_needs(ranks, name):
    """Elementwise rules: none. Per-tensor norms: ONE all-reduce for all tensors. Whole matrices: two
    all-to-alls (to the owners and back) per group of parameters keeping the same states (Muon: its
    matrices and its AdamW part). Row and column statistics: one all-reduce per level of sums per group."""
    calls = _result(ranks, f"{name}/fsdp2/fp32")["collectives"]
    capabilities = registry.spec(name).capabilities
    if "elementwise" in capabilities:
        assert calls == {}
    elif "per-tensor-norm" in capabilities:
        assert calls == {"allreduce": 1}
    elif "matrix" in capabilities:
        assert set(calls) == {"alltoall_base"} and calls["alltoall_base"] in (2, 4)
    else:
        assert set(calls) == {"allreduce"} and calls["allreduce"] <= 4


@pytest.mark.parametrize("name", NAMES)
def test_a_distributed_checkpoint_resumes_exactly_on_two_ranks(ranks, name):
    assert _result(ranks, f"{name}/dcp/fp32")["error"] == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_a_checkpoint_saved_on_two_ranks_loads_on_one(ranks, name):
    """Resharding: the FSDP2 checkpoint (DTensor states) loads into a plain model and optimizer in one
    process, which then trains exactly as the two ranks did."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    _result(ranks, f"{name}/dcp/fp32")
    folder = ranks[1] / "checkpoints" / name
    model = harness.make_model()
    opt = optimlab.create(name, model.parameters())
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(state, checkpoint_id=str(folder))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])
    xs = harness.batches(torch.float32)
    for x in xs[2:]:
        opt.zero_grad()
        for part in x.chunk(2):
            harness.loss_of(model, part).backward()
        for p in model.parameters():
            p.grad /= 2
        opt.step()
    after = torch.load(folder / "after.pt")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, after[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")


@pytest.mark.parametrize("name", NAMES)
def test_the_state_making_dummy_step_of_a_checkpoint_changes_nothing(name):
    """get_optimizer_state_dict on a fresh optimizer steps it once with zero gradients and lr 0: the state
    appears, the parameters and step counts stay, and the next real step is the first one."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    models = [harness.make_model() for _ in range(2)]
    opts = [optimlab.create(name, m.parameters()) for m in models]
    before = {k: v.clone() for k, v in models[0].state_dict().items()}
    saved = get_optimizer_state_dict(models[0], opts[0])
    assert saved["state"], f"{name}: no state was made"
    for key, value in models[0].state_dict().items():
        assert torch.equal(value, before[key]), f"{name}: the dummy step moved {key}"
    assert all(float(s["step"]) == 0 for s in opts[0].state.values())
    for model, opt in zip(models, opts):  # one with the dummy step behind it, one without
        for x in harness.batches(torch.float32, 2):
            opt.zero_grad()
            harness.loss_of(model, x).backward()
            opt.step()
    for (key, value), other in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.equal(value, other), f"{name}: the dummy step changed the training of {key}"


def test_clip_grad_norm_under_fsdp2_returns_and_uses_the_global_norm(ranks):
    result = _result(ranks, "adamw+clip_grad_norm")
    assert result["clipped"] > 0  # the clipping took effect, so a per-shard norm would have shown
    assert result["norm_error"] < 1e-5 and result["error"] <= 1e-6


def test_the_gradient_monitor_under_fsdp2_reports_and_clips_with_global_norms(ranks):
    result = _result(ranks, "lamb+GradNormMonitor")
    assert result["clipped"] > 0
    assert result["norm_error"] < 1e-5 and result["ratio_error"] < 1e-7 and result["error"] <= 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_the_memory_plan_of_fsdp2_is_what_rank_0_allocates(ranks, name):
    """The planner's FSDP2 figures (per tensor: ⌈rows/2⌉ on the first rank) against the bytes the first
    rank holds of parameters, gradients and optimizer state after a step."""
    from optimlab.memory import plan

    measured = _result(ranks, f"{name}/fsdp2/fp32")["memory"]
    planned = plan(harness.make_model(), name, "fp32", ranks=2, fsdp2=True).per_rank
    assert {c: planned[c] for c in measured} == measured


@pytest.mark.parametrize("name", NAMES)
def test_the_memory_plan_of_zero1_is_what_the_ranks_allocate(ranks, name):
    """ZeRO-1 (ZeroRedundancyOptimizer) keeps all the state once across the ranks; it hands out whole
    tensors, so the fullest rank exceeds the even split by less than the largest tensor's state."""
    from optimlab.memory import plan

    measured = _result(ranks, f"{name}/zero1/fp32")["memory"]
    # ZeroRedundancyOptimizer gets the bare parameters, so Muon takes every matrix as torch's does (the
    # plan of a module otherwise follows the parameter-group policy: its output head AdamW's)
    as_given = f"{name}:matrix=True" if "matrix" in registry.spec(name).defaults else name
    planned = plan(harness.make_model(), as_given, "fp32", zero=1, ranks=2)
    assert measured["all_ranks_state"] == planned.whole["optimizer_state"]
    spec = registry.spec(name)
    largest = max(spec.state_bytes(p.shape, **spec.preset) for p in harness.make_model().parameters())
    assert planned.optimizer_state <= measured["largest_rank_state"] <= planned.optimizer_state + largest


@pytest.mark.parametrize("layout", ["mixed", "columns"])
@pytest.mark.parametrize("name", NAMES)
def test_split_and_replicated_dtensors_in_one_group_equal_plain_tensors(ranks, name, layout):
    """DTensors made by hand, split on dim 0 (or on dim 1: gathered whole) or replicated, stepped
    together (fp64)."""
    err = _result(ranks, f"{name}/{layout}/fp64")["error"]
    assert err <= TOLERANCE["fp64"], f"{name}: {err:.3g}"


def test_sophias_hutchinson_estimate_under_fsdp2_is_refused_clearly(ranks):
    assert "under FSDP2 needs estimator='gnb'" in _result(ranks, "sophia/update_hessian")["refused"]


def test_sophias_gnb_under_fsdp2_is_the_global_batchs_and_keeps_the_gradients(ranks):
    """GNB's gradient through FSDP2's own backward (reduce-scattered, averaged over the mesh): both ranks
    train as one process on the whole batch, Hessian refreshes included (fp64), and the gradients present
    when update_hessian is called are there unchanged after it."""
    result = _result(ranks, "sophia/fsdp2/gnb")
    assert result["error"] <= TOLERANCE["fp64"] and result["hessian_drift"] == 0.0 and result["grads_kept"]


@pytest.mark.parametrize("estimator", ["gnb", "hutchinson"])
def test_sophias_hessian_under_ddp_is_the_global_batchs_on_every_rank(ranks, estimator):
    """With process_group, each rank's estimate from its half of the batch is combined into the estimate
    of the whole batch (GNB: B·ĝ² of the summed gradient, not a mean of squares): both ranks train as one
    process on the whole batch, Hessian refreshes included (fp64)."""
    result = _result(ranks, f"sophia/ddp/{estimator}")
    assert result["error"] <= TOLERANCE["fp64"] and result["hessian_drift"] == 0.0 and not result["warned"]


@pytest.mark.parametrize("estimator", ["gnb", "hutchinson"])
def test_sophia_under_ddp_without_a_process_group_warns_that_replicas_drift(ranks, estimator):
    result = _result(ranks, f"sophia/ddp-without-group/{estimator}")
    assert result["warned"] and result["hessian_drift"] > 1e-4  # what the warning is about


def test_sophias_process_group_refuses_ranks_that_hold_different_parameters(ranks):
    result = _result(ranks, "sophia/mismatched")
    assert "hold different parameters" in result["refused"] and result["ranks_refusing"] == 2
