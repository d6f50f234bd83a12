"""torch.compile of every block kind: one graph (no graph break, no host synchronisation), the
same numbers as eager, and no recompilation across an epoch with a ragged last batch and
evaluation batches.

The models are tiny (16 x 32 grid, D = 32, two blocks: one windowed, one global attention) so that
compiling stays cheap on a CPU. Graph counts use a backend that counts the graphs Dynamo hands it
and runs them eagerly; the numerical check compiles with the default (Inductor) backend.
"""

import pytest
import torch

from networks.compile import compile_model
from networks.vamoe import VAMoE
from utils.YParams import YParams

CONFIG = "config/vamoe.yaml"
SMALL = [
    "h_size=16",
    "w_size=32",
    "embed_dim=32",
    "depth=2",
    "global_attn_every=2",
    "num_blocks=4",
    "window_size=[4, 4]",
]
KINDS = {
    # The fast channel MoE with evenly divided windows: test_no_recompilation_across_... .
    # 8 x 16 token grid in 3 x 5 windows: windows padded and masked.
    "channelmoe_loop_padded_windows": ["moe_impl=loop", "window_size=[3, 5]"],
    "dense_mlp": ["use_moe=false"],
    "token_moe": ["use_moe=moe", "num_experts=4"],
    "checkpoint_blocks": ["checkpoint_blocks=true"],
}


class CountingBackend:
    """A ``torch.compile`` backend that counts the graphs it is given and runs them eagerly."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def small_model(overrides, seed=0):
    params = YParams(CONFIG, "tiny", SMALL + overrides)
    torch.manual_seed(seed)
    return VAMoE.from_params(params), params


def batch(params, n, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (n, params.layout.n_channels, params.h_size, params.w_size)
    return torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)


@pytest.mark.parametrize("kind", list(KINDS))
def test_block_kind_compiles_to_one_graph_with_no_host_sync(kind):
    """``fullgraph=True`` raises on any graph break, which ``.item()``, ``.tolist()``, ``.cpu()``,
    ``nonzero`` or a branch on a tensor value inside forward would cause."""
    model, params = small_model(KINDS[kind])
    model.train()
    backend = CountingBackend()
    compiled = compile_model(model, backend=backend, fullgraph=True)
    x, y = batch(params, 3, seed=1)
    torch.manual_seed(5)
    out = compiled(x, y)
    out.loss.backward()
    assert backend.graphs == 1
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    ref = model(x, y)
    ref.loss.backward()
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_no_recompilation_across_an_epoch_and_evaluation():
    """Train batches of 4, 4 and a ragged 3, then evaluation batches of 4 and 2, twice over:
    one graph for training and one for evaluation, none after."""
    model, params = small_model([])
    backend = CountingBackend()
    compiled = compile_model(model, backend=backend, fullgraph=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    counts = []
    for epoch in range(2):
        model.train()
        for step, n in enumerate([4, 4, 3]):
            x, y = batch(params, n, seed=10 * epoch + step)
            opt.zero_grad(set_to_none=True)
            compiled(x, y).loss.backward()
            opt.step()
            counts.append(backend.graphs)
        model.eval()
        with torch.no_grad():
            for n in [4, 2]:
                x, y = batch(params, n, seed=100 + n)
                assert torch.isfinite(compiled(x, y).loss)
                counts.append(backend.graphs)
    assert counts == [1, 1, 1, 2, 2] + [2] * 5


@pytest.mark.slow  # Inductor generates and compiles C++ kernels: about a minute on 2 cores
def test_inductor_training_steps_equal_eager():
    """Three AdamW steps (the last batch ragged) with the Inductor-compiled model against the same
    steps in eager mode from the same weights: losses and final weights agree to float32 rounding
    (rtol 1e-4, atol 1e-5: the compiled kernels fuse and reorder sums)."""
    eager, params = small_model(["depth=1"], seed=3)  # one windowed-attention block
    model, _ = small_model(["depth=1"], seed=3)
    compiled = compile_model(model)
    runs = []
    for net, run in ((eager, eager), (model, compiled)):
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        losses = []
        for step, n in enumerate([2, 2, 1 + 2]):
            x, y = batch(params, n, seed=step)
            opt.zero_grad(set_to_none=True)
            loss = run(x, y).loss
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        runs.append(losses)
    torch.testing.assert_close(torch.stack(runs[1]), torch.stack(runs[0]), rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(eager.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
