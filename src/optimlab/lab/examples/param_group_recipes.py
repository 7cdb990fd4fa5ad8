"""The parameter-group recipes of the lesson on Adam, SGD and RMSProp: layer-wise lr decay
(`configure_layerwise_lr_decay`), the fine-tuning groups (`finetune_optimizer`) and the decay / no-decay split
(`configure_adamw`), built on a 12-block encoder with BERT-like names, trained for a few steps with torch's
AdamW and optimlab's, and compared with `optimlab.param_groups.build` for the same jobs.
"""

from __future__ import annotations

import torch
from torch import nn

import optimlab
from optimlab import param_groups

from .core import Check, Example, agree, confirmed, refuted

N_LAYERS, LR_DECAY, BASE_LR, DECAY = 12, 0.8, 1e-3, 0.01  # the recipe's defaults (base_lr: the fine-tune's)
STEPS = 5
NO_DECAY_NAMES = ("bias", "norm", "LayerNorm", "layer_norm")


class Encoder(nn.Module):
    """A pretrained-style backbone (embeddings, 12 encoder blocks) and a new classification head."""

    def __init__(self, vocab=50, d=16, classes=3):
        super().__init__()
        self.backbone = nn.ModuleDict({
            "embeddings": nn.Embedding(vocab, d), "embed_norm": nn.LayerNorm(d),
            "encoder": nn.TransformerEncoder(
                nn.TransformerEncoderLayer(d, 2, 2 * d, dropout=0.0, batch_first=True), N_LAYERS,
                enable_nested_tensor=False)})
        self.head = nn.Linear(d, classes)

    def forward(self, tokens):
        b = self.backbone
        return self.head(b["encoder"](b["embed_norm"](b["embeddings"](tokens))).mean(1))


def layerwise_groups(model: nn.Module, base_lr=BASE_LR, n_layers=N_LAYERS, lr_decay=LR_DECAY,
                     weight_decay=DECAY):
    """The lesson's configure_layerwise_lr_decay, re-typed: groups for 'layer.{i}.' / 'layers.{i}.' names
    only."""
    groups = []
    for i in range(n_layers + 1):
        lr = base_lr * lr_decay ** (n_layers - i)
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if f"layer.{i}." in name or f"layers.{i}." in name:
                (no_decay if any(nd in name for nd in NO_DECAY_NAMES) else decay).append(p)
        groups += [{"params": decay, "lr": lr, "weight_decay": weight_decay, "layer": i}] if decay else []
        groups += [{"params": no_decay, "lr": lr, "weight_decay": 0.0, "layer": i}] if no_decay else []
    return groups


def finetune_groups(backbone: nn.Module, head: nn.Module, base_lr=BASE_LR):
    """The lesson's finetune_optimizer, re-typed."""
    return [{"params": list(backbone.parameters()), "lr": base_lr * 0.1, "weight_decay": 0.0},
            {"params": list(head.parameters()), "lr": base_lr, "weight_decay": 0.01}]


def lesson_decays(name: str, p: torch.Tensor) -> bool:
    """The lesson's own rule (configure_adamw): no decay for 1-D tensors and names with norm or bias."""
    return not (p.ndim == 1 or "norm" in name.lower() or "bias" in name.lower())


def train(model: nn.Module, groups, make) -> None:
    g = torch.Generator().manual_seed(0)
    tokens, labels = torch.randint(0, 50, (32, 6), generator=g), torch.randint(0, 3, (32,), generator=g)
    opt = make([{k: v for k, v in group.items() if k != "layer"} for group in groups])
    for _ in range(STEPS):
        opt.zero_grad()
        nn.functional.cross_entropy(model(tokens), labels).backward()
        opt.step()


def fresh() -> Encoder:
    torch.manual_seed(0)
    return Encoder()


def run() -> tuple[str, list[Check], dict]:
    makers = {"torch": lambda gs: torch.optim.AdamW(gs, lr=BASE_LR),
              "optimlab": lambda gs: optimlab.AdamW(gs, lr=BASE_LR)}
    model = fresh()
    names = {id(p): n for n, p in model.named_parameters()}
    groups = layerwise_groups(model)
    placed = {id(p) for g in groups for p in g["params"]}
    dropped = [n for n, p in model.named_parameters() if id(p) not in placed]
    n_dropped = sum(p.numel() for p in model.parameters() if id(p) not in placed)
    n_total = sum(p.numel() for p in model.parameters())
    scales = {g["layer"]: g["lr"] / BASE_LR for g in groups}
    unchanged = {}
    for impl, make in makers.items():
        m = fresh()
        before = {n: p.detach().clone() for n, p in m.named_parameters()}
        train(m, layerwise_groups(m), make)
        unchanged[impl] = [n for n, p in m.named_parameters() if torch.equal(p, before[n])]
    try:
        param_groups.check(model, groups)
        check_says = "accepts them"
    except ValueError as err:
        check_says = f"raises ValueError ({str(err)[:90]}…)"
    ours = param_groups.build(model, BASE_LR, DECAY, layer_decay=LR_DECAY, blocks="backbone.encoder.layers",
                              verbose=False)
    our_scale = {n: g["lr_factor"] for g in ours for n in g["param_names"]}

    # the fine-tuning recipe and the lesson's decay rule
    ft = finetune_groups(model.backbone, model.head)
    ft_lr = {names[id(p)]: g["lr"] for g in ft for p in g["params"]}
    ft_wd = {names[id(p)]: g["weight_decay"] for g in ft for p in g["params"]}
    wrong_decay = [n for n, p in model.named_parameters() if (ft_wd[n] > 0) != lesson_decays(n, p)]
    ours_ft = param_groups.build(model, BASE_LR, DECAY, lr_scale={"backbone": 0.1}, verbose=False)
    ours_ft_lr = {n: g["lr"] for g in ours_ft for n in g["param_names"]}
    ours_wd = {n: g["weight_decay"] > 0 for g in ours_ft for n in g["param_names"]}
    policy_diff = [n for n, p in model.named_parameters() if ours_wd[n] != lesson_decays(n, p)]
    norms_and_biases = [n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)]
    undecayed_ok = all(not lesson_decays(n, p) for n, p in model.named_parameters()
                       if n.endswith("bias") or n.rsplit(".", 1)[0] in norms_and_biases)

    lines = [f"layer-wise decay (base_lr {BASE_LR}, n_layers {N_LAYERS}, lr_decay {LR_DECAY}) on a 12-block "
             f"encoder with embeddings and a head:",
             "  lr / base_lr by layer index: " + ", ".join(f"{i}: {s:.3f}"
                                                          for i, s in sorted(scales.items())),
             f"  in no group: {len(dropped)} tensors, {n_dropped:,} of {n_total:,} parameters: "
             f"{', '.join(dropped)}",
             f"  unchanged after {STEPS} AdamW steps: " + "; ".join(f"{i}: {len(v)} tensors" for i, v in
                                                             unchanged.items()),
             f"  optimlab.param_groups.check on these groups {check_says}",
             "  optimlab.param_groups.build(layer_decay=0.8) lr scales: embeddings "
             f"{our_scale['backbone.embeddings.weight']:.4f}, block 0 "
             f"{our_scale['backbone.encoder.layers.0.linear1.weight']:.4f}, block 11 "
             f"{our_scale['backbone.encoder.layers.11.linear1.weight']:.4f}, head "
             f"{our_scale['head.weight']:.4f}",
             f"fine-tuning groups: backbone lr {ft_lr['backbone.embeddings.weight']:g} weight decay 0, head "
             "lr "
             f"{ft_lr['head.weight']:g} weight decay 0.01; optimlab build(lr_scale={{'backbone': 0.1}}) lrs "
             "agree: "
             f"{all(abs(ours_ft_lr[n] - ft_lr[n]) <= 1e-15 for n in ft_lr)}",
             f"  decay against the lesson's own rule (configure_adamw: none for 1-D, 'norm', 'bias'): "
             f"{len(wrong_decay)} tensors differ "
             f"({', '.join(wrong_decay[:4])}{', …' if len(wrong_decay) > 4 else ''})",
             f"configure_adamw's rule against optimlab's no-decay policy: {len(policy_diff)} differ "
             f"({', '.join(policy_diff) or 'none'}: optimlab keeps embeddings undecayed unless "
             "decay_embeddings=True)"]
    arithmetic = {i: BASE_LR * LR_DECAY ** (N_LAYERS - i) / BASE_LR for i in (0, 6, 12)}
    checks = [
        Check("'LR for layer i = base_lr * lr_decay^(n_layers - i)': layer 0 ≈ 0.069, layer 6 ≈ 0.262, layer "
              "12 "
              "= base_lr",
              "0.8^12 = {:.4f}, 0.8^6 = {:.4f}, 0.8^0 = {:.0f}".format(*arithmetic.values()),
              "confirmed if the three factors round to the docstring's 0.069, 0.262 and 1, refuted otherwise",
              confirmed() if (round(arithmetic[0], 3), round(arithmetic[6], 3), arithmetic[12])
              == (0.069, 0.262, 1) else refuted()),
        Check("'Layer 0 (embedding): base_lr * 0.8^12 … Layer 12 (top): base_lr'",
              f"on 12 blocks named layers.0–11 the embeddings match no 'layer.{{i}}.' and there is no layer "
              "12: "
              f"{len(dropped)} tensors ({n_dropped:,} of {n_total:,} parameters: embeddings, their norm, the "
              "head) "
              "are in no group and stay at their initial values with torch's and optimlab's AdamW; the top "
              "block "
              f"gets {scales[N_LAYERS - 1]:.1f} × base_lr",
              "confirmed if every parameter is in a group and the top of the model trains at base_lr (with "
              "both "
              "libraries), refuted if any is never trained",
              agree({impl: not v and not dropped for impl, v in unchanged.items()})),
        Check("finetune_optimizer: 'backbone gets 10x smaller LR than new head'",
              f"backbone {ft_lr['backbone.embeddings.weight']:g}, head {ft_lr['head.weight']:g}; optimlab's "
              "param_groups.build(lr_scale={'backbone': 0.1}) gives the same lrs",
              "confirmed if the backbone's lr is base_lr / 10 and the head's base_lr, refuted otherwise",
              confirmed() if all(abs(ft_lr[n] - (BASE_LR * 0.1 if n.startswith("backbone") else BASE_LR))
                                 <= 1e-15 for n in ft_lr) else refuted()),
        Check("finetune_optimizer's weight decay follows the lesson's rule ('0.01 for weight matrices, 0.0 "
              "for "
              "biases and LayerNorm parameters')",
              f"{len(wrong_decay)} tensors differ: every backbone matrix gets 0, the head's bias gets 0.01",
              "confirmed if every tensor's decay matches the lesson's rule (configure_adamw's), refuted "
              "otherwise",
              confirmed() if not wrong_decay else refuted()),
        Check("configure_adamw: 'Biases and norm parameters should NOT have weight decay'",
              f"every bias and LayerNorm tensor lands in the no-decay group: {undecayed_ok}; against "
              "optimlab's "
              f"policy {len(policy_diff)} tensors differ ({', '.join(policy_diff) or 'none'})",
              "confirmed if every bias and every LayerNorm parameter gets no decay, refuted otherwise",
              confirmed() if undecayed_ok else refuted()),
    ]
    numbers = {"dropped": dropped, "dropped_params": n_dropped, "total_params": n_total,
               "lr_scale_by_layer": {str(k): v for k, v in scales.items()},
               "unchanged_after_training": unchanged, "finetune_wrong_decay": wrong_decay,
               "policy_difference": policy_diff}
    return "\n".join(lines), checks, numbers


EXAMPLE = Example(
    id="param-group-recipes", lesson="adam-vs-sgd",
    title="configure_layerwise_lr_decay, finetune_optimizer and configure_adamw",
    setup=f"the recipes at their defaults (n_layers {N_LAYERS}, lr_decay {LR_DECAY}, weight_decay {DECAY}; "
    f"base_lr {BASE_LR}) on a small encoder with BERT-like names: embeddings, 12 nn.TransformerEncoderLayer "
    f"blocks (d 16, 2 heads), a linear head; {STEPS} AdamW steps on random tokens with torch's and "
    "optimlab's "
    "AdamW; the same jobs with optimlab.param_groups.build",
    run=run)
