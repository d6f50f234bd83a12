"""``torch.compile`` of the VA-MoE network as the trainer, the evaluation and the benchmark use it.

The whole forward (blocks, channel MoE, attention, head and loss) is one graph and its backward
one more: nothing in either reads a tensor value on the host (no ``.item()``, ``.tolist()``,
``nonzero`` or data-dependent branch), which ``tests/test_compile.py`` checks with
``fullgraph=True`` and on the forward and backward graphs that AOTAutograd traces. The batch dimension is
compiled as dynamic (``dynamic=True``; channels and grid are fixed by the shape check at the top of
``VAMoE.forward``), so the last, smaller batch of an epoch and evaluation batches of another size
reuse the compiled code. One graph is compiled per mode (training, evaluation/no-grad); a batch of
exactly 1 is specialised by the compiler and compiles once more.
"""

import torch
from torch import nn


def compile_model(model: nn.Module, **kwargs) -> nn.Module:
    """``torch.compile(model, dynamic=True, **kwargs)``; ``kwargs`` e.g. ``backend``, ``fullgraph``."""
    return torch.compile(model, dynamic=True, **kwargs)
