"""optimlab list: the registered optimizers, their idea, state size and reference."""

from __future__ import annotations

import json

import torch

MATRIX = (4096, 4096)  # state bytes per parameter are quoted for a large fp32 weight matrix


def register(verbs) -> None:
    p = verbs.add_parser("list", help="the optimizers: idea, state bytes per parameter, reference",
                         description="List every registered optimizer and preset with its one-line idea, "
                         "the bytes of optimizer state it keeps per parameter (for a 4096×4096 fp32 weight, "
                         "default hyperparameters) and what its tests compare it against.")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(run=run)


def rows() -> list[dict]:
    import optimlab

    out = []
    for spec in [*map(optimlab.spec, optimlab.available()), *optimlab.presets.values()]:
        per_param = spec.state_bytes(MATRIX) / (MATRIX[0] * MATRIX[1])
        bf16 = spec.state_bytes(MATRIX, torch.bfloat16, kahan_summation=True) / (MATRIX[0] * MATRIX[1])
        out.append({"name": spec.name, "idea": spec.idea, "state_bytes_per_param": round(per_param, 3),
                    "bf16_kahan_state_bytes_per_param": round(bf16, 3),
                    "capabilities": sorted(spec.capabilities), "reference": spec.reference,
                    "preset_of": spec.base or None, "preset": dict(spec.preset)})
    return out


def run(args) -> int:
    table = rows()
    if args.json:
        print(json.dumps(table, indent=2, default=str))
        return 0
    width = max(len(r["name"]) for r in table)
    print(f"{'name':<{width}}  {'state B/param':>13}  idea  [reference]")
    for r in table:
        b = r["state_bytes_per_param"]
        size = f"{b:g}" if b >= 0.01 or b == 0 else f"{b:.4f}"
        settings = ",".join(f"{k}={v}" for k, v in r["preset"].items())
        kind = f"preset: {r['preset_of']}:{settings}" if r["preset_of"] else r["reference"]
        print(f"{r['name']:<{width}}  {size:>13}  {r['idea']}  [{kind}]")
    print("bf16 weights keep state in their dtype (about half these bytes); stochastic_rounding=True adds "
          "0 B/param, kahan_summation=True 2 (docs/lowprecision.md)")
    return 0
