"""Claims about optimizer state and training memory, checked with the rules' own state declarations,
a real step's allocation, and the memory planner."""

from __future__ import annotations

import torch

import optimlab
from optimlab.memory import Transformer, plan

from .core import Claim, confirmed, depends, fmt, gb, refuted, shared

SHAPES = [(4096, 4096), (768, 3072), (4096,)]  # a large matrix, a GPT-2 MLP matrix, a vector
GPT2_SMALL = Transformer(12, 768, 50257, heads=12, positions=1024)


def allocated_state_bytes(name: str) -> int:
    """Bytes of the tensors in optimizer.state after one real step on a small MLP, step counters aside."""
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-3)
    opt = optimlab.create(name, model.parameters())
    opt.step()
    return sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items()
               if torch.is_tensor(t) and k != "step")


def lion_vs_adam(ctx) -> dict:
    declared = [optimlab.spec("lion").state_bytes(s) / optimlab.spec("adam").state_bytes(s) for s in SHAPES]
    n = 4096 * 4096
    return {"lion_bytes_per_param": optimlab.spec("lion").state_bytes((4096, 4096)) / n,
            "adam_bytes_per_param": optimlab.spec("adam").state_bytes((4096, 4096)) / n,
            "ratio_by_shape": declared, "shapes": [list(s) for s in SHAPES],
            "ratio_allocated": allocated_state_bytes("lion") / allocated_state_bytes("adam"),
            # the curvature-bets lesson's table counts bf16-mixed: state with the fp32 master copy, and the
            # whole footprint
            "adam_over_lion_with_master": _with_master("adam") / _with_master("lion"),
            "adam_over_lion_total": plan(1e9, "adam").whole_bytes / plan(1e9, "lion").whole_bytes}


def _with_master(name: str) -> int:
    p = plan(1e9, name, "bf16-mixed")
    return p.whole["optimizer_state"] + p.whole["master_weights"]


def adafactor_factored(ctx) -> dict:
    shapes = [(1024, 1024), (4096, 4096), (4096, 16384), (50257, 768)]
    spec = optimlab.spec("adafactor")
    model = torch.nn.Linear(2048, 512, bias=False)  # one real (512, 2048) matrix
    for p in model.parameters():
        p.grad = torch.full_like(p, 1e-3)
    opt = optimlab.create("adafactor", model.parameters())
    opt.step()
    allocated = sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items()
                    if torch.is_tensor(t) and k != "step")
    return {"shapes": [list(s) for s in shapes], "bytes": [spec.state_bytes(s) for s in shapes],
            "four_times_d_plus_m": [4 * (d + m) for d, m in shapes],
            "adam_bytes": [optimlab.spec("adam").state_bytes(s) for s in shapes],
            "allocated_512x2048": allocated, "four_times_d_plus_m_512x2048": 4 * (512 + 2048)}


def adafactor_share(ctx) -> dict:
    a, w = plan(GPT2_SMALL, "adafactor", "bf16-mixed"), plan(GPT2_SMALL, "adamw", "bf16-mixed")
    per = a.parameter_count
    return {"model": "GPT-2 small shape (124 M parameters)", "parameters": per,
            "state_ratio": a.whole["optimizer_state"] / w.whole["optimizer_state"],
            "state_and_master_ratio": (a.whole["optimizer_state"] + a.whole["master_weights"])
            / (w.whole["optimizer_state"] + w.whole["master_weights"]),
            "total_ratio": a.whole_bytes / w.whole_bytes,
            "adafactor_state_bytes_per_param": a.whole["optimizer_state"] / per,
            "adafactor_total_bytes_per_param": a.whole_bytes / per,
            "adamw_total_bytes_per_param": w.whole_bytes / per}


def planned(count: float, optimizer: str, precision: str, **sharding) -> dict:
    p = plan(count, optimizer, precision, **sharding)
    out = {f"{c}_bytes": b for c, b in p.whole.items() if c != "activations"}
    out.update(total_bytes=p.whole_bytes, per_rank_total_bytes=p.total_bytes)
    return out


def model_70b(ctx) -> dict:
    return planned(70e9, "adamw", "bf16-mixed")


def model_7b(ctx) -> dict:
    return planned(7e9, "adam", "fp32")


def model_13b(ctx) -> dict:
    whole = planned(13e9, "adamw", "bf16-mixed")
    sharded = planned(13e9, "adamw", "bf16-mixed", zero=2, ranks=8)
    whole["zero2_8_ranks_per_rank_bytes"] = sharded["per_rank_total_bytes"]
    return whole


def near(value: float, target: float, tolerance: float = 0.05) -> bool:
    return abs(value / target - 1) <= tolerance


CLAIMS = [
    Claim(
        id="lion-half-state", seed="curvature-bets",
        claim="Lion 'drops the second moment entirely … Halves optimizer memory vs Adam.'",
        experiment="state bytes each rule declares (spec.state_bytes) for a 4096², a 768×3072 and a 4096 "
        "fp32 parameter, and the state one real step allocates on a 256→512→10 MLP",
        rule="confirmed if Lion ÷ Adam is exactly 0.5 for every shape and in the real allocation, refuted "
        "otherwise",
        measure=shared("lion-vs-adam", lion_vs_adam),
        judge=lambda n: confirmed() if all(r == 0.5 for r in [*n["ratio_by_shape"], n["ratio_allocated"]])
        else refuted(),
        describe=lambda n: f"Lion {fmt(n['lion_bytes_per_param'])} B/param vs Adam "
        f"{fmt(n['adam_bytes_per_param'])}: ratio {', '.join(fmt(r) for r in n['ratio_by_shape'])} (by "
        f"shape), {fmt(n['ratio_allocated'])} allocated",
        reference="Chen et al. 2023: Lion keeps only the momentum"),
    Claim(
        id="lion-3x-memory", seed="adam-vs-sgd",
        claim="Lion: 'approximately 3x memory savings over Adam (one buffer vs two)'",
        experiment="the same declared and allocated state as lion-half-state; also the curvature-bets "
        "lesson's bf16-mixed accounting (state + fp32 master) and the whole footprint from the memory "
        "planner",
        rule="confirmed if Adam ÷ Lion state is 2.5–3.5, refuted otherwise",
        measure=shared("lion-vs-adam", lion_vs_adam),
        judge=lambda n: confirmed() if 2.5 <= 1 / n["ratio_by_shape"][0] <= 3.5 else refuted(),
        describe=lambda n: f"Adam ÷ Lion = {fmt(1 / n['ratio_by_shape'][0])}× on optimizer state (one buffer "
        f"against two); {fmt(n['adam_over_lion_with_master'])}× counting the fp32 master copy, "
        f"{fmt(n['adam_over_lion_total'])}× on the whole bf16-mixed footprint",
        reference="one buffer against two is 2× by arithmetic; the curvature-bets lesson says 'halves'"),
    Claim(
        id="adafactor-o-d-plus-m", seed="curvature-bets",
        claim="'Adam's v for a (d × m) weight matrix is O(d·m); Adafactor stores O(d + m)'",
        experiment="Adafactor's declared state for 1024², 4096², 4096×16384 and 50257×768 matrices, and the "
        "state a real step allocates for a 512×2048 matrix",
        rule="confirmed if every size is exactly 4(d + m) bytes (one fp32 row and one column statistic), "
        "refuted otherwise",
        measure=adafactor_factored,
        judge=lambda n: confirmed() if n["bytes"] == n["four_times_d_plus_m"]
        and n["allocated_512x2048"] == n["four_times_d_plus_m_512x2048"] else refuted(),
        describe=lambda n: "; ".join(f"{d}×{m}: {b:,} B (Adam {a / 2**20:,.0f} MiB)"
                                     for (d, m), b, a in zip(n["shapes"], n["bytes"], n["adam_bytes"]))
        + f"; allocated for 512×2048: {n['allocated_512x2048']:,} B = 4(d + m)",
        reference="Shazeer & Stern 2018 §3"),
    Claim(
        id="adafactor-half-memory", seed="curvature-bets",
        claim="Adafactor: '~50% optimizer memory' (table: '~4 (per-row + per-column factored)' B/param of "
        "state)",
        experiment="memory planner on a GPT-2-small shape in bf16-mixed: Adafactor ÷ AdamW for the optimizer "
        "state, state + fp32 master, and the whole footprint",
        rule="confirmed if the optimizer state is 40–60% of AdamW's; depends if only the whole footprint is; "
        "refuted otherwise",
        measure=adafactor_share,
        judge=lambda n: confirmed() if 0.4 <= n["state_ratio"] <= 0.6 else depends(
            f"true of the whole bf16-mixed footprint ({fmt(n['adafactor_total_bytes_per_param'])} vs "
            f"{fmt(n['adamw_total_bytes_per_param'])} B/param, {n['total_ratio']:.0%}), not of the optimizer "
            f"state ({n['state_ratio']:.2%} of AdamW's)")
        if 0.4 <= n["total_ratio"] <= 0.6 else refuted(),
        describe=lambda n: f"Adafactor ÷ AdamW: state {n['state_ratio']:.2%} "
        f"({n['adafactor_state_bytes_per_param']:.3f} B/param), state + master "
        f"{n['state_and_master_ratio']:.0%}, whole footprint {n['total_ratio']:.0%}",
        reference="Shazeer & Stern 2018: factored second moment, no first moment by default; the lesson's "
        "table puts AdamW's fp32 master copy in its state column, so its ~4 B/param for Adafactor is that "
        "copy"),
    Claim(
        id="memory-70b-state", seed="curvature-bets",
        claim="'A 70B model in AdamW needs 70e9 × 16 = 1.12 TB of optimizer state'",
        experiment="memory planner: 70e9 parameters, AdamW, bf16-mixed",
        rule="confirmed if the optimizer state, even counted with the fp32 master copy, is within 5% of 1.12 "
        "TB; refuted otherwise",
        measure=model_70b,
        judge=lambda n: confirmed() if near(n["optimizer_state_bytes"] + n["master_weights_bytes"], 1.12e12)
        else refuted(),
        describe=lambda n: f"optimizer state (m, v) {gb(n['optimizer_state_bytes'])}, "
        f"{gb(n['optimizer_state_bytes'] + n['master_weights_bytes'])} with the fp32 master copy; 1.12 TB "
        f"({gb(n['total_bytes'])}) is the total with {gb(n['parameters_bytes'])} of weights and "
        f"{gb(n['gradients_bytes'])} of gradients",
        reference="Rajbhandari et al. 2020 (ZeRO) §3.1: 16Ψ bytes of model states, of which 12Ψ optimizer "
        "states"),
    Claim(
        id="memory-7b-total", seed="adam-vs-sgd",
        claim="7B model, fp32 Adam: weights 28 GB + Adam states 56 GB, 'Total for training: 84 GB minimum'",
        experiment="memory planner: 7e9 parameters, Adam, fp32",
        rule="confirmed if the planned total is within 5% of 84 GB, refuted otherwise",
        measure=shared("7b", model_7b),
        judge=lambda n: confirmed() if near(n["total_bytes"], 84e9) else refuted(),
        describe=lambda n: f"total {gb(n['total_bytes'])}: weights {gb(n['parameters_bytes'])} + gradients "
        f"{gb(n['gradients_bytes'])} + m, v {gb(n['optimizer_state_bytes'])}"
        + ("; 84 GB is this without the gradients"
           if near(n["total_bytes"] - n["gradients_bytes"], 84e9) else "")),
    Claim(
        id="memory-7b-state", seed="canyon",
        claim="Adam 'stores two extra tensors (m and v) per parameter … For a 7B-parameter model in fp32, "
        "that is 56 GB of optimizer state alone'",
        experiment="memory planner: 7e9 parameters, Adam, fp32",
        rule="confirmed if the planned optimizer state is within 5% of 56 GB, refuted otherwise",
        measure=shared("7b", model_7b),
        judge=lambda n: confirmed() if near(n["optimizer_state_bytes"], 56e9) else refuted(),
        describe=lambda n: f"optimizer state {gb(n['optimizer_state_bytes'])} (8 B/param)"),
    Claim(
        id="memory-13b-zero2", seed="curvature-bets",
        claim="13B in bf16 + AdamW: 'Total: ~208 GB just for state … With ZeRO-2 across 8 ranks … per-rank ≈ "
        "49 GB → fits'",
        experiment="memory planner: 13e9 parameters, AdamW, bf16-mixed, one rank and ZeRO-2 on 8 ranks",
        rule="confirmed if both the total and the per-rank figure are within 5% of the lesson's, refuted "
        "otherwise",
        measure=model_13b,
        judge=lambda n: confirmed()
        if near(n["total_bytes"], 208e9) and near(n["zero2_8_ranks_per_rank_bytes"], 49e9)
        else refuted(),
        describe=lambda n: f"total {gb(n['total_bytes'])}; ZeRO-2 on 8 ranks "
        f"{gb(n['zero2_8_ranks_per_rank_bytes'])} per rank (before activations)"),
]
