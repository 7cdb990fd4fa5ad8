"""A rule's source specialised to its static flags, and the difference between two rules.

`optimlab diff adam adamw` is literal: both are the Adam rule, once with `decoupled_weight_decay`
false and once true. Specialising each resolves `if h.<flag>:` statements whose flag the
hyperparameters decide, keeping the taken branch (comments included) and dropping the other, so the
diff shows exactly the lines in which the two optimizers differ. Branches on per-step flags (RAdam's
`h.rectified`) stay as written.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import textwrap

import torch

from .engine import codec
from .registry import Spec, resolve

INDENT = "    "


def _decide(test: ast.expr, flags: dict) -> bool | None:
    """The value of an if-condition made of h.<flag>, not, and, or; None where a flag is not static."""
    if isinstance(test, ast.Attribute) and isinstance(test.value, ast.Name) and test.value.id == "h":
        value = flags.get(test.attr)
        return value if isinstance(value, bool) else None
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        inner = _decide(test.operand, flags)
        return None if inner is None else not inner
    if isinstance(test, ast.BoolOp):
        values = [_decide(v, flags) for v in test.values]
        if isinstance(test.op, ast.And):
            return False if False in values else (None if None in values else True)
        return True if True in values else (None if None in values else False)
    return None


def specialize(fn, flags: dict) -> list[str]:
    """Source lines of `fn` with every branch on a static flag resolved."""
    lines = textwrap.dedent(inspect.getsource(fn)).splitlines()
    drop: set[int] = set()
    dedent = [0] * len(lines)
    for node in ast.walk(ast.parse("\n".join(lines))):
        if not isinstance(node, ast.If):
            continue
        taken = _decide(node.test, flags)
        if taken is None:
            continue
        body = range(node.body[0].lineno - 1, node.body[-1].end_lineno)
        orelse = range(node.orelse[0].lineno - 1, node.orelse[-1].end_lineno) if node.orelse else range(0)
        else_line = [orelse.start - 1] if node.orelse else []
        drop.add(node.lineno - 1)  # the `if` line
        drop.update(else_line)
        kept, gone = (body, orelse) if taken else (orelse, body)
        drop.update(gone)
        for i in kept:
            dedent[i] += 1
    return [
        line[len(INDENT) * dedent[i]:] if line.startswith(INDENT * dedent[i]) else line.lstrip()
        for i, line in enumerate(lines)
        if i not in drop
    ]


def rule_source(found: Spec, hyper: dict) -> list[str]:
    """The specialised source of a spec's rule: its per-step scalars, then its update."""
    h = found.hyper(**hyper)
    rule = found.rule
    parts = [rule.scalars, rule.update] if rule.scalars else [rule.update]
    out: list[str] = []
    flags = {**vars(h), **{name: True for name in rule.guards}}  # guarded terms shown as written
    for fn in parts:
        out += specialize(fn, flags) + [""]
    return out + storage_lines(found, h)


def storage_lines(found: Spec, h) -> list[str]:
    """How a coded optimizer stores its states (engine/codec.py), as comments after its rule: the rule is
    the same, the storage is the difference (`diff adamw adamw8bit`). Nothing for uncoded optimizers."""
    cls = found.cls
    coded = {sym: cls._codec_chosen(sym, h) for sym in found.rule.kept(h)}
    if not any(coded.values()):
        return []
    least = getattr(h, "min_8bit_size", 0)
    out = ["# state storage (the rule above sees decoded values):"]
    for sym, coder in coded.items():
        key = found.rule.state[sym].key
        if coder is None:
            out.append(f"# {sym} ({key}): a tensor like θ")
            continue
        codes, absmax = codec.keys(key)
        out += [f"# {sym} ({key}): {codes} (uint8) + {absmax} (float32, one per {codec.BLOCK}),",
                f"#     {coder.name}; a tensor of < {least} elements keeps a tensor like θ"]
    return out


def describe(text: str) -> tuple[str, list[str]]:
    """A label and the specialised rule source for 'name' or 'name:key=value,…'."""
    found, hyper = resolve(text)
    found.create([torch.zeros(1, requires_grad=True)], **hyper)  # values checked as `create` checks them
    settings = {**found.preset, **hyper}
    label = found.name + (f" ({', '.join(f'{k}={v}' for k, v in settings.items())})" if settings else "")
    label += f"  [rule {found.rule.name} in {found.rule.update.__module__}]"
    return label, rule_source(found, hyper)


def diff(a: str, b: str, context: int = 2) -> str:
    """A unified diff between the rules of two optimizers (registry names, presets, or name:k=v)."""
    if isinstance(context, bool) or not isinstance(context, int) or context < 0:
        raise ValueError(f"context must be a whole number of lines >= 0, got {context!r}")
    label_a, src_a = describe(a)
    label_b, src_b = describe(b)
    lines = difflib.unified_diff(src_a, src_b, fromfile=label_a, tofile=label_b, n=context, lineterm="")
    return "\n".join(lines)
