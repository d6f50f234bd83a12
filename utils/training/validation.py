"""Validation after each epoch: the rollout loss and the latitude-weighted RMSE per lead time.

Each rank scores its own share of the validation samples with the bare model (no DDP
collectives, so unequal shares cannot hang) and the sums are reduced at the end. RMSE is
``sqrt(mean over samples of the latitude-weighted MSE)`` in physical units
(:class:`utils.evaluation.metrics.MetricAccumulator`), for the ``headline_variables``.
"""

import torch
from torch import nn

from utils import distributed as dist_utils
from utils.evaluation.metrics import MetricAccumulator, accumulation_dtype, lat_weights_torch
from utils.evaluation.stepper import Stepper
from utils.training import losses
from utils.training.checkpoint import unwrap


class Validation:
    """Scores a model on ``loader`` (batches ``(inp (B, C, H, W), tar (B, T, C, H, W), _)``,
    normalised; at most ``max_valid_steps`` of them when set) over ``t_out_valid`` leads.

    Args:
        loader: the validation loader.
        params: the run's config (``t_out_valid``, ``lead_time``, ``max_valid_steps``,
            ``headline_variables``, ``layout``).
        lat: the grid's latitudes ``(H,)`` (degrees).
        mean, std: ``(C,)`` normalisation statistics (for the physical units of the RMSE).
        device: where the model runs.
        amp_dtype: the autocast dtype (None: full precision).
    """

    def __init__(self, loader, params, lat, mean, std, device, amp_dtype=None):
        self.loader = loader
        self.params = params
        self.layout = params.layout
        self.mean, self.std = mean, std
        self.device = device
        self.amp_dtype = amp_dtype
        lat = torch.as_tensor(lat, device=device)
        self.lat_weights = lat_weights_torch(lat, device, accumulation_dtype(device))  # (H, 1)
        self.headline = [n for n in params.headline_variables if n in self.layout.names]

    @torch.no_grad()
    def run(self, model: nn.Module) -> dict:
        """``valid_loss`` (mean over batches), ``valid_samples`` and, per lead k (0-based),
        ``valid_rmse`` (k = 0) or ``valid_rmse_<(k + 1) * lead_time>h``: ``{name: rmse}`` for
        the headline variables. ``model`` may be wrapped; the bare model is scored."""
        model = unwrap(model)
        model.eval()
        scores, loss_sum = self._sums(
            Stepper(model, self.mean, self.std, self.device, self.amp_dtype)
        )
        rmse = scores.rmse()  # (C, T)
        result = {
            "valid_loss": (loss_sum[0] / loss_sum[1].clamp(min=1)).item(),
            "valid_samples": scores.n_samples(),
        }
        for k in range(self.params.t_out_valid):
            suffix = "" if k == 0 else f"_{(k + 1) * self.params.lead_time}h"
            result[f"valid_rmse{suffix}"] = {
                n: float(rmse[self.layout.index_of_name(n), k]) for n in self.headline
            }
        return result

    def _sums(self, stepper: Stepper) -> tuple[MetricAccumulator, torch.Tensor]:
        """The scores of every rank's batches and ``(loss sum, batch count)`` float64, reduced
        over ranks."""
        scores = MetricAccumulator(self.layout.n_channels, self.params.t_out_valid, self.device)
        loss_sum = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, batches
        cap = self.params.max_valid_steps
        for i, (inp, tar, _) in enumerate(self.loader):
            if cap and i >= cap:
                break
            inp, tar = inp.to(self.device), tar.to(self.device)
            loss, _, forecasts = losses.rollout_loss(stepper, inp, tar)
            for k, forecast in enumerate(forecasts):
                truth = stepper.denormalise(tar[:, k])
                scores.update(k, stepper.denormalise(forecast), truth, self.lat_weights)
            loss_sum += torch.stack([loss.detach().double(), loss_sum.new_ones(())])
        scores.all_reduce()
        return scores, dist_utils.all_reduce_sum(loss_sum)
