"""optimlab memory: bytes of parameters, gradients, optimizer state, master weights and activations."""

from __future__ import annotations

import importlib
import json

SUFFIXES = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
MAX_PARAMS = "1e15"  # a thousand times the largest models trained: beyond this a count is a typo

DESCRIPTION = """\
Plan the memory of training: parameters, gradients, optimizer state and master weights (and
activations, for a transformer shape), for the whole model and, with ZeRO, on each rank.

The model is one of: --params N (a bare count: 13e9, 13B, 125M), --task NAME (an optimlab.tasks
model), --model MODULE:FACTORY (called with no arguments on the meta device: nothing is allocated),
or a transformer shape --layers L --hidden H --vocab V [--heads A --ffn F --mlp swiglu --no-bias
--untied --positions P].

Units: every figure is in bytes. The table shows decimal units (GB = 10^9 bytes, as the lessons and
vendors' spec sheets count) next to binary ones (GiB = 2^30 bytes, as nvidia-smi and torch.cuda
report); --json prints plain byte counts.

Precision recipes: fp32 (4-byte everything); bf16-mixed and fp16-mixed (2-byte weights and gradients,
fp32 optimizer state and an fp32 master copy of the weights); bf16 (everything 2-byte, no master).

Optimizer state is what the optimizer's rule declares for each parameter's shape (Adafactor's
row and column statistics for matrices, exactly); the step counter is a Python float in
optimizer.state[p]["step"], not a tensor, and costs no tensor memory. --check runs one real step on
the model and compares.

ZeRO (Rajbhandari et al. 2020) on --ranks N data-parallel ranks: stage 1 shards the optimizer state
and master weights, stage 2 also the gradients, stage 3 also the parameters. Per-rank figures divide
the sharded parts by N (rounded up). Activations (--batch is the micro-batch per rank) are never
sharded; they follow Korthikanti et al. 2022 (arXiv:2205.05198), sbh(34 + 5as/h) bytes per layer
in 16-bit, less with --recompute selective or full.
"""


def register(verbs) -> None:
    p = verbs.add_parser("memory", help="bytes of params, grads, optimizer state, master weights; per rank",
                         description=DESCRIPTION)
    source = p.add_argument_group("the model (one of)")
    source.add_argument("--params", metavar="N", help="a parameter count: 13e9, 13B, 125M, 7_000_000_000")
    source.add_argument("--task", help="a model from optimlab.tasks (e.g. digits)")
    source.add_argument("--model", metavar="MODULE:FACTORY",
                        help="a torch module built by a no-argument callable, "
                        "e.g. torchvision.models:resnet50")
    source.add_argument("--layers", type=int, help="transformer layers")
    source.add_argument("--hidden", type=int, help="transformer hidden size h")
    source.add_argument("--vocab", type=int, help="vocabulary size")
    shape = p.add_argument_group("transformer options")
    shape.add_argument("--heads", type=int,
                       help="attention heads (needed for activations with --recompute none)")
    shape.add_argument("--ffn", type=int, help="MLP width (default 4 × hidden)")
    shape.add_argument("--mlp", choices=("gelu", "swiglu"), default="gelu", help="MLP kind (default gelu)")
    shape.add_argument("--no-bias", action="store_true",
                       help="no biases, RMSNorm (Llama); default: GPT's biases")
    shape.add_argument("--untied", action="store_true", help="a separate output projection (default: tied)")
    shape.add_argument("--positions", type=int, default=0, help="learned position embeddings (GPT-2: 1024)")
    p.add_argument("--optimizer", default="adamw",
                   help="registry name, preset or name:key=value,… (default adamw)")
    p.add_argument("--precision", default="bf16-mixed",
                   help="fp32, bf16-mixed, fp16-mixed or bf16 (default bf16-mixed)")
    p.add_argument("--zero", type=int, default=0, help="ZeRO stage 0–3 (default 0: nothing sharded)")
    p.add_argument("--ranks", type=int, default=1,
                   help="data-parallel ranks the ZeRO stage shards over (default 1)")
    p.add_argument("--fsdp2", action="store_true",
                   help="shard as torch's fully_shard: every tensor split on dim 0 over --ranks (ZeRO-3)")
    p.add_argument("--offload", action="store_true",
                   help="optimizer state and master weights in host memory (off the device)")
    p.add_argument("--batch", type=int, help="micro-batch per rank, for activations (with --seq)")
    p.add_argument("--seq", type=int, help="sequence length, for activations (with --batch)")
    p.add_argument("--recompute", default="none", choices=("none", "selective", "full"),
                   help="activation recomputation (default none)")
    p.add_argument("--check", action="store_true",
                   help="with --task or --model: run one real step and compare the state it allocates "
                   "(small models)")
    p.add_argument("--json", action="store_true", help="print a JSON object (total_bytes is per rank)")
    p.set_defaults(run=run)


def run(args) -> int:
    from optimlab.memory import plan

    model, build = _model(args)
    result = plan(model, args.optimizer, args.precision, zero=args.zero, ranks=args.ranks, batch=args.batch,
                  seq=args.seq, recompute=args.recompute, fsdp2=args.fsdp2, offload=args.offload)
    check = _check(build(), args, result) if args.check else None
    if args.json:
        print(json.dumps({**result.as_dict(), **({"check": check} if check else {})}, indent=2))
    else:
        print(result.table())
        if check:
            verdict = "matches the plan" if check["matches"] else "DIFFERS from the plan"
            print(f"check: one real {args.optimizer} step allocated {check['measured_bytes']:,} bytes of "
                  f"optimizer state (plan: {check['planned_bytes']:,}): {verdict}")
    return 0 if check is None or check["matches"] else 1


def parse_count(text: str) -> int:
    """'13e9', '13B', '1.5T', '125M', '7_000_000_000' -> an exact positive count."""
    clean = text.strip().replace("_", "").replace(",", "")
    scale = SUFFIXES.get(clean[-1:].upper(), 1) if clean[-1:].isalpha() else 1
    number = clean[:-1] if scale != 1 else clean
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"--params: expected a count such as 13e9, 13B or 125M, got {text!r}") from None
    if not 1 <= value <= float(MAX_PARAMS) or value != int(value):
        raise ValueError(f"--params must be a whole number of parameters from 1 to {MAX_PARAMS}, "
                         f"got {text!r}")
    return int(value)


def _model(args):
    """The planner's input, and a function that builds a real module for --check (or None)."""
    from optimlab.memory import Transformer

    shape = [args.layers, args.hidden, args.vocab]
    sources = (("--params", args.params), ("--task", args.task), ("--model", args.model),
               ("a transformer shape", any(v is not None for v in shape)))
    given = [name for name, value in sources if value]
    if len(given) != 1:
        got = f" (got {' and '.join(given)})" if given else ""
        raise ValueError("give exactly one model: --params N, --task NAME, --model MODULE:FACTORY, or "
                         f"--layers, --hidden and --vocab{got}")
    if args.check and (args.params is not None or args.layers or args.hidden or args.vocab):
        raise ValueError("--check needs a real model (--task or --model), not a count or a shape")
    if args.params is not None:
        return parse_count(args.params), lambda: None
    if args.task is not None:
        import optimlab.tasks

        task = optimlab.tasks.get(args.task)
        return task.build(seed=0).model, lambda: task.build(seed=0).model
    if args.model is not None:
        factory = _factory(args.model)
        import torch

        try:
            with torch.device("meta"):  # shapes only: a 70B model costs nothing to plan
                model = factory()
        except TypeError as err:
            raise ValueError(f"--model {args.model}: {err} (the factory is called with no arguments)") \
                from None
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"--model {args.model} built a {type(model).__name__}, not a torch.nn.Module")
        return model, factory
    if None in shape:
        raise ValueError("a transformer shape needs --layers, --hidden and --vocab")
    return Transformer(args.layers, args.hidden, args.vocab, heads=args.heads, ffn=args.ffn, mlp=args.mlp,
                       bias=not args.no_bias, tied=not args.untied, positions=args.positions), lambda: None


def _factory(text: str):
    module, _, name = text.partition(":")
    if not module or not name:
        raise ValueError(f"--model: expected MODULE:FACTORY such as torchvision.models:resnet50, "
                         f"got {text!r}")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--model {text}: {err}") from None
    return factory


def _check(model, args, result) -> dict:
    from optimlab.memory import measured_state_bytes

    measured = measured_state_bytes(model, args.optimizer, args.precision)
    planned = result.whole["optimizer_state"]
    return {"measured_bytes": measured, "planned_bytes": planned, "matches": measured == planned}
