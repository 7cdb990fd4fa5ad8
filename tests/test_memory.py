"""The memory planner against the lessons' figures, hand arithmetic, published parameter counts, the
activation formula of Korthikanti et al. 2022, and the state each optimizer really allocates."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import optimlab
from optimlab.cli import main
from optimlab.cli.memory import parse_count
from optimlab.memory import Transformer, measured_state_bytes, plan

GB = 10**9


# --- the lessons' figures -----------------------------------------------------------------------------

def test_seed_13b_bf16_mixed_adamw():
    """The curvature-bets lesson: params 26 GB, grads 26 GB, Adam m and v 52 + 52 = 104 GB, fp32 master 52
    GB, ~208 GB."""
    p = plan(13e9, "adamw", "bf16-mixed")
    assert p.parameters == 26 * GB and p.gradients == 26 * GB and p.master_weights == 52 * GB
    assert p.optimizer_state == 104 * GB
    assert p.total_bytes == 208 * GB and p.activations == 0


def test_seed_13b_zero2_on_8_ranks_is_about_49_gb():
    """The curvature-bets lesson: 26 (params, unsharded) + 26/8 (grads) + 156/8 (m, v and master) ≈ 49 GB per
    rank."""
    p = plan(13e9, "adamw", "bf16-mixed", zero=2, ranks=8)
    assert p.parameters == 26 * GB and p.gradients == 26 * GB // 8 and p.master_weights == 52 * GB // 8
    assert p.optimizer_state == -(-(104 * GB) // 8)  # rounded up: a rank holds whole bytes
    assert p.total_bytes == 48_750_000_000 and round(p.total_bytes / GB) == 49
    assert p.whole_bytes == 208 * GB


def test_seed_70b_times_16_bytes_is_the_total_not_the_optimizer_state():
    """The curvature-bets lesson says 70e9 × 16 = 1.12 TB 'of optimizer state'. 1.12 TB is right, but it is
    everything:
    the optimizer's state is m and v, 560 GB (840 GB if the fp32 master copy is counted with it)."""
    p = plan(70e9, "adamw", "bf16-mixed")
    assert p.total_bytes == 1120 * GB
    assert p.optimizer_state == 560 * GB and p.optimizer_state + p.master_weights == 840 * GB


def test_seed_7b_fp32_adam_total_includes_gradients():
    """The adam-vs-sgd lesson: weights 28 GB + Adam states 56 GB = '84 GB minimum'. It leaves out the 28 GB
    of gradients."""
    p = plan(7e9, "adam", "fp32")
    parts = (p.parameters, p.gradients, p.optimizer_state, p.master_weights)
    assert parts == (28 * GB, 28 * GB, 56 * GB, 0)
    assert p.total_bytes == 112 * GB


@pytest.mark.parametrize("name, fp32, mixed, bf16", [
    # hand table, bytes per parameter: params + grads + state (+ fp32 master in the mixed recipe)
    # the curvature-bets lesson says 4 for mixed: it forgets the master copy
    ("sgd", 4 + 4, 2 + 2 + 4, 2 + 2),
    ("momentum", 4 + 4 + 4, 2 + 2 + 4 + 4, 2 + 2 + 2),  # the curvature-bets lesson says 8: the same omission
    ("adamw", 4 + 4 + 8, 2 + 2 + 8 + 4, 2 + 2 + 4),  # the lessons' 16
    ("lion", 4 + 4 + 4, 2 + 2 + 4 + 4, 2 + 2 + 2),  # the curvature-bets lesson's 12
    ("adagrad", 4 + 4 + 4, 2 + 2 + 4 + 4, 2 + 2 + 2),
    ("amsgrad", 4 + 4 + 12, 2 + 2 + 12 + 4, 2 + 2 + 6),
])
def test_bytes_per_parameter_per_recipe(name, fp32, mixed, bf16):
    n = 10**9
    for recipe, per_param in (("fp32", fp32), ("bf16-mixed", mixed), ("bf16", bf16)):
        assert plan(n, name, recipe).total_bytes == per_param * n, recipe


def test_lion_keeps_half_of_adams_state_not_a_third():
    """The adam-vs-sgd lesson claims '~3x memory savings over Adam (one buffer vs two)': one buffer of two is
    half."""
    adam, lion = plan(10**9, "adamw", "fp32"), plan(10**9, "lion", "fp32")
    assert adam.optimizer_state == 2 * (lion.optimizer_state)


def test_adafactor_factored_state_is_rows_plus_columns_not_a_buffer():
    """The lessons: '~4 bytes/param' (curvature-bets) and '~1 buffer ... SVD' (adam-vs-sgd). Adafactor
    keeps a row and a column mean of g² per matrix: (n + m) numbers, no SVD; the ~4 B/param in the
    curvature-bets lesson's ~8 total is the master copy."""
    p = plan([(4096, 4096)], "adafactor", "bf16-mixed")
    assert p.optimizer_state == (4096 + 4096) * 4
    assert p.total_bytes / 4096**2 == pytest.approx(8.0, abs=0.01)  # 2 + 2 + ~0 + 4
    assert plan([(4096,)], "adafactor", "fp32").optimizer_state == 4096 * 4  # vectors: full variance


# --- ZeRO ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("zero, divided", [
    (1, {"optimizer_state", "master_weights"}),
    (2, {"optimizer_state", "master_weights", "gradients"}),
    (3, {"optimizer_state", "master_weights", "gradients", "parameters"}),
])
def test_zero_stages_shard_what_deepspeed_shards(zero, divided):
    n = 8 * 10**9
    whole = {"parameters": 2 * n, "gradients": 2 * n, "optimizer_state": 8 * n,
             "master_weights": 4 * n}
    p = plan(n, "adamw", "bf16-mixed", zero=zero, ranks=4)
    for component, size in whole.items():
        assert getattr(p, component) == (-(-size // 4) if component in divided else size), component


def test_zero_on_one_rank_changes_nothing():
    assert plan(10**9, "adamw", zero=3).total_bytes == plan(10**9, "adamw").total_bytes


# --- the state each optimizer actually allocates -------------------------------------------------------

class Mixed(nn.Module):
    """Every shape the rules treat differently: a conv (4-D), a 3-D tensor, matrices, vectors, frozen ones."""

    def __init__(self, frozen=False):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)
        self.embedding = nn.Embedding(11, 6)
        self.linear = nn.Linear(6, 5)
        self.norm = nn.LayerNorm(5)
        self.cube = nn.Parameter(torch.randn(2, 3, 4))
        self.frozen = nn.Linear(5, 7).requires_grad_(not frozen)


@pytest.mark.parametrize("name", [*optimlab.available(), *optimlab.presets,
                                  "rmsprop:centered=True,momentum=0.9", "adafactor:matrix_view='last_two'"])
def test_planned_state_equals_what_one_real_step_allocates(name):
    model = Mixed()
    for recipe in ("fp32", "bf16", "bf16-mixed"):
        assert plan(model, name, recipe).optimizer_state == measured_state_bytes(model, name, recipe), recipe
    before = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # measured on a copy


def test_frozen_parameters_get_no_gradient_state_or_master():
    full, frozen = plan(Mixed(), "adamw", "bf16-mixed"), plan(Mixed(frozen=True), "adamw", "bf16-mixed")
    n_frozen = 5 * 7 + 7
    assert frozen.parameters == full.parameters and frozen.trainable_count == full.parameter_count - n_frozen
    assert full.gradients - frozen.gradients == 2 * n_frozen
    assert full.master_weights - frozen.master_weights == 4 * n_frozen
    assert full.optimizer_state - frozen.optimizer_state == 8 * n_frozen
    assert frozen.optimizer_state == measured_state_bytes(Mixed(frozen=True), "adamw", "bf16-mixed")


def test_a_meta_device_model_plans_like_a_real_one():
    size = dict(d_model=64, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=128,
                batch_first=True)
    with torch.device("meta"):
        meta = nn.Transformer(**size)
    real = nn.Transformer(**size)
    assert plan(meta, "adafactor").whole == plan(real, "adafactor").whole


# --- transformer shapes ----------------------------------------------------------------------------------

def test_published_parameter_counts():
    gpt2 = Transformer(12, 768, 50257, heads=12, positions=1024)  # GPT-2 small: 124,439,808
    llama13 = Transformer(40, 5120, 32000, heads=40, ffn=13824, mlp="swiglu", bias=False, tied=False)
    assert plan(gpt2).parameter_count == 124_439_808
    assert plan(llama13).parameter_count == 13_015_864_320  # Llama-2-13B


def test_transformer_shape_matches_real_torch_layers():
    """The GPT layout is torch's own: an embedding, nn.TransformerEncoderLayer blocks, a final LayerNorm."""
    h, layers, vocab = 32, 3, 50
    blocks = [nn.TransformerEncoderLayer(h, 4, 4 * h) for _ in range(layers)]
    real = nn.Sequential(nn.Embedding(vocab, h), *blocks, nn.LayerNorm(h), nn.Linear(h, vocab, bias=False))
    shape = Transformer(layers, h, vocab, heads=4, tied=False)
    assert sorted(shape.shapes()) == sorted(tuple(p.shape) for p in real.parameters())
    assert plan(shape, "adafactor", "fp32").optimizer_state == measured_state_bytes(real, "adafactor", "fp32")


def test_muon_plans_embeddings_and_head_as_adamw_tensors():
    """Muon keeps one momentum (4 B/param in fp32) for the hidden matrices; the embedding, the output head
    and the vectors are AdamW's (m and v: 8 B/param), as param_groups.build splits a real model."""
    h, layers, vocab = 32, 2, 50
    blocks = [nn.TransformerEncoderLayer(h, 4, 4 * h) for _ in range(layers)]
    real = nn.Sequential(nn.Embedding(vocab, h), *blocks, nn.LayerNorm(h), nn.Linear(h, vocab, bias=False))
    shape = Transformer(layers, h, vocab, heads=4, tied=False)
    outer = ("0.", f"{layers + 2}.")  # the embedding and the head
    hidden = sum(p.numel() for n, p in real.named_parameters() if p.ndim == 2 and not n.startswith(outer))
    rest = sum(p.numel() for p in real.parameters()) - hidden
    planned = plan(shape, "muon", "fp32")
    assert planned.optimizer_state == 4 * hidden + 8 * rest
    assert plan(real, "muon", "fp32").optimizer_state == planned.optimizer_state
    assert measured_state_bytes(real, "muon", "fp32") == planned.optimizer_state
    assert any("AdamW" in note for note in planned.notes)
    # matrix=True by hand: every matrix is Muon's, the embedding and head included
    assert plan(shape, "muon:matrix=True", "fp32").optimizer_state == 4 * (hidden + 2 * vocab * h) + 8 * (
        rest - 2 * vocab * h)


def test_activations_follow_korthikanti_et_al():
    """Per layer sbh(34 + 5as/h) bytes in 16-bit; 34sbh with selective recomputation; 2sbh with full."""
    L, h, a, V, s, b = 4, 256, 8, 1000, 128, 3
    model = Transformer(L, h, V, heads=a)
    assert plan(model, batch=b, seq=s).activations == L * (34 * s * b * h + 5 * a * s * s * b)
    assert plan(model, batch=b, seq=s, recompute="selective").activations == L * 34 * s * b * h
    assert plan(model, batch=b, seq=s, recompute="full").activations == L * 2 * s * b * h
    # fp32: every 2-byte activation doubles, the 1-byte dropout masks (2sbh + as²b) do not: 66sbh + 9as²b
    fp32 = plan(model, "adamw", "fp32", batch=b, seq=s)
    assert fp32.activations == L * (66 * s * b * h + 9 * a * s * s * b)
    sharded = plan(model, zero=3, ranks=4, batch=b, seq=s)
    assert sharded.activations == sharded.whole["activations"]  # each rank keeps its own micro-batch's


# --- bad input ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(optimizer="adamx"), "unknown optimizer 'adamx'"),
    (dict(precision="fp8"), "unknown precision 'fp8'"),
    (dict(zero=4), "ZeRO stage"),
    (dict(zero=2, ranks=0), "ranks must be a positive integer"),
    (dict(ranks=8), "ZeRO stage 0 shard nothing"),
    (dict(batch=2), "both batch and seq"),
    (dict(batch=2, seq=16), "needs a transformer shape"),
])
def test_bad_input_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan(10**6, **kwargs)


@pytest.mark.parametrize("count", [-5, 0, 1.5, float("nan"), True, "13e9"])
def test_bad_parameter_counts(count):
    with pytest.raises(ValueError):
        plan(count)


def test_bad_transformer_shapes():
    with pytest.raises(ValueError, match="heads must divide"):
        Transformer(2, 64, 10, heads=3)
    with pytest.raises(ValueError, match="layers"):
        Transformer(0, 64, 10)
    with pytest.raises(ValueError, match="attention heads"):
        plan(Transformer(2, 64, 10), batch=1, seq=8)
    with pytest.raises(ValueError, match="recompute"):
        plan(Transformer(2, 64, 10, heads=4), batch=1, seq=8, recompute="some")


# --- the command line ------------------------------------------------------------------------------------

def test_parse_count():
    assert [parse_count(t) for t in ("13e9", "13B", "13b", "125M", "1.5T", "7_000_000_000")] == \
        [13 * 10**9, 13 * 10**9, 13 * 10**9, 125 * 10**6, 15 * 10**11, 7 * 10**9]
    for bad in ("-5", "0", "1.5", "abc", "13Q"):
        with pytest.raises(ValueError):
            parse_count(bad)


def test_cli_json_is_per_rank_with_every_component(capsys):
    args = ["memory", "--params", "13e9", "--optimizer", "adamw", "--precision", "bf16-mixed"]
    assert main([*args, "--zero", "2", "--ranks", "8", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["total_bytes"] == 48_750_000_000 and data["per_rank"] is True
    assert data["gradients_bytes"] == 3_250_000_000 and data["whole_model"]["total_bytes"] == 208 * GB
    parts = ("parameters", "gradients", "optimizer_state", "master_weights", "activations")
    assert sum(data[f"{c}_bytes"] for c in parts) == data["total_bytes"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "208.00 GB" in table and "193.72 GiB" in table and "104.00 GB" in table


def test_cli_models_shapes_and_checks(capsys):
    args = ["memory", "--task", "digits", "--optimizer", "adafactor", "--precision", "fp32", "--check"]
    assert main(args) == 0
    assert "matches the plan" in capsys.readouterr().out
    assert main(["memory", "--layers", "12", "--hidden", "768", "--vocab", "50257", "--positions", "1024",
                 "--precision", "fp32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameter_count"] == 124_439_808
    assert main(["memory", "--model", "torch.nn:Linear"]) == 2  # a factory needing arguments: one clean line
    assert main(["memory", "--params", "13e9", "--ranks", "8"]) == 2
    assert "ZeRO stage 0 shard nothing" in capsys.readouterr().err


def test_offload_moves_optimizer_state_and_master_weights_to_the_host():
    on_device = plan(10**9, "adamw", "bf16-mixed", zero=1, ranks=4)
    offloaded = plan(10**9, "adamw", "bf16-mixed", zero=1, ranks=4, offload=True)
    assert offloaded.host == {"optimizer_state": on_device.optimizer_state,
                              "master_weights": on_device.master_weights}
    assert offloaded.optimizer_state == offloaded.master_weights == 0
    assert offloaded.total_bytes == on_device.total_bytes - sum(offloaded.host.values())


def test_fsdp2_splits_each_tensor_on_its_rows_and_the_first_rank_holds_the_ceiling():
    # a 5×6 weight on 2 ranks: 3 rows (18 elements) on the first; a vector of 1: 1 and 0
    p = plan([(5, 6), (1,)], "adamw", "fp32", ranks=2, fsdp2=True)
    assert p.parameters == p.gradients == (18 + 1) * 4
    assert p.optimizer_state == 2 * (18 + 1) * 4
    with pytest.raises(ValueError, match="fsdp2"):
        plan([(5, 6)], "adamw", "fp32", ranks=1, fsdp2=True)
