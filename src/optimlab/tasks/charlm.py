"""A tiny character-level transformer on the English text of Python's own documentation.

The text is `pydoc_data.topics` (~465 k characters, shipped with CPython): the topics in sorted order,
the last 10% held out. The model is the original post-LN transformer (LayerNorm after each residual
sum, Vaswani et al. 2017), the variant whose early training is known to need warmup (Xiong et al. 2020).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from . import Problem, Task, register

VALIDATION_FRACTION = 0.1
EVAL_WINDOWS = 64  # fixed windows per split for evaluate(): cheap, and the same for every optimizer


@functools.cache
def corpus() -> tuple[str, torch.Tensor]:
    """(vocabulary, the whole text as indices into it), built once per process."""
    from pydoc_data.topics import topics

    text = "".join(topics[k] for k in sorted(topics))
    vocab = "".join(sorted(set(text)))
    index = {c: i for i, c in enumerate(vocab)}
    return vocab, torch.tensor([index[c] for c in text], dtype=torch.long)


class CharTransformer(nn.Module):
    def __init__(self, vocab: int, context: int, width: int, depth: int, heads: int, norm_first: bool):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(context, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True,
                                           norm_first=norm_first)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(width) if norm_first else nn.Identity()  # pre-LN needs one at the end
        self.head = nn.Linear(width, vocab)
        mask = nn.Transformer.generate_square_subsequent_mask(context)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.embed(x) + self.position[:t]
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.final_norm(h))


def build(seed: int = 0, context: int = 32, width: int = 64, depth: int = 2, heads: int = 4,
          batch_size: int = 32, norm_first: bool = False) -> Problem:
    vocab, data = corpus()
    split = int(len(data) * (1 - VALIDATION_FRACTION))
    train, val = data[:split], data[split:]
    torch.manual_seed(seed)
    model = CharTransformer(len(vocab), context, width, depth, heads, norm_first)
    offsets = torch.arange(context + 1)
    criterion = nn.CrossEntropyLoss()

    def windows(text: torch.Tensor, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = text[starts[:, None] + offsets]  # (batch, context + 1): inputs and next characters
        return chunk[:, :-1], chunk[:, 1:]

    def draw(text: torch.Tensor, n: int, key: int) -> torch.Tensor:
        return torch.randint(0, len(text) - context - 1, (n,), generator=torch.Generator().manual_seed(key))

    def loss(step: int) -> torch.Tensor:
        # the batch depends only on (seed, step), so every optimizer sees the same text
        x, y = windows(train, draw(train, batch_size, seed * 1_000_003 + step))
        return criterion(model(x).flatten(0, 1), y.flatten())

    fixed = {name: windows(text, draw(text, EVAL_WINDOWS, 7_919 * seed + k))
             for k, (name, text) in enumerate([("train", train), ("val", val)])}

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        out = {}
        for name, (x, y) in fixed.items():
            logits = model(x).flatten(0, 1)
            out[f"{name}_loss"] = criterion(logits, y.flatten()).item()
            if name == "val":
                out["val_accuracy"] = (logits.argmax(1) == y.flatten()).float().mean().item()
        return out

    return Problem(model=model, loss=loss, evaluate=evaluate)


register(Task("charlm", "pydoc_data.topics text, next-character post-LN transformer (2 layers, width 64, "
              "context 32), cross-entropy, batch 32", build))
