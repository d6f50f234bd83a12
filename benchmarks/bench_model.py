"""Speed and memory of the VA-MoE network on whatever device is present.

    python benchmarks/bench_model.py [--config NAME] [--set key=value ...] [--json] [--device cpu|cuda]

One run measures, on one device:

1. ``moe``: the fast channel MoE against the per-expert loop (same weights, same input), forward +
   backward, timings interleaved (loop, fast, loop, fast, ...), medians and their ratio. Next to
   it, the ceiling of that ratio on this device: the loop's time over the time that any
   implementation must spend, namely the layer's matmul FLOPs at the peak matmul rate of this run
   plus the sorted top-k of the ``(T, E, D)`` gate logits (timed in the same interleaved loop);
2. ``train_step``: a full training step (forward with target, backward, AdamW step): step time,
   tokens/s, achieved model FLOP/s (``networks/flops.py``: 3 x the analytic forward count) and
   MFU = achieved / peak, the peak being a large square matmul timed in the same run on the same
   device (fp32 on CPU, bf16 on CUDA; ``peak_matmul`` line). The peak trials are interleaved with
   the training steps so that both see the same machine load; MFU uses the median step time and
   the best peak trial (the conservative choice);
3. ``memory``: peak memory of the training steps (``torch.cuda.max_memory_allocated`` on CUDA;
   the process's peak resident set size from ``resource.getrusage`` on CPU, which covers
   everything the process has held, model and optimiser state included);
4. ``rollout``: autoregressive inference steps/s (``model.eval()``, ``torch.inference_mode``, each
   forecast fed back as the next input).

Defaults. CPU: a mid-size model, section ``tiny`` with ``embed_dim=256 depth=6 num_heads=8
window_size=[8,8]`` on the 32 x 64 grid (512 tokens per sample, 20 channels, 6 experts), batch 4,
fp32. CUDA: the paper configuration ``vamoe`` (128 x 256, D = 768, 24 blocks, 376 M parameters),
batch 1, bf16 autocast, the training step measured without and with ``checkpoint_blocks``.
``--set`` overrides apply on top of either (``--set checkpoint_blocks=true``); ``--batch`` sets the
batch.

``--compile`` (or ``compile: true`` in the config) measures every training-step variant twice in
the same run, eager and compiled (``networks.compile.compile_model``, backend ``--compile-backend``,
default Inductor), and adds a ``compile`` line: compile time (the first compiled step's time minus
an eager step's), eager and compiled step time and MFU, and the ratio compiled/eager of the step
times. The rollout then runs compiled too.

``--json`` prints one JSON object per measurement line; otherwise a readable table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from networks.channel_moe import ChannelMoE, sorted_topk  # noqa: E402
from networks.compile import compile_model  # noqa: E402
from networks.flops import channel_moe_flops, forward_flops, training_step_flops  # noqa: E402
from networks.vamoe import VAMoE  # noqa: E402
from utils.evaluation.stepper import autocast_context  # noqa: E402
from utils.training.optimizer import build_optimizer  # noqa: E402
from utils.YParams import YParams  # noqa: E402

CPU_DEFAULT_CONFIG = "tiny"
CPU_DEFAULT_SET = [
    "embed_dim=256",
    "depth=6",
    "num_heads=8",
    "window_size=[8, 8]",
    "drop_path=0.0",
]
CPU_DEFAULT_BATCH = 4
CUDA_DEFAULT_CONFIG = "vamoe"
CUDA_DEFAULT_BATCH = 1


# ---------------------------------------------------------------------------------- helpers
class Timer:
    """Wall-clock timing that waits for the device (``torch.cuda.synchronize``) on CUDA."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start


def autocast_for(device: torch.device, bf16: bool):
    return autocast_context(device, torch.bfloat16 if bf16 else None)


class PeakMatmul:
    """Peak matmul FLOP/s of the device: a large square matmul (fp32 CPU, bf16 CUDA)."""

    def __init__(self, device: torch.device, size: int, dtype: torch.dtype):
        self.size, self.dtype = size, dtype
        self.timer = Timer(device)
        gen = torch.Generator(device=device).manual_seed(0)
        self.a = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
        self.b = torch.randn(size, size, device=device, dtype=dtype, generator=gen)
        self.c = torch.empty(size, size, device=device, dtype=dtype)
        self.reps = 1 if device.type == "cpu" else 50  # CPU 4096^2: ~1 s; CUDA 8192^2: ~0.1 s
        torch.mm(self.a, self.b, out=self.c)  # warm-up
        self.trials: list[float] = []

    def trial(self) -> float:
        def run():
            for _ in range(self.reps):
                torch.mm(self.a, self.b, out=self.c)

        seconds = self.timer(run)
        flops = 2 * self.size**3 * self.reps / seconds
        self.trials.append(flops)
        return flops

    def free(self) -> None:
        del self.a, self.b, self.c

    @property
    def peak(self) -> float:
        return max(self.trials)


def process_peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports kilobytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


# ---------------------------------------------------------------------------------- (1) MoE
def bench_moe(
    params, batch: int, device: torch.device, bf16: bool, reps: int, peak_flops: float
) -> dict:
    """Fast vs loop channel MoE, forward + backward, on the model's token count and width.

    ``speedup_ceiling`` = loop time / (matmul FLOPs / ``peak_flops`` + sorted top-k time).
    """
    d, e, topk = params.embed_dim, params.num_experts, params.expert_channels_divisor
    n = (params.h_size // params.patch_size) * (params.w_size // params.patch_size)
    torch.manual_seed(0)
    loop = ChannelMoE(d, e, topk, eps=params.layer_norm_eps, impl="loop").to(device)
    fast = ChannelMoE(d, e, topk, eps=params.layer_norm_eps, impl="fast").to(device)
    fast.load_state_dict(loop.state_dict())
    h = torch.randn(batch, n, d, device=device)
    var_embed = torch.randn(e, d, device=device)
    grad = torch.randn(batch, n, d, device=device)
    logits = torch.randn(
        batch * n, e, d, device=device, dtype=torch.bfloat16 if bf16 else torch.float32
    )
    timer = Timer(device)

    def step(moe):
        moe.zero_grad(set_to_none=True)
        x = h.detach().requires_grad_()
        with autocast_for(device, bf16):
            out = moe(x, var_embed)
        out.backward(grad.to(out.dtype))

    # Same function: check once that both give the same output here.
    with torch.no_grad(), autocast_for(device, bf16):
        diff = (fast(h, var_embed).float() - loop(h, var_embed).float()).abs().max().item()
    runs = {
        "loop": lambda: step(loop),
        "fast": lambda: step(fast),
        "topk": lambda: sorted_topk(logits, d // topk),
    }
    times = {name: [] for name in runs}
    for _ in range(2):
        for run in runs.values():
            run()
    for _ in range(reps):
        for name, run in runs.items():
            times[name].append(timer(run))
    t_loop, t_fast, t_topk = (statistics.median(times[name]) for name in ("loop", "fast", "topk"))
    flops = 3 * channel_moe_flops(batch * n, d, e, topk)
    t_floor = flops / peak_flops + t_topk
    return {
        "measurement": "moe",
        "tokens": batch * n,
        "embed_dim": d,
        "experts": e,
        "topk": topk,
        "reps": reps,
        "loop_ms": 1e3 * t_loop,
        "fast_ms": 1e3 * t_fast,
        "speedup": t_loop / t_fast,
        "fast_gflops": flops / t_fast / 1e9,
        "loop_gflops": flops / t_loop / 1e9,
        "topk_ms": 1e3 * t_topk,
        "matmul_floor_ms": 1e3 * flops / peak_flops,
        "speedup_ceiling": t_loop / t_floor,
        "max_abs_output_diff": diff,
    }


# ---------------------------------------------------------------------------------- (2, 3) train
def build_model(params, device: torch.device, backend: str | None = None):
    """The model and what to call: the model itself, or its compiled form when ``backend``."""
    model = VAMoE.from_params(params).to(device)
    return model, (model if backend is None else compile_model(model, backend=backend))


def bench_train(
    params,
    batch: int,
    device: torch.device,
    bf16: bool,
    steps: int,
    peak: PeakMatmul,
    label: str,
    backend: str | None = None,
) -> list[dict]:
    torch.manual_seed(0)
    model, run_model = build_model(params, device, backend)
    model.train()
    opt = build_optimizer(model, params)  # the trainer's optimizer
    c = params.layout.n_channels
    x = torch.randn(batch, c, params.h_size, params.w_size, device=device)
    y = torch.randn_like(x)
    timer = Timer(device)

    def step():
        opt.zero_grad(set_to_none=True)  # noqa: F821
        with autocast_for(device, bf16):
            out = run_model(x, y)  # noqa: F821
        out.loss.backward()
        opt.step()  # noqa: F821

    first_step_s = timer(step)  # includes compilation when compiled
    step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        times.append(timer(step))
        peak.trial()  # interleaved with the steps: same machine load
    t_step = statistics.median(times)
    tokens = batch * (params.h_size // params.patch_size) * (params.w_size // params.patch_size)
    flops = training_step_flops(params, batch)
    n_params = sum(p.numel() for p in model.parameters())
    train = {
        "measurement": "train_step",
        "label": label,
        "params": n_params,
        "batch": batch,
        "tokens": tokens,
        "bf16": bf16,
        "checkpoint_blocks": bool(params.checkpoint_blocks),
        "compile": backend,
        "first_step_s": first_step_s,
        "steps": steps,
        "step_ms": 1e3 * t_step,
        "step_ms_min": 1e3 * min(times),
        "tokens_per_s": tokens / t_step,
        "model_tflop_per_step": flops / 1e12,
        "achieved_gflops": flops / t_step / 1e9,
    }  # peak and MFU: added by main()
    mem = memory_row(device, label)
    del model, run_model, opt, x, y
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return [train, mem]


def memory_row(device: torch.device, label: str) -> dict:
    """Peak memory since the last reset: CUDA allocations, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return {
            "measurement": "memory",
            "label": label,
            "device": "cuda",
            "max_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
            "max_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30,
            "fits_80gb": torch.cuda.max_memory_reserved(device) < 80e9,
        }
    return {
        "measurement": "memory",
        "label": label,
        "device": "cpu",
        "peak_rss_gib": process_peak_rss_bytes() / 2**30,
    }


# ---------------------------------------------------------------------------------- (4) rollout
def bench_rollout(
    params, batch: int, device: torch.device, bf16: bool, steps: int, backend: str | None = None
) -> dict:
    torch.manual_seed(0)
    model, run_model = build_model(params, device, backend)
    model.eval()
    c = params.layout.n_channels
    x0 = torch.randn(batch, c, params.h_size, params.w_size, device=device)
    timer = Timer(device)

    def rollout(n):
        with torch.inference_mode(), autocast_for(device, bf16):
            state = x0
            for _ in range(n):
                state = run_model(state).forecast.to(x0.dtype)  # noqa: F821
        return state

    rollout(1)  # warm-up
    seconds = timer(lambda: rollout(steps))
    flops = forward_flops(params, batch, training=False)
    out = {
        "measurement": "rollout",
        "compile": backend,
        "batch": batch,
        "steps": steps,
        "bf16": bf16,
        "seconds": seconds,
        "steps_per_s": steps / seconds,
        "samples_steps_per_s": batch * steps / seconds,
        "achieved_gflops": flops * steps / seconds / 1e9,
    }
    del model, run_model
    gc.collect()
    return out


# ---------------------------------------------------------------------------------- main
def print_table(rows: list[dict]) -> None:
    for row in rows:
        kind = row["measurement"]
        if kind == "env":
            print(
                f"device {row['device']} | torch {row['torch']} | threads {row['threads']} | "
                f"config {row['config']} {' '.join(row['set'])} | batch {row['batch']} | "
                f"load avg {row['loadavg_1m']:.2f}"
            )
        elif kind == "moe":
            print(
                f"[1] channel MoE fwd+bwd ({row['tokens']} tokens, D={row['embed_dim']}, "
                f"E={row['experts']}): loop {row['loop_ms']:.1f} ms, fast {row['fast_ms']:.1f} ms"
                f" -> speedup {row['speedup']:.2f}x  (fast {row['fast_gflops']:.1f} GFLOP/s)"
            )
            print(
                f"    ceiling on this device: {row['speedup_ceiling']:.2f}x = loop / (matmuls at "
                f"peak {row['matmul_floor_ms']:.1f} ms + sorted top-k {row['topk_ms']:.1f} ms)"
            )
        elif kind == "peak_matmul":
            print(
                f"    peak matmul {row['size']}^2 {row['dtype']}: best {row['peak_gflops']:.1f} "
                f"GFLOP/s, median {row['median_gflops']:.1f} over {row['trials']} trials"
            )
        elif kind == "train_step":
            print(
                f"[2] train step [{row['label']}] {row['params'] / 1e6:.1f} M params: "
                f"{row['step_ms']:.0f} ms, {row['tokens_per_s']:.0f} tokens/s, "
                f"{row['achieved_gflops']:.1f} GFLOP/s of {row['peak_gflops']:.1f} peak "
                f"-> MFU {row['mfu']:.3f}"
            )
        elif kind == "memory":
            value = (
                f"max allocated {row['max_allocated_gib']:.2f} GiB "
                f"(reserved {row['max_reserved_gib']:.2f})"
                if row["device"] == "cuda"
                else f"process peak RSS {row['peak_rss_gib']:.2f} GiB"
            )
            print(f"[3] memory [{row['label']}]: {value}")
        elif kind == "compile":
            print(
                f"[2c] compiled [{row['label']}] ({row['backend']}): compile {row['compile_s']:.1f} s;"
                f" step eager {row['eager_step_ms']:.0f} ms -> compiled "
                f"{row['compiled_step_ms']:.0f} ms (ratio compiled/eager "
                f"{row['ratio_compiled_eager']:.2f}); MFU {row['eager_mfu']:.3f} -> "
                f"{row['compiled_mfu']:.3f}"
            )
        elif kind == "rollout":
            print(
                f"[4] rollout (inference, batch {row['batch']}): {row['steps_per_s']:.2f} steps/s"
                f" ({row['steps']} steps in {row['seconds']:.2f} s)"
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="VA-MoE speed and memory benchmark")
    parser.add_argument("--yaml_config", default="config/vamoe.yaml")
    parser.add_argument(
        "--config",
        default=None,
        help=f"section (default: {CPU_DEFAULT_CONFIG} + mid-size overrides on CPU, "
        f"{CUDA_DEFAULT_CONFIG} on CUDA)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--moe-reps", type=int, default=7)
    parser.add_argument("--rollout-steps", type=int, default=None)
    parser.add_argument(
        "--no-bf16", action="store_true", help="CUDA: fp32 instead of bf16 autocast"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--compile", action="store_true", help="also measure the compiled step (same run)"
    )
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    return parser


@dataclass
class Setup:
    """What one run measures: the configuration and the settings on the device."""

    device: torch.device
    config: str
    overrides: list[str]
    params: YParams
    batch: int
    bf16: bool
    backend: str | None  # torch.compile backend of the compiled variants, None: eager only
    rollout_steps: int

    @classmethod
    def from_args(cls, args) -> Setup:
        """The defaults of the device (see the module docstring) under the command line's."""
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        cuda = device.type == "cuda"
        if args.config is None:
            config = CUDA_DEFAULT_CONFIG if cuda else CPU_DEFAULT_CONFIG
            overrides = ([] if cuda else list(CPU_DEFAULT_SET)) + args.set
        else:
            config, overrides = args.config, list(args.set)
        params = YParams(args.yaml_config, config, overrides)
        return cls(
            device=device,
            config=config,
            overrides=overrides,
            params=params,
            batch=args.batch or (CUDA_DEFAULT_BATCH if cuda else CPU_DEFAULT_BATCH),
            bf16=cuda and not args.no_bf16,
            backend=args.compile_backend if args.compile or params.compile else None,
            rollout_steps=args.rollout_steps or (10 if cuda else 5),
        )

    def env_row(self) -> dict:
        cuda = self.device.type == "cuda"
        return {
            "measurement": "env",
            "device": torch.cuda.get_device_name(self.device) if cuda else "cpu",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "config": self.config,
            "set": self.overrides,
            "batch": self.batch,
            "bf16": self.bf16,
            "compile": self.backend,
            "loadavg_1m": os.getloadavg()[0],
        }

    def train_variants(self) -> list[tuple[str, bool | None]]:
        """``[(label, checkpoint_blocks to set or None)]``: on CUDA without and with block
        checkpointing unless ``--set`` chose, elsewhere the configuration's setting."""
        if self.device.type == "cuda" and not any(
            s.startswith("checkpoint_blocks=") for s in self.overrides
        ):
            return [("plain", False), ("checkpoint_blocks", True)]
        return [("checkpoint_blocks" if self.params.checkpoint_blocks else "plain", None)]


def bench_train_variants(setup: Setup, steps: int, peak: PeakMatmul, variants) -> list[dict]:
    """The ``train_step`` and ``memory`` rows of every variant, eager and, with a compile
    backend, compiled (label ``+compile``); MFU not yet added."""
    params, rows = setup.params, []
    for label, ckpt in variants:
        if ckpt is not None:
            params["checkpoint_blocks"] = ckpt
        rows += bench_train(params, setup.batch, setup.device, setup.bf16, steps, peak, label)
        if setup.backend is not None:
            rows += bench_train(
                params,
                setup.batch,
                setup.device,
                setup.bf16,
                steps,
                peak,
                label + "+compile",
                setup.backend,
            )
    return rows


def peak_row(peak: PeakMatmul) -> dict:
    return {
        "measurement": "peak_matmul",
        "size": peak.size,
        "dtype": str(peak.dtype).split(".")[-1],
        "trials": len(peak.trials),
        "peak_gflops": peak.peak / 1e9,
        "median_gflops": statistics.median(peak.trials) / 1e9,
    }


def add_mfu(train_rows: list[dict], peak_flops: float) -> None:
    """Give every row the final peak and every ``train_step`` row its MFU."""
    for row in train_rows:
        row["peak_gflops"] = peak_flops / 1e9  # final best over all trials
        if row["measurement"] == "train_step":
            row["mfu"] = row["achieved_gflops"] * 1e9 / peak_flops


def compile_rows(train_rows: list[dict], variants, backend: str) -> list[dict]:
    """One ``compile`` row per variant: the compiled step against the eager one."""
    steps_by_label = {r["label"]: r for r in train_rows if r["measurement"] == "train_step"}
    rows = []
    for label, _ in variants:
        eager, compiled = steps_by_label[label], steps_by_label[label + "+compile"]
        rows.append(
            {
                "measurement": "compile",
                "label": label,
                "backend": backend,
                "compile_s": compiled["first_step_s"] - eager["step_ms"] / 1e3,
                "eager_step_ms": eager["step_ms"],
                "compiled_step_ms": compiled["step_ms"],
                "ratio_compiled_eager": compiled["step_ms"] / eager["step_ms"],
                "eager_mfu": eager["mfu"],
                "compiled_mfu": compiled["mfu"],
            }
        )
    return rows


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    setup = Setup.from_args(args)
    device, cuda, bf16 = setup.device, setup.device.type == "cuda", setup.bf16
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)

    emit(setup.env_row())
    t0 = time.perf_counter()

    peak = PeakMatmul(device, 8192 if cuda else 4096, torch.bfloat16 if bf16 else torch.float32)
    peak.trial()
    # (2), (3): the training step; on CUDA without and with block checkpointing.
    variants = setup.train_variants()
    train_rows = bench_train_variants(setup, args.steps, peak, variants)
    peak.trial()
    emit(peak_row(peak))
    peak.free()
    add_mfu(train_rows, peak.peak)
    for row in train_rows:
        emit(row)
    for row in compile_rows(train_rows, variants, setup.backend) if setup.backend else []:
        emit(row)
    # (1) fast vs loop MoE; (4) rollout (eval mode: checkpoint_blocks plays no part).
    emit(bench_moe(setup.params, setup.batch, device, bf16, args.moe_reps, peak.peak))
    emit(bench_rollout(setup.params, setup.batch, device, bf16, setup.rollout_steps, setup.backend))
    # Other processes on the machine distort every timing; the load average tells how much.
    emit(
        {
            "measurement": "total",
            "seconds": time.perf_counter() - t0,
            "loadavg_1m": os.getloadavg()[0],
        }
    )
    if not args.json:
        print_table(rows)
        print(f"total {rows[-1]['seconds']:.0f} s, load avg {rows[-1]['loadavg_1m']:.2f}")


if __name__ == "__main__":
    main()
