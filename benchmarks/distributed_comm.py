"""Communication of one optimizer step under FSDP2, for every registered optimizer: collectives and bytes.

    PYTHONPATH=src python benchmarks/distributed_comm.py          # 2 gloo processes on the CPU
    PYTHONPATH=src python benchmarks/distributed_comm.py --matrix # the contract's results as a table

A dispatch mode counts the collectives (c10d ops) issued inside `optimizer.step()` on rank 0 and the
bytes rank 0 hands them, on an MLP whose layers shard unevenly (256 → 384 → 384 → 10: 252k parameters).
For scale, the forward and backward of the same step (FSDP2's own all-gathers and reduce-scatters) are
counted too. Prints a Markdown table (docs/distributed.md).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(256, 384), torch.nn.Tanh(), torch.nn.Linear(384, 384),
                               torch.nn.Tanh(), torch.nn.Linear(384, 10))


def rank_main(rank: int, port: str, out: str) -> None:
    import optimlab
    from distributed_harness import CountCollectives, names, shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    x = torch.randn(16, 256, generator=torch.Generator().manual_seed(1))[rank * 8:(rank + 1) * 8]
    rows = []
    for name in names():
        m = shard(model())
        opt = optimlab.create(name, m.parameters())
        for step in range(2):  # the second step: states exist, nothing is created
            opt.zero_grad()
            training = CountCollectives()
            with training:
                m(x).square().mean().backward()
            stepping = CountCollectives()
            with stepping:
                opt.step()
        rows.append((name, dict(stepping.calls), dict(stepping.bytes), sum(training.bytes.values()),
                     sum(training.calls.values())))
    if rank == 0:
        params = sum(p.numel() for p in model().parameters())
        lines = [f"| optimizer | collectives in `step()` | bytes sent by rank 0 | forward + backward "
                 f"({params:,} parameters) |", "|---|---|---:|---|"]
        for name, calls, sent, fb_bytes, fb_calls in rows:
            what = ", ".join(f"{n} × {k}" for k, n in sorted(calls.items())) or "none"
            lines.append(f"| {name} | {what} | {sum(sent.values()):,} | {fb_calls} calls, {fb_bytes:,} B |")
        Path(out).write_text("\n".join(lines) + "\n")
    dist.destroy_process_group()


def matrix() -> None:
    """The distributed contract (tests/distributed_harness.py, two ranks) as optimizer × setting: ✓ where
    the sharded run equals single-process training (≤ 1e-6 fp32, ≤ 1e-10 fp64), with the largest
    difference seen."""
    import json
    import subprocess

    from distributed_harness import names

    settings = {"DDP": ["ddp/fp32", "ddp/fp64"], "ZeRO-1": ["zero1/fp32"],
                "FSDP2": ["fsdp2/fp32", "fsdp2/fp64"], "DCP": ["dcp/fp32"]}
    tolerance = {"fp32": 1e-6, "fp64": 1e-10}
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
        port = str(29500 + os.getpid() % 400)
        script = str(ROOT / "tests" / "distributed_harness.py")
        procs = [subprocess.Popen([sys.executable, script, str(r), "2", port, folder], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for r in range(2)]
        for p in procs:
            p.wait(timeout=600)
        results = json.loads(Path(folder, "results.json").read_text())
    print("| optimizer | " + " | ".join(settings) + " | collectives in an FSDP2 step |")
    print("|---|" + "---|" * (len(settings) + 1))
    for name in names():
        cells = []
        for keys in settings.values():
            found = [results.get(f"{name}/{k}", {}) for k in keys]
            ok = all("error" in r and r["error"] <= tolerance[k[-4:]] for r, k in zip(found, keys))
            worst = max((r.get("error", float("inf")) for r in found), default=float("inf"))
            cells.append(f"✓ {worst:.0e}" if ok else "✗")
        calls = results.get(f"{name}/fsdp2/fp32", {}).get("collectives", {})
        what = ", ".join(f"{n} {k}" for k, n in sorted(calls.items())) or "none"
        print(f"| {name} | " + " | ".join(cells) + f" | {what} |")


def main() -> None:
    if "--matrix" in sys.argv:
        return matrix()
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "table.md")
        port = str(29500 + os.getpid() % 400)
        mp.spawn(rank_main, args=(port, out), nprocs=2, join=True)
        print(Path(out).read_text(), end="")


if __name__ == "__main__":
    main()
