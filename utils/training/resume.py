"""Resuming a run: the checkpoint it resumes from, and the settings that changed since.

A run resumes from ``--checkpoint`` when given, else from its own ``ckpt.tar`` (from
``ckpt_prev.tar``, with a warning, when ``ckpt.tar`` cannot be read). Settings that differ from
those the checkpoint was written with are warned about and appended to ``config_changes.jsonl``.
"""

import json
import logging
import os
from typing import Any

from utils.atomic_io import atomic_write_text
from utils.training.checkpoint import load_checkpoint, load_latest_checkpoint
from utils.training.run_directory import RunFiles
from utils.training.training_state import Progress, plain_params

logger = logging.getLogger("vamoe")


def find_resume_checkpoint(
    explicit: str | None, files: RunFiles
) -> tuple[dict[str, Any] | None, str | None]:
    """``(checkpoint, its path)`` to resume from: ``explicit`` when given, else the run's own
    ``ckpt.tar`` or ``ckpt_prev.tar``; ``(None, None)`` for a new run."""
    if explicit:
        return load_checkpoint(explicit), explicit
    if os.path.isfile(files.ckpt) or os.path.isfile(files.prev):
        return load_latest_checkpoint(files.ckpt, files.prev, logger)
    return None, None


def changed_settings(ckpt: dict[str, Any], params, world_size: int) -> dict[str, list]:
    """``{key: [saved, current]}`` for every setting (and the world size) that differs from the
    ones ``ckpt`` was written with; empty for a checkpoint from before settings were stored."""
    saved = dict(ckpt.get("params") or {})
    if not saved:
        return {}
    if "world_size" in ckpt:
        saved["world_size"] = ckpt["world_size"]
    current = {**plain_params(params), "world_size": world_size}
    return {
        k: [saved.get(k), current.get(k)]
        for k in sorted(set(saved) | set(current))
        if saved.get(k) != current.get(k)
    }


def record_changed_settings(
    changes: dict[str, list], files: RunFiles, progress: Progress, is_main: bool
) -> None:
    """Warn about ``changes`` and append them, with where the run resumes, to
    ``config_changes.jsonl`` (rank 0); nothing when there are none."""
    if not changes:
        return
    logger.warning(
        "resuming with changed settings: %s",
        "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items()),
    )
    if is_main:
        line = {"epoch": progress.start_epoch, "step_in_epoch": progress.start_step}
        _append_jsonl(files.config_changes, {**line, "changes": changes})


def _append_jsonl(path: str, record: dict[str, Any]) -> None:
    previous = ""
    if os.path.isfile(path):
        with open(path) as f:
            previous = f.read()
    atomic_write_text(path, previous + json.dumps(record) + "\n")
