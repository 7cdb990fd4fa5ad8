"""The memory planner: bytes of parameters, gradients, optimizer state, master weights and activations.

    from optimlab.memory import plan, Transformer
    plan(13e9, "adamw", "bf16-mixed").total_bytes                  # 208 GB
    plan(13e9, "adamw", "bf16-mixed", zero=2, ranks=8).total_bytes  # 48.75 GB on each rank
    plan(model, "adafactor", "fp32")                              # a torch module (meta device is fine)
    plan(Transformer(40, 5120, 32000, heads=40, ffn=13824, mlp="swiglu", bias=False, tied=False),
         "adamw", batch=1, seq=4096)                              # Llama-2-13B's shape, with activations
    print(plan(...).table())

Optimizer state is what each registered optimizer's rule declares for each parameter's shape, so a
factored rule (Adafactor) is counted exactly; `measured_state_bytes` runs one real step to check it.
"""

from .plan import COMPONENTS, SHARDED_FROM, Plan, measured_state_bytes, parameter_shapes, plan
from .precision import PRECISIONS, Precision, recipe
from .report import format_bytes
from .transformer import RECOMPUTE, Transformer

__all__ = ["plan", "Plan", "Transformer", "measured_state_bytes", "parameter_shapes", "PRECISIONS",
           "Precision", "recipe", "format_bytes", "COMPONENTS", "SHARDED_FROM", "RECOMPUTE"]
