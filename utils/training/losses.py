"""The rollout loss that training and validation both minimise and report."""

import torch

from utils.evaluation.stepper import Stepper


def rollout_loss(
    stepper: Stepper, inp: torch.Tensor, tar: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[torch.Tensor]]:
    """Mean of the model's loss over the target's T lead times, forecasts fed back.

    ``inp`` ``(B, C, H, W)`` and ``tar`` ``(B, T, C, H, W)`` normalised; returns the loss (a
    scalar tensor), the mean of each loss term over the T steps (float32 scalars) and the T
    forecasts ``(B, C, H, W)``.
    """
    n_steps = tar.shape[1]
    loss, terms, forecasts = 0.0, {}, []
    for step in stepper.rollout(inp, n_steps, tar):
        loss = loss + step.output.loss
        for name, value in step.output.terms.items():
            terms[name] = terms.get(name, 0.0) + value.float() / n_steps
        forecasts.append(step.forecast)
    return loss / n_steps, terms, forecasts
