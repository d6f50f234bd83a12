"""torchrun worker for tests/test_forecast_store.py: the ranks of an evaluation write their shares
of one forecast store.

Every rank opens :func:`utils.evaluation.forecast_saving.saved_forecasts` with a loader sharded as
the evaluation shards it (:class:`utils.data.loader.ShardedEpochSampler`) and hands it a forecast
of each of its starts that depends on the start only, as the rollout hook does. The test compares
the store of two ranks with the store of one.

    python -m torch.distributed.run --nproc_per_node 2 tests/store_ranks_worker.py STORE FINAL_DIR
"""

import sys
from types import SimpleNamespace

import numpy as np

from utils import distributed as dist_utils
from utils.data.loader import ShardedEpochSampler
from utils.evaluation.forecast_saving import ForecastSaveRequest, saved_forecasts
from utils.grid import latitudes, longitudes
from utils.times import to_hours
from utils.YParams import YParams

N_STARTS = 10


def forecast_of(start: int, shape) -> np.ndarray:
    """The forecast ``(T + 1, C, H, W)`` of a start: random numbers seeded by the start."""
    return np.random.default_rng(start).standard_normal(shape).astype(np.float32)


def main(store: str, final_dir: str) -> None:
    info = dist_utils.init_distributed()
    params = YParams("config/vamoe.yaml", "tiny")
    times = to_hours("2020-01-28") + 6 * np.arange(N_STARTS)
    dataset = SimpleNamespace(times=times, lat=latitudes(32), lon=longitudes(64))
    sampler = ShardedEpochSampler(N_STARTS, info.world_size, info.rank)
    loader = SimpleNamespace(sampler=sampler, batch_size=2)
    request = ForecastSaveRequest(store, ["z", "t2m", "u10"], 12)
    shape = (params.t_out_test + 1, params.layout.n_channels, 32, 64)
    with saved_forecasts(
        request, params, dataset, loader, None, final_dir, final_dir, {"title": "ranks"}
    ) as saved:
        for i in sampler:
            saved(int(times[i]), forecast_of(int(times[i]), shape))
    dist_utils.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
