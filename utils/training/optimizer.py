"""The optimiser and learning-rate schedule of training.

``build_optimizer``: fused AdamW over the trainable parameters in two weight-decay groups;
``cosine_factor``: the multiplier of a ``LambdaLR`` that anneals from ``lr`` to ``min_lr``.
"""

import math

import torch


def build_optimizer(model, params) -> torch.optim.AdamW:
    """Fused AdamW (one kernel per step, CUDA and CPU) over the trainable parameters in two
    groups: matrices, which decay, and vectors (biases, norms, log-variances) with the position
    embedding, which decay only with ``weight_decay_all`` (as in the original code)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith("pos_embed") else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": params.weight_decay},
        {
            "params": no_decay,
            "weight_decay": params.weight_decay if params.weight_decay_all else 0.0,
        },
    ]
    return torch.optim.AdamW(groups, lr=params.lr, betas=tuple(params.betas), fused=True)


def cosine_factor(lr, min_lr, total_steps):
    """LR multiplier of a cosine annealing from ``lr`` to ``min_lr`` over ``total_steps`` steps.

    Closed form in the step count (held at ``min_lr`` past the end): a run resumed with a larger
    ``max_epochs`` follows the longer schedule instead of climbing back up as the recursive
    ``CosineAnnealingLR`` would past its end.
    """

    def factor(step):
        progress = min(step, total_steps) / total_steps
        return (min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))) / lr

    return factor
