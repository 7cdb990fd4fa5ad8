"""A plan as a table people read: decimal units (GB = 1e9 bytes, as the lessons and vendors count) with
binary ones (GiB = 2³⁰ bytes, as nvidia-smi and torch.cuda report) beside them."""

from __future__ import annotations

from .precision import PRECISIONS

DECIMAL = [("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("B", 1)]
BINARY = [("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("B", 1)]
LABELS = {"parameters": "parameters", "gradients": "gradients", "optimizer_state": "optimizer state",
          "master_weights": "master weights", "activations": "activations"}


def unit(n: float, units) -> tuple[str, float]:
    """The largest unit in which n is at least 1."""
    return next(((name, size) for name, size in units if n >= size), units[-1])


def format_bytes(n: float) -> str:
    """'26.00 GB (24.21 GiB)'."""
    return f"{_amount(n, DECIMAL)} ({_amount(n, BINARY)})"


def table(plan) -> str:
    from .plan import COMPONENTS, SHARDED_FROM

    def cells(n):
        return f"{_amount(n, DECIMAL):>11} {_amount(n, BINARY):>12}"

    sharded = plan.zero > 0 or bool(plan.host)
    head = f"{'':<16} {'B/param':>8}  {'whole model':^24}"
    if sharded:
        head += f"  {f'per rank (ZeRO-{plan.zero}, {plan.ranks} ranks)':^24}"
    lines = [_title(plan), "", head]
    for c in COMPONENTS:
        if c == "activations" and not plan.whole[c]:
            continue
        row = f"{LABELS[c]:<16} {plan.whole[c] / plan.parameter_count:>8.2f}  {cells(plan.whole[c])}"
        if sharded:
            split = plan.zero >= SHARDED_FROM.get(c, 4) and plan.ranks > 1
            row += f"  {cells(plan.per_rank[c])}" + ("  sharded" if split else "")
        if c in plan.host:
            row += f"  on the host: {cells(plan.host[c])}"
        lines.append(row)
    total = f"{'total':<16} {plan.whole_bytes / plan.parameter_count:>8.2f}  {cells(plan.whole_bytes)}"
    lines.append(total + (f"  {cells(plan.total_bytes)}" if sharded else ""))
    lines += ["", *(f"note: {n}" for n in plan.notes)] if plan.notes else []
    return "\n".join(line.rstrip() for line in lines)


def _amount(n: float, units) -> str:
    name, size = unit(n, units)
    return f"{n:.0f} B" if size == 1 else f"{n / size:.2f} {name}"


def _title(plan) -> str:
    count = f"{plan.parameter_count:,} parameters in {plan.tensors:,} tensor{'s' * (plan.tensors != 1)}"
    if plan.trainable_count != plan.parameter_count:
        count += f" ({plan.trainable_count:,} trainable)"
    recipe = PRECISIONS[plan.precision]
    where = f", ZeRO-{plan.zero} on {plan.ranks} rank{'s' * (plan.ranks != 1)}" if plan.zero else ", one rank"
    return f"{count}\n{plan.optimizer}, {recipe.name} ({recipe.about}){where}"
