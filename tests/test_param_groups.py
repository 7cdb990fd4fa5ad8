"""optimlab.param_groups: decay by module type and ndim, layer decay, overrides, matrix split, checks."""

import pytest
import torch
from torch import nn

import optimlab
from optimlab import param_groups as PG


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln1, self.attn, self.ln2 = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))


class TinyLM(nn.Module):
    def __init__(self, vocab=50, d=8, n=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(16, d))
        self.blocks = nn.ModuleList(Block(d) for _ in range(n))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def no_weight_decay(self):  # timm's convention
        return ["pos"]


def by_name(groups):
    return {n: g for g in groups for n in g["param_names"]}


def test_no_decay_for_biases_norms_embeddings_and_declared_names():
    model = TinyLM()
    groups = PG.build(model, lr=1e-3, weight_decay=0.1, verbose=False)
    decayed = {n for n, g in by_name(groups).items() if g["weight_decay"] == 0.1}
    hidden = [f"blocks.{i}.{m}.weight" for i in range(3) for m in ("attn", "mlp.0", "mlp.2")]
    assert decayed == set(hidden) | {"head.weight"}
    assert set(by_name(groups)) == {n for n, _ in model.named_parameters()}
    assert [g["name"] for g in groups] == ["no_decay", "decay"]


class Odd(nn.Module):
    """Names that mislead name-based rules: the lesson's `'norm' in name or 'bias' in name` gets these
    wrong."""

    def __init__(self):
        super().__init__()
        self.normalizer = nn.Linear(4, 4)      # a Linear whose name contains 'norm': its weight decays
        self.foo = nn.BatchNorm1d(4)           # a norm layer whose name does not say so
        self.table = nn.Embedding(10, 4)       # an embedding called 'table'
        self.rms = type("MyRMSNorm", (nn.Module,), {})()  # a custom norm class, with a 2-D weight
        self.rms.weight = nn.Parameter(torch.ones(1, 4))
        self.gain = nn.Parameter(torch.ones(4))  # a 1-D tensor with no telling name
        self.proj = type("Normalizer", (nn.Module,), {})()  # a class name containing, not ending in, Norm
        self.proj.weight = nn.Parameter(torch.ones(4, 4))
        self.frozen = nn.Linear(4, 4).requires_grad_(False)


def test_decisions_follow_module_type_and_ndim_not_names():
    model = Odd()
    groups = PG.build(model, lr=1.0, weight_decay=0.5, verbose=False)
    wd = {n: g["weight_decay"] for n, g in by_name(groups).items()}
    assert wd == {"normalizer.weight": 0.5, "normalizer.bias": 0.0, "foo.weight": 0.0, "foo.bias": 0.0,
                  "table.weight": 0.0, "rms.weight": 0.0, "gain": 0.0, "proj.weight": 0.5}  # no frozen.*
    assert PG.build(model, 1.0, 0.5, decay_embeddings=True, verbose=False)[-1]["param_names"] == \
        ["normalizer.weight", "table.weight", "proj.weight"]


def test_layer_decay_by_depth_and_module_overrides():
    model = TinyLM()
    groups = PG.build(model, lr=1e-3, weight_decay=0.1, layer_decay=0.5, lr_scale={"head": 10.0},
                      verbose=False)
    lr = {n: g["lr"] for n, g in by_name(groups).items()}
    # depths: embed, pos 0; blocks.i -> i + 1; norm, head 4 (the top, scale 1)
    assert lr["embed.weight"] == lr["pos"] == pytest.approx(1e-3 * 0.5 ** 4)
    for i in range(3):
        expected = pytest.approx(1e-3 * 0.5 ** (3 - i))
        assert lr[f"blocks.{i}.attn.weight"] == lr[f"blocks.{i}.ln1.bias"] == expected
    assert lr["norm.weight"] == pytest.approx(1e-3) and lr["head.weight"] == pytest.approx(1e-2)
    assert all(g["lr"] == pytest.approx(1e-3 * g["lr_factor"]) for g in groups)
    names = [g["name"] for g in groups]
    assert "depth4/head/decay" in names and len(names) == len(set(names))


def test_layer_decay_on_a_plain_sequential_and_explicit_blocks():
    mlp = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    lr = {n: g["lr"] for n, g in by_name(PG.build(mlp, lr=1.0, layer_decay=0.1, verbose=False)).items()}
    assert lr == pytest.approx({"0.weight": 0.01, "0.bias": 0.01, "2.weight": 0.1, "2.bias": 0.1,
                                "4.weight": 1.0, "4.bias": 1.0})
    by_callable = PG.build(mlp, lr=1.0, layer_decay=0.1, blocks=lambda n: 0 if n.startswith("0.") else 1,
                           verbose=False)
    assert {n: g["lr"] for n, g in by_name(by_callable).items()}["0.bias"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="not a ModuleList or Sequential"):
        PG.build(TinyLM(), lr=1.0, layer_decay=0.5, blocks="norm", verbose=False)


def test_matrix_split_leaves_embeddings_head_and_vectors_out():
    groups = PG.build(TinyLM(), lr=1e-3, weight_decay=0.1, split_matrices=True, verbose=False)
    matrices = {n for g in groups if g["matrix"] for n in g["param_names"]}
    assert matrices == {f"blocks.{i}.{m}.weight" for i in range(3) for m in ("attn", "mlp.0", "mlp.2")}
    assert {n for n, _ in TinyLM().named_parameters()} == set(by_name(groups))


def test_overlapping_or_unknown_overrides_raise():
    with pytest.raises(ValueError, match="matches several lr_scale keys"):
        PG.build(TinyLM(), lr=1.0, lr_scale={"blocks": 0.1, "blocks.0.*": 2.0}, verbose=False)
    with pytest.raises(ValueError, match=r"lr_scale keys \['backbone'\] match no trainable parameter"):
        PG.build(TinyLM(), lr=1.0, lr_scale={"backbone": 0.1}, verbose=False)
    with pytest.raises(ValueError, match="layer_decay must be in"):
        PG.build(TinyLM(), lr=1.0, layer_decay=1.5, verbose=False)


def test_check_catches_the_seed_layerwise_recipe_dropping_parameters():
    model = TinyLM()
    # the lesson's configure_layerwise_lr_decay groups only names with "layer.{i}." -- here "blocks.{i}."
    seed_groups = [{"params": [p for n, p in model.named_parameters() if f"blocks.{i}." in n]}
                   for i in range(3)]
    with pytest.raises(ValueError, match=r"dropped \(never trained\): pos, embed.weight, norm.weight, "
                                         r"norm.bias, head.weight"):
        PG.check(model, seed_groups)
    twice = [{"params": list(model.parameters())}, {"params": [model.head.weight]}]
    with pytest.raises(ValueError, match=r"placed twice: head.weight \(groups \[0, 1\]\)"):
        PG.check(model, twice)
    PG.check(model, [{"params": list(model.parameters())}])  # a correct grouping passes


@pytest.mark.parametrize("make", [lambda g: optimlab.create("adamw", g), lambda g: torch.optim.AdamW(g)])
def test_groups_drive_the_optimizer(make):
    """With zero gradients AdamW's step is pure decay: θ(1 - lr·wd) where wd applies, else θ unchanged."""
    model = TinyLM()
    groups = PG.build(model, lr=0.1, weight_decay=0.5, layer_decay=0.5, verbose=False)
    opt = make(groups)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in model.named_parameters():
        g = by_name(groups)[n]
        torch.testing.assert_close(p.detach(), before[n] * (1 - g["lr"] * g["weight_decay"]))
    assert opt.state_dict()["param_groups"][0]["param_names"] == groups[0]["param_names"]


def test_summary_table(capsys):
    PG.build(TinyLM(), lr=1e-3, weight_decay=0.1, layer_decay=0.5, verbose=True)
    lines = capsys.readouterr().out.splitlines()
    header = ["group", "tensors", "params", "lr", "scale", "lr", "wd", "no", "decay", "because"]
    assert lines[0].split() == header
    first = lines[1].split()
    assert first[:6] == ["depth0/no_decay", "2", "528", "0.0625", "6.25e-05", "0"]  # 50*8 + 16*8 params
    assert lines[1].endswith("embedding 1, name 1") or lines[1].endswith("name 1, embedding 1")
    total = sum(p.numel() for p in TinyLM().parameters())
    # tensors: pos, embed; 3 blocks x (ln1, attn, ln2, mlp.0, mlp.2) x (weight, bias); norm x 2; head
    assert lines[-2].split() == ["total", str(2 + 3 * 10 + 2 + 1), f"{total:,}"] and "blocks" in lines[-1]
