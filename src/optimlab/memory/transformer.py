"""A decoder-only transformer described by its shape: its parameter tensors and its activation memory."""

from __future__ import annotations

import dataclasses

RECOMPUTE = ("none", "selective", "full")


@dataclasses.dataclass(frozen=True)
class Transformer:
    """GPT-style by default (LayerNorm and linear biases, a 4h GELU MLP, tied embeddings);
    `mlp="swiglu", bias=False, tied=False` gives Llama's layout (RMSNorm, three MLP matrices).

    Attention is one fused (3h, h) QKV matrix, as torch.nn.MultiheadAttention keeps it.
    """

    layers: int
    hidden: int
    vocab: int
    heads: int | None = None  # needed only for activations without recomputation
    ffn: int | None = None  # MLP width; default 4 × hidden
    mlp: str = "gelu"  # "gelu": two matrices; "swiglu": gate, up and down
    bias: bool = True  # biases in linear layers and norms (LayerNorm); False: none (RMSNorm)
    tied: bool = True  # the output projection is the embedding matrix
    positions: int = 0  # rows of learned position embeddings (GPT-2: 1024); 0 for rotary

    def __post_init__(self):
        for name in ("layers", "hidden", "vocab"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"transformer {name} must be a positive integer, got {value!r}")
        if self.heads is not None and (self.heads < 1 or self.hidden % self.heads):
            raise ValueError(f"heads must divide hidden ({self.hidden}), got {self.heads}")
        if self.ffn is not None and self.ffn < 1:
            raise ValueError(f"ffn must be positive, got {self.ffn}")
        if self.mlp not in ("gelu", "swiglu"):
            raise ValueError(f"mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")
        if self.positions < 0:
            raise ValueError(f"positions must be ≥ 0, got {self.positions}")

    @property
    def width(self) -> int:
        return self.ffn or 4 * self.hidden

    def shapes(self) -> list[tuple[int, ...]]:
        """Every parameter tensor's shape."""
        h, f = self.hidden, self.width
        norm = [(h,), (h,)] if self.bias else [(h,)]

        def linear(out_features, in_features):
            return [(out_features, in_features)] + ([(out_features,)] if self.bias else [])

        up = linear(f, h) if self.mlp == "gelu" else linear(f, h) + linear(f, h)  # SwiGLU: gate and up
        mlp = up + linear(h, f)
        layer = norm + linear(3 * h, h) + linear(h, h) + norm + mlp
        embeddings = [(self.vocab, h)] + ([(self.positions, h)] if self.positions else [])
        head = [] if self.tied else [(self.vocab, h)]
        return embeddings + layer * self.layers + norm + head

    def kinds(self) -> list[str]:
        """Per tensor of `shapes()`, in that order: "embedding", "head" or "block" (a transformer block's or
        the final norm's): what the parameter-group policy tells apart for Muon."""
        embeddings = 1 + bool(self.positions)
        rest = len(self.shapes()) - embeddings - (not self.tied)
        return ["embedding"] * embeddings + ["block"] * rest + ([] if self.tied else ["head"])

    def activation_bytes(self, batch: int, seq: int, recompute: str = "none", element: int = 2) -> int:
        """Activations the backward pass keeps, all layers, one micro-batch of `batch` × `seq` tokens.

        Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models"
        (arXiv:2205.05198) §4.1: per layer sbh(34 + 5as/h) bytes with 16-bit activations and 1-byte
        dropout masks, no tensor or sequence parallelism. Their itemised count, with e bytes per element
        and MLP width f, gives (5e + 1)sbh + (2e + 1)as²b for attention, 2e·sbh for the two norms and
        (e + 1)sbh + 2e·sbf for a GELU MLP (4e·sbf with SwiGLU's gate, up, product and SiLU output);
        e = 2, f = 4h is their 34sbh + 5as²b. Selective recomputation drops the as²b terms (so does
        FlashAttention); full recomputation keeps only each layer's input, e·sbh (their 2sbh).
        Embedding and logit activations are not counted.
        """
        if recompute not in RECOMPUTE:
            raise ValueError(f"recompute must be one of {', '.join(RECOMPUTE)}, got {recompute!r}")
        for name, value in (("batch", batch), ("seq", seq)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        s, b, h, f, e = seq, batch, self.hidden, self.width, element
        if recompute == "full":
            return self.layers * e * s * b * h
        mlp = (e + 1) * s * b * h + (2 if self.mlp == "gelu" else 4) * e * s * b * f
        per_layer = (5 * e + 1) * s * b * h + 2 * e * s * b * h + mlp
        if recompute == "none":
            if self.heads is None:
                raise ValueError("activations without recomputation need the number of attention heads "
                                 "(heads=…, --heads): the attention scores take a·s² per sequence")
            per_layer += (2 * e + 1) * self.heads * s * s * b
        return self.layers * per_layer
