"""The catalogue: every optimizer optimlab ships, registered once with what its tests rely on."""

from ..registry import Spec, preset, register
from .adafactor import Adafactor
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adam8bit import AdamW8bit
from .adopt import ADOPT
from .lamb import LAMB
from .lars import LARS
from .lion import Lion
from .muon import Muon
from .nadam import NAdam
from .radam import RAdam
from .rmsprop import RMSprop
from .schedulefree import ScheduleFreeAdamW, ScheduleFreeSGD
from .sgd import SGD
from .sophia import Sophia
from .shampoo import Shampoo
from .soap import SOAP

E, NORM, FACTORED = frozenset({"elementwise"}), frozenset({"per-tensor-norm"}), frozenset({"factored"})
MATRIX = frozenset({"matrix"})
PAPER = "float64 transcription of the paper in tests/references.py"
FRONTIER = "float64 transcription of the paper in tests/frontier_references.py"

register(Spec("sgd", SGD, "step against the gradient; momentum averages it", "torch.optim.SGD", E))
register(Spec("adagrad", Adagrad, "divide by the root of the sum of all squared gradients",
              "torch.optim.Adagrad", E))
register(Spec("rmsprop", RMSprop, "divide by the root of an EMA of squared gradients",
              "torch.optim.RMSprop", E))
register(Spec("adam", Adam, "momentum over the root of an EMA of g² (L2 decay inside it)",
              "torch.optim.Adam", E))
register(Spec("adamw", AdamW, "Adam with weight decay applied to θ directly", "torch.optim.AdamW", E))
register(Spec("nadam", NAdam, "Adam with Nesterov's look-ahead on the first moment", "torch.optim.NAdam", E))
register(Spec("radam", RAdam, "Adam that waits until its adaptive lr has tractable variance",
              "torch.optim.RAdam", E))
register(Spec("lion", Lion, "step by the sign of an interpolation of momentum and gradient", PAPER, E))
register(Spec("lamb", LAMB, "AdamW's direction, scaled per tensor by ‖θ‖/‖update‖", PAPER, NORM))
register(Spec("adafactor", Adafactor, "row and column means of g² instead of all of it; relative steps",
              "torch.optim.Adafactor", FACTORED))
register(Spec("muon", Muon, "orthogonalise the momentum of each matrix (Newton–Schulz); AdamW for the rest",
              "matrices: torch.optim.Muon; the rest: optimlab's AdamW (tests/test_matrix.py)", MATRIX))
register(Spec("shampoo", Shampoo, "precondition each matrix by L^-1/4 G R^-1/4, from Kronecker factors",
              "float64 transcription of the papers in tests/matrix_references.py", MATRIX))
register(Spec("soap", SOAP, "Adam in the eigenbasis of Shampoo's factors, refreshed every k steps by QR",
              "float64 transcription of the reference algorithm in tests/matrix_references.py", MATRIX))

register(Spec("adamw8bit", AdamW8bit, "AdamW with m and v stored as 8-bit codes, one scale per 256 "
              "elements", "bitsandbytes' AdamW8bit (test-only) and tests/eightbit_references.py", E))
register(Spec("adopt", ADOPT, "Adam normalising g by the previous v, before g enters it",
              f"the authors' torch-adopt package (test-only) and the {FRONTIER}", E))
register(Spec("lars", LARS, "momentum SGD, lr scaled per tensor by η‖w‖/(‖g‖ + β‖w‖)", FRONTIER, NORM))
register(Spec("sophia", Sophia, "momentum over a diagonal Hessian estimate, clipped", FRONTIER, E))
register(Spec("schedulefree_adamw", ScheduleFreeAdamW, "AdamW without a schedule: step at y, evaluate the "
              "average x", "the official schedulefree package (AdamWScheduleFree)", E))
register(Spec("schedulefree_sgd", ScheduleFreeSGD, "SGD without a schedule: step at y, evaluate average x",
              "the official schedulefree package (SGDScheduleFree)", E))

preset("momentum", "sgd", "SGD with heavy-ball momentum 0.9", momentum=0.9)
preset("nesterov", "sgd", "SGD with Nesterov momentum 0.9", momentum=0.9, nesterov=True)
preset("amsgrad", "adam", "Adam whose denominator never shrinks", amsgrad=True)
preset("adam_no_bias_correction", "adam", "Adam without the 1 − βᵗ corrections", bias_correction=False)

__all__ = ["SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "NAdam", "RAdam", "Lion", "LAMB", "Adafactor"]
__all__ += ["AdamW8bit", "ADOPT", "LARS", "Sophia", "ScheduleFreeAdamW", "ScheduleFreeSGD"]
__all__ += ["Muon", "Shampoo", "SOAP"]
