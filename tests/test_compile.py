"""torch.compile of every block kind, forward and backward: one graph each (no graph break, no
host synchronisation), the same numbers as eager, and no recompilation across an epoch with a
ragged last batch and evaluation batches.

The models are tiny (16 x 32 grid, D = 32, two blocks: one windowed, one global attention) so that
compiling stays cheap on a CPU. Graph counts use a backend that passes Dynamo's graph through
AOTAutograd, which traces the backward ahead of time, and counts the forward and backward graphs
it produces; they run as traced (ATen operations, no code generation). The numerical check of
the generated code compiles with the default backend (Inductor).
"""

import pytest
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

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
    # Block 0 attends in windows, block 1 globally; the fast channel MoE, windows divide the grid.
    "channelmoe_fast": [],
    # 8 x 16 token grid in 3 x 5 windows: windows padded and masked.
    "channelmoe_loop_padded_windows": ["moe_impl=loop", "window_size=[3, 5]"],
    "dense_mlp": ["use_moe=false"],
    "token_moe": ["use_moe=moe", "num_experts=4"],
    "checkpoint_blocks": ["checkpoint_blocks=true"],
}


def reads_tensor_values(node: torch.fx.Node) -> bool:
    """The ATen node needs a tensor's value on the host (a synchronisation on a GPU): ``.item()``
    (``_local_scalar_dense``) or an output whose shape depends on the data (``nonzero``, boolean
    masking), which the tracer represents by an unbacked symbol."""
    if node.op != "call_function":
        return False
    if node.target is torch.ops.aten._local_scalar_dense.default:
        return True
    return bool(free_unbacked_symbols(node.meta.get("val")))


class GraphCounter:
    """A ``torch.compile`` backend that counts the graphs Dynamo compiles and, through
    AOTAutograd, the forward and backward graphs compiled from them (an inference graph counts as
    a forward); the graphs run as traced. ``host_reads`` lists their nodes that read tensor
    values on the host. (Dynamo may hand a graph over twice: with ``dynamic=True`` AOTAutograd
    restarts its analysis once to specialise float constants such as a LayerNorm's eps; the
    attempt that raised is not a graph.)"""

    def __init__(self):
        self.graphs = self.forward = self.backward = 0
        self.host_reads: list[str] = []
        self._aot = aot_autograd(
            fw_compiler=self._compiler("forward"), bw_compiler=self._compiler("backward")
        )

    def __call__(self, gm, example_inputs):
        compiled = self._aot(gm, example_inputs)  # may raise to restart Dynamo's analysis
        self.graphs += 1
        return compiled

    def _compiler(self, kind: str):
        def compile_graph(gm: torch.fx.GraphModule, example_inputs):
            setattr(self, kind, getattr(self, kind) + 1)
            self.host_reads += [
                f"{kind}: {node.format_node()}"
                for node in gm.graph.nodes
                if reads_tensor_values(node)
            ]
            return make_boxed_func(gm.forward)

        return compile_graph

    def counts(self) -> tuple[int, int, int]:
        """(Dynamo graphs, forward graphs, backward graphs)."""
        return self.graphs, self.forward, self.backward


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Every test compiles from scratch (no cached graphs, no recompilation limit reached)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def small_model(overrides, seed=0):
    params = YParams(CONFIG, "tiny", SMALL + overrides)
    torch.manual_seed(seed)
    return VAMoE.from_params(params), params


def batch(params, n, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (n, params.layout.n_channels, params.h_size, params.w_size)
    return torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)


def gradients(model, run, x, y, seed=5) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of ``run(x, y)`` (training mode) and the gradients of ``model``'s parameters."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = run(x, y).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", list(KINDS))
def test_block_kind_compiles_forward_and_backward_to_one_graph_each_without_host_reads(kind):
    """The model with its loss, ``fullgraph=True``: Dynamo traces the forward and, ahead of time,
    the backward of custom autograd functions and tensor hooks, so a graph break in either raises.
    One Dynamo graph, one forward and one backward graph; no node of either reads a tensor value
    on the host; loss and gradients of the traced graphs equal eager (rtol 1e-4, atol 1e-7)."""
    model, params = small_model(KINDS[kind])
    backend = GraphCounter()
    compiled = compile_model(model, backend=backend, fullgraph=True)
    x, y = batch(params, 3, seed=1)
    loss, grads = gradients(model, compiled, x, y)
    assert backend.counts() == (1, 1, 1)
    assert backend.host_reads == []
    ref_loss, ref_grads = gradients(model, model, x, y)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)


def test_no_recompilation_across_an_epoch_and_evaluation():
    """Train batches of 4, 4 and a ragged 3, then evaluation batches of 4 and 2, twice over:
    one forward and one backward graph for training and one graph for evaluation, none after."""
    model, params = small_model([])
    backend = GraphCounter()
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
            counts.append(backend.counts())
        model.eval()
        with torch.no_grad():
            for n in [4, 2]:
                x, y = batch(params, n, seed=100 + n)
                assert torch.isfinite(compiled(x, y).loss)
                counts.append(backend.counts())
    assert counts == [(1, 1, 1)] * 3 + [(2, 2, 1)] * 7
    assert backend.host_reads == []


@pytest.mark.slow  # Inductor generates and compiles C++ kernels: about a minute on 2 cores
def test_inductor_gradients_and_training_steps_equal_eager():
    """The model of two blocks (windowed and global attention, fast channel MoE) compiled with
    Inductor and ``fullgraph=True`` against eager from the same weights: the loss and every
    gradient of one step (rtol 1e-4, atol 1e-7: the gradients are up to about 3e-3, the largest
    difference seen 7.5e-9), then the losses and weights after three AdamW steps (the last batch
    ragged; rtol 1e-4, atol 1e-5) agree: the compiled kernels fuse and reorder float32 sums."""
    eager, params = small_model([], seed=3)
    model, _ = small_model([], seed=3)
    compiled = compile_model(model, fullgraph=True)
    x, y = batch(params, 3, seed=7)
    loss, grads = gradients(model, compiled, x, y)
    ref_loss, ref_grads = gradients(eager, eager, x, y)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)

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
