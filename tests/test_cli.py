"""The command line as a new user meets it: output paths, names in any case, bounded work, one-line
errors, help and version, and a core install without the lab extra."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import optimlab
from optimlab import schedules
from optimlab.cli import build_parser, join_negative_values, main

SRC = str(Path(__file__).resolve().parents[1] / "src")


def one_line_error(capsys, argv, code=2) -> str:
    """Run the CLI; it must exit with `code`, print nothing on stdout, and one line on stderr."""
    assert main(argv) == code
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err, (out, err)
    return err


# --- output files: checked before the work, written after the table ------------------------------

BAD_PATHS = [("/nonexistent-dir/x.png", "does not exist"), ("/proc/x.png", "cannot write there")]
VERBS = {  # each verb with an output option, and arguments that would otherwise do real work
    "race": ["race", "--steps", "5", "--out"],
    "race --html": ["race", "--steps", "5", "--html"],
    "race --gif": ["race", "--steps", "5", "--gif"],
    "lr-find": ["lr-find", "--steps", "5", "--out"],
    "sweep": ["sweep", "-o", "sgd", "--lrs", "0.1", "--steps", "3", "--seeds", "1", "--out"],
    "schedule": ["schedule", "cosine", "total_steps=10", "--out"],
    "claims": ["claims", "lion-half-state", "--out"],
    "breakit": ["breakit", "decoupled-decay", "--quick", "--out"],
}
SUFFIX = {"race --html": ".html", "race --gif": ".gif", "claims": ".md", "breakit": ""}


@pytest.mark.parametrize("verb", sorted(VERBS))
@pytest.mark.parametrize("path, reason", BAD_PATHS)
def test_an_unwritable_output_is_one_line_before_any_work(capsys, verb, path, reason):
    path = path.replace(".png", SUFFIX.get(verb, ".png"))
    if verb == "breakit":  # a folder: its parent must exist or be creatable, and take files
        path = path.rsplit("/", 1)[0] + "/sub" if path.startswith("/proc") else path
    err = one_line_error(capsys, VERBS[verb] + [path])
    assert path in err and (reason in err or "cannot write" in err or "does not exist" in err), err


def test_a_wrong_extension_or_a_folder_is_refused_with_the_choices(capsys, tmp_path):
    err = one_line_error(capsys, ["race", "--steps", "5", "--gif", str(tmp_path / "race.png")])
    assert "--gif" in err and ".gif" in err
    err = one_line_error(capsys, ["schedule", "cosine", "total_steps=10", "--out", str(tmp_path)])
    assert "must end in one of .png, .svg, .pdf" in err
    err = one_line_error(capsys, ["claims", "lion-half-state", "--out", str(tmp_path)])
    assert "is a folder" in err


def test_a_picture_that_fails_to_write_keeps_the_table(capsys, tmp_path, monkeypatch):
    from optimlab.lab import plots

    def broken(result, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plots, "save_png", broken)
    assert main(["race", "--steps", "5", "--out", str(tmp_path / "race.png"),
                 "--html", str(tmp_path / "race.html")]) == 1
    out, err = capsys.readouterr()
    assert "canyon: 100x² + y²" in out and "adam" in out  # the table
    assert f"wrote {tmp_path / 'race.html'}" in out  # the other file is still written
    assert err.count("\n") == 1 and "No space left on device" in err


def test_the_claims_report_goes_to_stdout_when_its_file_fails(capsys, tmp_path, monkeypatch):
    real = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == "r.md":
            raise OSError(5, "I/O error")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    assert main(["claims", "lion-half-state", "--out", str(tmp_path / "r.md")]) == 1
    out, err = capsys.readouterr()
    assert "`lion-half-state`" in out and "I/O error" in err


def test_no_library_function_switches_the_matplotlib_backend():
    for path in (Path(SRC) / "optimlab").rglob("*.py"):
        assert "matplotlib.use(" not in path.read_text(), path


# --- names in any case; register() does not overwrite ---------------------------------------------

@pytest.mark.parametrize("typed, name", [("AdamW", "adamw"), ("RAdam", "radam"), ("SGD", "sgd"),
                                         ("LAMB", "lamb"), ("Adam_No_Bias_Correction",
                                                            "adam_no_bias_correction")])
def test_names_resolve_in_any_case(typed, name):
    assert optimlab.spec(typed) is optimlab.spec(name)
    p = torch.nn.Parameter(torch.ones(2))
    assert type(optimlab.create(typed, [p])) is optimlab.spec(name).cls
    assert type(optimlab.create(f"{typed}:lr=0.1", [p])) is optimlab.spec(name).cls


def test_a_suggestion_is_the_case_folded_name(capsys):
    with pytest.raises(ValueError, match="did you mean 'adamw'"):
        optimlab.spec("AdamWW")
    finals = []
    for name in ("AdamW:weight_decay=0.5", "adamw:weight_decay=0.5", "adam:weight_decay=0.5"):
        assert main(["race", "-o", name, "--steps", "20", "--json"]) == 0
        finals.append(json.loads(capsys.readouterr().out)["rows"][0]["final_loss"])
    assert finals[0] == finals[1] != finals[2]  # AdamW is adamw, never adam's L2
    assert main(["diff", "AdamW", "adam"]) == 0
    assert "θ = θ * (1 - h.lr * h.weight_decay)" in capsys.readouterr().out  # AdamW's decay, not L2


def test_register_refuses_to_overwrite_unless_told():
    import dataclasses

    from optimlab import registry

    adam = optimlab.spec("adam")
    with pytest.raises(ValueError, match="already registered.*replace=True"):
        optimlab.register(dataclasses.replace(adam, idea="another"))
    with pytest.raises(ValueError, match="lower-case"):
        optimlab.register(dataclasses.replace(adam, name="MyAdam"))
    try:
        assert optimlab.register(dataclasses.replace(adam, idea="another"), replace=True).idea == "another"
        assert optimlab.spec("adam").idea == "another"
    finally:
        registry._specs["adam"] = adam
    assert optimlab.spec("adam") is adam


# --- values: the documented errors, at every entry point --------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    (["diff", "adam", "adam:amsgrad=maybe"], "amsgrad must be True or False"),
    (["diff", "adam", "adam:lr=-1"], "lr must be"),
    (["diff", "adam", "adamw", "--context", "-1"], "context must be"),
    (["lr-find", "--optimizer", "adamw:lr=0.1"], "remove lr="),
    (["lr-find", "--steps", "1000000000"], "steps must be an integer from 3 to 100,000"),
    (["race", "--steps", "1000000000"], "steps must be a whole number from 1 to 20,000"),
    (["sweep", "--steps", "1000000000"], "at most 100,000 updates per run"),
    (["memory", "--params", "1e30"], "from 1 to 1e15"),
    (["memory", "--params", "1e400"], "from 1 to 1e15"),
    (["schedule", "cosine", "total_steps=1e400"], "total_steps must be a whole number"),
    (["schedule", "exponential", "gamma=1e308", "--steps", "10"], "overflows a float at t = 2"),
    (["schedule", '{"name":"sequence"}'], "sequence needs schedules, boundaries"),
    (["schedule", "{nope"], "looks like JSON"),
    (["schedule", "cosine", "total=100"], "did you mean 'total_steps'"),
    (["schedule", "cosine", "total_steps=1000000000", "--json"], "pass --every"),
])
def test_bad_or_huge_values_are_one_line(capsys, argv, expected):
    assert expected in one_line_error(capsys, argv)


def test_memory_recompute_takes_only_its_choices(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["memory", "--params", "13B", "--recompute", "bogus"])
    assert stop.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err


def test_schedule_constructors_raise_the_documented_value_error():
    with pytest.raises(ValueError, match=r"cosine has no argument 'total' \(did you mean 'total_steps'\?\)"):
        schedules.cosine(total=100)
    with pytest.raises(ValueError, match="cosine needs total_steps"):
        schedules.cosine()
    with pytest.raises(ValueError, match="sequence needs schedules, boundaries"):
        schedules.from_dict({"name": "sequence"})
    assert schedules.cosine(100)(50) == schedules.cosine(total_steps=100)(50) == pytest.approx(0.5)


def test_a_billion_update_schedule_is_sampled_not_stored(capsys):
    assert main(["schedule", "cosine", "total_steps=1000000000"]) == 0
    out = capsys.readouterr().out
    assert "1000000000             0" in out and "shape: " in out
    assert main(["schedule", "step", "step_size=1", "--steps", "100000000"]) == 0  # bounded phase marks
    assert len(capsys.readouterr().out.splitlines()) < 20


# --- the parser: version, help, --no-progress, negative values --------------------------------------

def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"optimlab {optimlab.__version__}"


def test_every_verbs_help_is_wrapped_the_same_way(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # wider terminals still get 100 columns at most
    parser = build_parser()
    verbs = next(a for a in parser._actions if a.choices and "race" in a.choices).choices
    assert {"race", "breakit", "sweep", "schedule", "claims", "memory", "lr-find"} <= set(verbs)
    for name, sub in [("optimlab", parser), *verbs.items()]:
        text = sub.format_help()
        too_long = [line for line in text.splitlines() if len(line) > 100]
        assert not too_long, (name, too_long)
        assert len(text.splitlines()) > 5, name


def test_claims_progress_switches_both_ways():
    parser = build_parser()
    assert parser.parse_args(["claims", "--no-progress"]).progress is False
    assert parser.parse_args(["claims", "--progress"]).progress is True
    assert parser.parse_args(["claims"]).progress is False


@pytest.mark.parametrize("argv, joined", [
    (["race", "--start", "-1.5,1"], ["race", "--start=-1.5,1"]),
    (["race", "--noise", "-.5"], ["race", "--noise=-.5"]),
    (["race", "--start=-2,2"], ["race", "--start=-2,2"]),
    (["race", "--json", "-n", "5"], ["race", "--json", "-n", "5"]),
    (["race", "-o", "sgd", "-l", "canyon"], ["race", "-o", "sgd", "-l", "canyon"]),
])
def test_a_negative_first_value_is_read_as_a_value(argv, joined):
    assert join_negative_values(build_parser(), argv) == joined


def test_race_from_a_negative_start(capsys):
    assert main(["race", "--start", "-1.5,1", "--steps", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["start"] == [-1.5, 1.0]


# --- a core install: torch and numpy only -----------------------------------------------------------
# The extras are made unimportable in a fresh interpreter (None in sys.modules, which is also what
# importlib.util.find_spec reports for a missing module), and each command runs there in turn.

BLOCKER = r"""
import contextlib, io, json, sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # as if not installed: `import name` raises ModuleNotFoundError
from optimlab.cli import main
results = []
for argv in json.loads(sys.argv[2]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except BaseException as e:
            code = f"raised {type(e).__name__}: {e}"
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def run_without(modules: str, commands: list[list[str]]) -> list:
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run([sys.executable, "-c", BLOCKER, modules, json.dumps(commands)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_a_core_install_names_the_extra_in_one_line(tmp_path):
    lab = [["race", "--steps", "5", "--out", str(tmp_path / "race.png")],
           ["race", "--steps", "5", "--html", str(tmp_path / "race.html")],
           ["race", "--steps", "5", "--gif", str(tmp_path / "race.gif")],
           ["schedule", "cosine", "total_steps=10", "--out", str(tmp_path / "s.png")],
           ["lr-find", "--steps", "5"],
           ["memory", "--task", "digits"],
           ["sweep", "-o", "sgd", "--lrs", "0.1", "--steps", "3", "--seeds", "1"],
           ["breakit", "decoupled-decay", "--quick", "--out", str(tmp_path / "b")]]
    core = [["list"], ["race", "--steps", "5"], ["breakit", "--list"], ["claims", "--list"],
            ["memory", "--params", "7B"], ["schedule", "cosine", "total_steps=10"], ["diff", "adam", "adamw"]]
    results = run_without("matplotlib,plotly,sklearn,tqdm,PIL", lab + core)
    for argv, (code, out, err) in zip(lab, results):
        assert code == 3 and out == "" and err.count("\n") == 1, (argv, code, out, err)  # before any work
        assert 'pip install "optimlab[lab]"' in err and "Traceback" not in err, (argv, err)
    for argv, (code, out, err) in zip(core, results[len(lab):]):
        assert code == 0 and out and not err, (argv, code, err)


def test_tqdm_is_imported_only_when_a_bar_is_drawn():
    sweep = ["sweep", "-o", "sgd", "--lrs", "0.1", "--steps", "3", "--seeds", "1", "-j", "1"]
    (quiet, bar) = run_without("tqdm", [sweep + ["--no-progress"], sweep + ["--progress"]])
    assert quiet[0] == 0 and "best lr" in quiet[1]
    assert bar[0] == 3 and "tqdm" in bar[2] and "optimlab[lab]" in bar[2]


def test_serve_without_the_web_extra_names_it_in_one_line():
    (code, out, err), = run_without("uvicorn,fastapi", [["serve", "--port", "0"]])
    assert code == 3 and out == "" and err.count("\n") == 1, (code, out, err)
    assert 'pip install "optimlab[web]"' in err and "Traceback" not in err
