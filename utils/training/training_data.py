"""The data of a training: its training and validation loaders, and its steps per epoch."""

from dataclasses import dataclass

from utils.data.dataset import ERA5Dataset
from utils.data.loader import get_data_loader
from utils.errors import ConfigError


@dataclass
class TrainingData:
    """The loaders, data sets and training sampler of a run.

    The loaders yield normalised batches ``[inp (B, C, H, W), tar (B, T, C, H, W), time_hours
    (B,)]`` with T = ``t_out_train`` or ``t_out_valid``; ``max_steps_per_epoch`` is the config's
    cap on optimiser steps per epoch (0 or None: none).
    """

    train_loader: object
    train_set: ERA5Dataset
    train_sampler: object
    valid_loader: object
    valid_set: ERA5Dataset
    max_steps_per_epoch: int | None = None

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch: the training batches, at most ``max_steps_per_epoch``."""
        cap = self.max_steps_per_epoch
        return min(len(self.train_loader), cap) if cap else len(self.train_loader)

    def require_a_step(self, params) -> None:
        """Refuse a configuration whose epoch has no optimiser step (a :class:`ConfigError`)."""
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"no optimiser step per epoch: 'batch_size' ({params.batch_size}) exceeds the "
                f"{len(self.train_set)} training samples of 'train_period' {params.train_period}"
            )


def load_training_data(params, distributed: bool) -> TrainingData:
    """The ``train`` and ``valid`` loaders of ``params`` (per-rank shares when ``distributed``)."""
    train_loader, train_set, train_sampler = get_data_loader(params, distributed, "train")
    valid_loader, valid_set, _ = get_data_loader(params, distributed, "valid")
    return TrainingData(
        train_loader,
        train_set,
        train_sampler,
        valid_loader,
        valid_set,
        params.max_steps_per_epoch,
    )
