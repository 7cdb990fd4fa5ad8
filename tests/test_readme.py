"""The README is the front door: its quick start must be what CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```")[1::2]
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_quick_start_is_exactly_two_commands_and_ci_runs_the_second():
    commands = [c for c in quick_start() if not c.startswith("bash") or "pytest" in c]
    assert len(commands) == 2, commands
    assert all("pip install torch==2.13.0" in c for c in commands)  # never a CUDA build
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci and "pytest" in commands[1]
