"""The registry's names and errors, the declared state against what is allocated, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import optimlab
from cases import backward, make_params
from optimlab.cli import main

REQUIRED = {"sgd", "adagrad", "rmsprop", "adam", "adamw", "nadam", "radam", "lion", "lamb", "adafactor"}


def test_available_is_sorted_and_has_the_classic_family():
    names = optimlab.available()
    assert names == sorted(names) and REQUIRED <= set(names)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_create_by_name_gives_a_torch_optimizer_of_the_registered_class(name):
    opt = optimlab.create(name, make_params())
    assert isinstance(opt, torch.optim.Optimizer) and type(opt) is optimlab.spec(name).cls


def test_text_form_and_presets():
    opt = optimlab.create("sgd:lr=0.01,momentum=0.9", make_params())
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["momentum"] == 0.9
    opt = optimlab.create("nesterov", make_params(), lr=0.2)
    assert opt.param_groups[0]["nesterov"] is True and opt.param_groups[0]["lr"] == 0.2
    spec, hp = optimlab.resolve("adam:betas=(0.8, 0.95),amsgrad=True")
    assert spec.name == "adam" and hp == {"betas": (0.8, 0.95), "amsgrad": True}


def test_unknown_name_names_the_choices():
    expected = r"unknown optimizer 'adamx' \(did you mean 'adam'\?\); available: .*adamw"
    with pytest.raises(ValueError, match=expected):
        optimlab.create("adamx", make_params())


def test_unknown_hyperparameter_names_itself_and_the_valid_ones():
    expected = r"adam has no hyperparameter 'bettas' \(did you mean 'betas'\?\); valid: lr, betas"
    with pytest.raises(ValueError, match=expected):
        optimlab.create("adam", make_params(), bettas=(0.9, 0.99))


@pytest.mark.parametrize("name,hp,argument", [
    ("adam", {"lr": -1.0}, "lr"), ("adam", {"betas": (1.0, 0.9)}, "betas"), ("adam", {"eps": -1e-8}, "eps"),
    ("adam", {"amsgrad": "yes"}, "amsgrad"), ("sgd", {"momentum": -0.5}, "momentum"),
    ("sgd", {"nesterov": True}, "nesterov"), ("adamw", {"weight_decay": float("nan")}, "weight_decay"),
    ("adafactor", {"d": 0.5}, "d"), ("adafactor", {"matrix_view": "rows"}, "matrix_view"),
    ("lion", {"path": "gpu"}, "path"), ("adafactor", {"eps": (None, -1.0)}, "eps"),
])
def test_invalid_hyperparameters_raise_value_error_naming_the_argument(name, hp, argument):
    with pytest.raises(ValueError, match=argument):
        optimlab.create(name, make_params(), **hp)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_declared_state_is_what_a_step_allocates(name):
    spec = optimlab.spec(name)
    params = make_params(torch.float32)
    opt = optimlab.create(name, params)
    backward(params, 0)
    opt.step()
    for p in params:
        allocated = {k: (tuple(v.shape), v.dtype) for k, v in opt.state[p].items()
                     if isinstance(v, torch.Tensor) and k != "step"}
        assert allocated == spec.state_tensors(tuple(p.shape), torch.float32)


def test_state_sizes_per_parameter():
    matrix = (4096, 4096)
    per_param = {name: optimlab.spec(name).state_bytes(matrix) / (4096 * 4096) for name in REQUIRED}
    assert per_param["adam"] == per_param["adamw"] == per_param["lamb"] == 8
    # Lion keeps one buffer against Adam's two: half the state (the adam-vs-sgd lesson says "3x" savings; it
    # is 2x).
    assert per_param["lion"] == per_param["adam"] / 2 == 4
    # Adafactor keeps a row and a column for a d×m matrix: O(d + m), not O(dm).
    assert optimlab.spec("adafactor").state_bytes(matrix) == (4096 + 4096) * 4
    assert per_param["sgd"] == 0 and optimlab.spec("momentum").state_bytes(matrix) / 4096**2 == 4


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_list_shows_every_optimizer_with_its_state_size(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and all(f"\n{name} " in out for name in REQUIRED)
    code, out, _ = run_cli(capsys, "list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["adam"]["state_bytes_per_param"] == 8 and rows["lion"]["state_bytes_per_param"] == 4


def changed_lines(diff_text: str) -> tuple[list[str], list[str]]:
    lines = diff_text.splitlines()
    removed = [line for line in lines if line.startswith("-") and not line.startswith("---")]
    added = [line for line in lines if line.startswith("+") and not line.startswith("+++")]
    return removed, added


def test_cli_diff_adam_adamw_is_where_the_decay_goes(capsys):
    code, out, _ = run_cli(capsys, "diff", "adam", "adamw")
    removed, added = changed_lines(out)
    assert code == 0
    assert [line.split("#")[0].strip() for line in removed] == ["-    g = g + h.weight_decay * θ"]
    assert [line.split("#")[0].strip() for line in added] == ["+    θ = θ * (1 - h.lr * h.weight_decay)"]


def test_cli_diff_adam_amsgrad_is_one_max(capsys):
    code, out, _ = run_cli(capsys, "diff", "adam", "amsgrad")
    removed, added = changed_lines(out)
    assert code == 0 and removed == [] and len(added) == 2
    assert "torch.maximum(v_max, v)" in added[0]


def test_cli_diff_of_an_optimizer_with_itself_says_so(capsys):
    code, out, _ = run_cli(capsys, "diff", "adamw", "adam:decoupled_weight_decay=True")
    assert code == 0 and "same rule" in out


def test_cli_errors_are_one_line_and_exit_2(capsys):
    code, out, err = run_cli(capsys, "diff", "adam", "adamx")
    assert code == 2 and err.count("\n") == 1 and "did you mean 'adam'" in err


def test_console_script_runs():
    done = subprocess.run([sys.executable, "-m", "optimlab", "diff", "sgd", "momentum"], capture_output=True,
                          text=True)
    assert done.returncode == 0 and "b = h.momentum * b + (1 - h.damp) * g" in done.stdout
