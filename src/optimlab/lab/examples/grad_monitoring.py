"""The clipping-with-monitoring training step and the `GradientNormMonitor` class of the lesson on Adam, SGD
and RMSProp, against optimlab's `gradients.GradNormMonitor` (which records, clips and flags) on a real run,
and the two monitors' spike and vanishing flags on hand-made sequences of norms.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import optimlab
from optimlab.gradients import GradNormMonitor
from optimlab.tasks import digits

from . import lr_sensitivity
from .core import Check, Example, confirmed, fmt, refuted

MAX_NORM = 1.0
CLIP_STEPS = 200
SGD = dict(lr=0.1, momentum=0.9)
WINDOW, FACTOR = 100, 10.0  # the lesson's monitor: window_size 100, 'norms[-1] > 10 * recent_mean'


def norm_of(model: nn.Module) -> float:
    """The lesson's loop: per-parameter 2-norms via .item(), squared, summed, square-rooted."""
    total = 0.0
    for p in model.parameters():
        if p.grad is not None:
            total += p.grad.data.norm(2).item() ** 2
    return total ** 0.5


def train_step_with_clipping(model, batch_loss, optimizer, max_norm=MAX_NORM):
    """The lesson's step, re-typed: zero_grad, backward, norm before clipping, clip, step. Returns what the
    lesson returns, (loss, norm before clipping), plus clip_grad_norm_'s return and the norm after
    clipping."""
    optimizer.zero_grad()
    loss = batch_loss()
    loss.backward()
    before = norm_of(model)
    returned = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=max_norm).item()
    after = norm_of(model)
    optimizer.step()
    return (loss.item(), before), returned, after


class LessonMonitor:
    """The lesson's GradientNormMonitor, re-typed."""

    def __init__(self, window_size: int = WINDOW):
        self.norms: list[float] = []
        self.window_size = window_size

    def record(self, model: nn.Module) -> float:
        self.norms.append(norm_of(model))
        return self.norms[-1]

    @property
    def recent_mean(self) -> float:
        recent = self.norms[-self.window_size:]
        return sum(recent) / len(recent) if recent else 0.0

    @property
    def is_exploding(self) -> bool:
        return len(self.norms) > 0 and self.norms[-1] > FACTOR * self.recent_mean

    @property
    def is_vanishing(self) -> bool:
        return len(self.norms) > self.window_size and self.recent_mean < 1e-6


def both_monitors(norms: list[float]) -> dict[str, list[int]]:
    """Feed a sequence of gradient norms to both monitors (a one-weight model whose gradient is the norm);
    the records each flags as exploding / spike and as vanishing."""
    model = nn.Linear(1, 1, bias=False)
    lesson = LessonMonitor()
    ours = GradNormMonitor(model, window=WINDOW, spike_factor=FACTOR, vanish_below=1e-6, log_events=False)
    flags = {"lesson exploding": [], "lesson vanishing": []}
    for i, v in enumerate(norms):
        model.weight.grad = torch.tensor([[v]])
        lesson.record(model)
        ours.record()
        if lesson.is_exploding:
            flags["lesson exploding"].append(i)
        if lesson.is_vanishing:
            flags["lesson vanishing"].append(i)
    flags["optimlab spike"] = [e.step for e in ours.events if e.kind == "spike"]
    flags["optimlab vanishing"] = [e.step for e in ours.events if e.kind == "vanishing"]
    return flags


def clipping_runs(make=torch.optim.SGD) -> dict:
    """The lesson's step with torch's SGD, and `make`'s SGD with GradNormMonitor(max_norm=1) doing the same
    job inside step(), on the digits task (the same batches)."""
    problem = digits.build(seed=0)
    opt = torch.optim.SGD(problem.model.parameters(), **SGD)
    rows = [train_step_with_clipping(problem.model, lambda s=s: problem.loss(s), opt)
            for s in range(CLIP_STEPS)]
    theirs = [p.detach().clone() for p in problem.model.parameters()]
    problem = digits.build(seed=0)
    opt = make(problem.model.parameters(), **SGD)
    monitor = GradNormMonitor(problem.model, opt, max_norm=MAX_NORM, log_events=False)
    for s in range(CLIP_STEPS):
        opt.zero_grad()
        problem.loss(s).backward()
        opt.step()
    ours = [p.detach() for p in problem.model.parameters()]
    return {"returned": rows[0][0], "before": [r[0][1] for r in rows], "clip_return": [r[1] for r in rows],
            "after": [r[2] for r in rows], "monitor": monitor.norms, "clipped": len(monitor.clipped),
            "param_gap": max((a - b).abs().max().item() for a, b in zip(theirs, ours))}


def exploding_run() -> tuple[list[float], list[float]]:
    """The LR-sensitivity regression with SGD at lr 1.0 (its loss explodes): every norm, by both monitors."""
    x, y = lr_sensitivity.data()
    torch.manual_seed(lr_sensitivity.SEED)
    model = lr_sensitivity.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    lesson = LessonMonitor()
    ours = GradNormMonitor(model, window=WINDOW, spike_factor=FACTOR, log_events=False)
    for _ in range(lr_sensitivity.STEPS):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        lesson.record(model)
        ours.record()
        opt.step()
    return lesson.norms, ours.norms


def relative_gap(a: list[float], b: list[float]) -> float:
    return max(abs(u - v) / max(abs(v), 1e-30) for u, v in zip(a, b) if math.isfinite(u) and math.isfinite(v))


def run() -> tuple[str, list[Check], dict]:
    c = clipping_runs()  # the monitor with torch's SGD: the tools alone differ
    with_ours = clipping_runs(optimlab.SGD)
    first_steps = relative_gap(with_ours["before"][:10], with_ours["monitor"][:10])
    clipped = [i for i, b in enumerate(c["before"]) if b > MAX_NORM]
    return_vs_before = relative_gap(c["clip_return"], c["before"])
    return_vs_after = max((abs(c["clip_return"][i] - c["after"][i]) for i in clipped), default=0.0)
    loop_vs_monitor = relative_gap(c["before"], c["monitor"])
    lesson_norms, our_norms = exploding_run()
    explode_gap = relative_gap(lesson_norms, our_norms)
    real = both_monitors(lesson_norms)
    steady, spike = [1.0] * 50, 10.5
    seq_a = both_monitors(steady + [spike])
    seq_b = both_monitors(steady + [1000.0] + [1.0] * 9 + [50.0])
    seq_c = both_monitors([1e-9] * 150)
    finite = [v for v in lesson_norms if math.isfinite(v)]

    lines = [f"train_step_with_clipping on digits, torch SGD(lr 0.1, momentum 0.9), max_norm {MAX_NORM}, "
             f"{CLIP_STEPS} steps: clipped at {len(clipped)} steps",
             f"  it returns {type(c['returned']).__name__} (loss, norm before clipping); "
             f"clip_grad_norm_ returns the norm before clipping (to {fmt(return_vs_before)} relative), not "
             "the "
             f"norm after (off by up to {fmt(return_vs_after)})",
             "  the loop's norms against optimlab GradNormMonitor(max_norm=1) clipping inside torch SGD's "
             "step: "
             f"{fmt(loop_vs_monitor)} relative; parameters after {CLIP_STEPS} steps: {fmt(c['param_gap'])}",
             f"  with optimlab's SGD under the monitor: {fmt(first_steps)} relative over the first 10 steps, "
             f"{fmt(relative_gap(with_ours['before'], with_ours['monitor']))} after {CLIP_STEPS} (float32 "
             "round-off "
             "of a different order of operations, grown by training)",
             f"GradientNormMonitor against optimlab GradNormMonitor(window 100, spike_factor 10) on the sine "
             f"regression with SGD at lr 1.0: norms agree to {fmt(explode_gap)}; norms grow from "
             f"{finite[0]:.3g} to {max(finite):.3g}",
             "  flagged records: " + "; ".join(f"{k} {v[:6]}{'…' if len(v) > 6 else ''}"
                                               for k, v in real.items()),
             f"hand-made: 50 norms of 1.0, then {spike}: " + "; ".join(f"{k} {v}" for k, v in seq_a.items()),
             "hand-made: 50 × 1.0, 1000 (record 50), 9 × 1.0, 50 (record 60): " + "; ".join(
                 f"{k} {v}" for k, v in seq_b.items()),
             "hand-made: 150 norms of 1e-9: " + "; ".join(f"{k} from {v[0] if v else '-'}"
                                                          for k, v in seq_c.items()),
             "the lesson's test includes the newest norm in the mean it compares with: after k steady norms "
             "b a "
             "spike x is flagged only if x > 10·k·b/(k − 9), never within the first 10 records, 11× b at a "
             "full "
             "window; optimlab compares with the median of the earlier norms"]
    missed = [50 not in seq_a["lesson exploding"], 60 not in seq_b["lesson exploding"]]
    checks = [
        Check("'torch.nn.utils.clip_grad_norm_ … returns the total norm after clipping'",
              f"it returns the norm before clipping: equal to the loop's own pre-clip norm to "
              f"{fmt(return_vs_before)}, and up to {fmt(return_vs_after)} away from the norm after clipping "
              "at the "
              f"{len(clipped)} clipped steps",
              "confirmed if the return equals the norm after clipping (to 1e-5 relative), refuted if it "
              "equals the "
              "norm before",
              refuted() if return_vs_before <= 1e-5 and return_vs_after > 1e-5 else confirmed()),
        Check("'Compute and log the gradient norm before clipping' (the loop's own norm)",
              f"the loop's norms equal optimlab GradNormMonitor's recorded norms to {fmt(loop_vs_monitor)} "
              "relative, and clipping inside torch SGD's step() gives the same parameters to "
              f"{fmt(c['param_gap'])}",
              "confirmed if the norms agree to 1e-5 relative and the parameters to 1e-6, refuted otherwise",
              confirmed() if loop_vs_monitor <= 1e-5 and c["param_gap"] <= 1e-6 else refuted()),
        Check("train_step_with_clipping(...) -> float",
              f"it returns a {type(c['returned']).__name__}: (loss, norm before clipping)",
              "confirmed if it returns a float, refuted otherwise",
              confirmed() if isinstance(c["returned"], float) else refuted()),
        Check("is_exploding: 'norms[-1] > 10 * recent_mean' flags 'gradient explosion (norm suddenly spikes "
              "…)'",
              f"a {spike}× spike after 50 steady norms: lesson {seq_a['lesson exploding'] or 'not flagged'}, "
              f"optimlab {seq_a['optimlab spike']}; a 50× spike 10 records after a 1000× one: lesson "
              f"{[i for i in seq_b['lesson exploding'] if i == 60] or 'not flagged'}, optimlab "
              f"{[i for i in seq_b['optimlab spike'] if i == 60]}",
              "confirmed if it flags every norm above 10× the mean of the window before it in both hand-made "
              "sequences, refuted if it misses one",
              refuted() if any(missed) else confirmed()),
        Check("is_vanishing: 'Gradient vanishing (norm consistently near 0)'",
              "150 norms of 1e-9: the lesson's first flag at record "
              f"{seq_c['lesson vanishing'][:1] or 'none'} (it "
              f"needs more than window_size records), optimlab's at {seq_c['optimlab vanishing'][:1]}",
              "confirmed if it flags a constant 1e-9 by the record after its first full window (101), "
              "refuted "
              "otherwise", confirmed() if seq_c["lesson vanishing"] and seq_c["lesson vanishing"][0] <= WINDOW
              else refuted()),
        Check("GradientNormMonitor diagnoses 'Training instability (very high variance in norm over time)'",
              "it offers recent_mean, is_exploding and is_vanishing: nothing measures the norm's spread "
              "(optimlab's summary() gives median, min and max, its plot the whole history)",
              "confirmed if the class exposes a measure of the norms' variance or spread, refuted otherwise",
              confirmed() if any(k for k in dir(LessonMonitor) if "var" in k or "std" in k) else refuted()),
    ]
    numbers = {"clipped_steps": len(clipped), "return_vs_before": return_vs_before,
               "return_vs_after": return_vs_after, "loop_vs_monitor": loop_vs_monitor,
               "param_gap": c["param_gap"],
               "explode_norm_gap": explode_gap, "real_flags": real, "spike_after_steady": seq_a,
               "second_spike": seq_b, "vanishing": {k: v[:1] for k, v in seq_c.items()}}
    return "\n".join(lines), checks, numbers


EXAMPLE = Example(
    id="grad-monitoring", lesson="adam-vs-sgd",
    title="train_step_with_clipping and GradientNormMonitor",
    setup=f"the step as printed (norm by per-parameter .item(), clip_grad_norm_(max_norm={MAX_NORM}), step) "
          "on "
    f"optimlab's digits task with torch's SGD (lr 0.1, momentum 0.9) for {CLIP_STEPS} steps, against "
    "optimlab's "
    "SGD with GradNormMonitor(max_norm=1.0); the monitor class (window 100, 10× the recent mean, 1e-6) "
    "against "
    "GradNormMonitor(window=100, spike_factor=10) on the LR-sensitivity regression at SGD lr 1.0 and on "
    "hand-made sequences of norms",
    run=run)
