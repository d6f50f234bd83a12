"""Checkpoints of the original code: built here from this project's model with the name table
applied in reverse, converted back by ``utils.training.original_checkpoint``."""

import os
import random
import re

import pytest
import torch

from networks.vamoe import VAMoE
from tools.convert_original_checkpoint import main
from utils.training.checkpoint import load_checkpoint, load_model
from utils.training.incremental import load_initial_stage
from utils.training.optimizer import build_optimizer
from utils.training.original_checkpoint import ConversionError, convert
from utils.YParams import YParams

CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "vamoe.yaml"
)

# This project's name -> the original's (the table, written out independently).
REVERSE_TABLE = (
    (r"var_embed\.mlp\.(.+)", r"posembedder.mlp.\1"),
    (r"blocks\.(\d+)\.ffn\.pos_proj\.(.+)", r"blocks.\1.moe.PosEmbedder.\2"),
    (r"blocks\.(\d+)\.ffn\.gate_proj\.(.+)", r"blocks.\1.moe.GateEmbedder.\2"),
    (
        r"blocks\.(\d+)\.ffn\.experts\.(\d+)\.w_(\w+)\.weight",
        r"blocks.\1.moe.experts.\2.\3_proj.weight",
    ),
    (
        r"blocks\.(\d+)\.ffn\.shared_expert\.w_(\w+)\.weight",
        r"blocks.\1.moe.shared_experts.\2_proj.weight",
    ),
    (r"blocks\.(\d+)\.ffn\.out_norm\.(.+)", r"blocks.\1.moe.norm.\2"),
    (r"blocks\.(\d+)\.ffn\.out_mlp\.(.+)", r"blocks.\1.moe.mlp.\2"),
    (r"head\.proj\.weight", r"head.weight"),
    (r"forecast_loss\.log_var", r"loss_gen.logvar"),
    (r"recons_loss\.log_var", r"loss_recons.logvar"),
)


def original_name(name):
    for pattern, target in REVERSE_TABLE:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, target, name)
    return name


def original_checkpoint(model, path, iters=37, epoch=3):
    """An original-format checkpoint of ``model``: DDP names, (1, C, 1, 1) log-variances, the
    tensors in a shuffled order, and an AdamW state over them in that order after one step."""
    names = list(model.state_dict())
    random.Random(0).shuffle(names)
    state = model.state_dict()
    model_state = {}
    for name in names:
        value = state[name].clone()
        if name.endswith("log_var"):
            value = value.view(1, -1, 1, 1)
        model_state["module." + original_name(name)] = value
    tensors = [v.clone().requires_grad_() for v in model_state.values()]
    optimizer = torch.optim.AdamW(tensors, lr=1.5e-4)
    for t in tensors:
        t.grad = torch.randn_like(t)
    optimizer.step()
    torch.save(
        {
            "model_state": model_state,
            "optimizer_state_dict": optimizer.state_dict(),
            "epoch": epoch,
            "iters": iters,
        },
        path,
    )
    return model_state, optimizer.state_dict()


@pytest.fixture(scope="module")
def initial(tmp_path_factory):
    """A random ``tiny_initial`` model, its original-format checkpoint and its conversion."""
    tmp = tmp_path_factory.mktemp("convert")
    params = YParams(CONFIG, "tiny_initial")
    torch.manual_seed(0)
    model = VAMoE.from_params(params).eval()
    with torch.no_grad():
        for p in model.parameters():  # log-variances and biases away from their zero init
            p.add_(0.01 * torch.randn_like(p))
    source, output = str(tmp / "orig.tar"), str(tmp / "converted.tar")
    model_state, opt_state = original_checkpoint(model, source)
    main(["--input", source, "--config", "tiny_initial", "--output", output, "--with_optimizer"])
    return params, model, source, output, model_state, opt_state


def test_converted_state_dict_and_forecast_are_bit_identical(initial):
    params, model, _, output, _, _ = initial
    ckpt = load_checkpoint(output)
    reference = model.state_dict()
    assert list(ckpt["model"]) and set(ckpt["model"]) == set(reference)
    for name, value in reference.items():
        assert ckpt["model"][name].dtype == value.dtype, name
        assert torch.equal(ckpt["model"][name], value), name
    assert ckpt["channel_names"] == params.layout.names
    assert ckpt["config_name"] == "tiny_initial"
    assert ckpt["params"]["embed_dim"] == params.embed_dim
    assert (ckpt["epoch"], ckpt["global_step"]) == (3, 37)
    converted = load_model(params, output, torch.device("cpu"))  # what inference.py loads
    x = torch.randn(2, params.layout.n_channels, params.h_size, params.w_size)
    with torch.no_grad():
        assert torch.equal(converted(x).forecast, model(x).forecast)


def test_optimizer_state_follows_the_names_and_resumes(initial):
    params, model, _, output, model_state, opt_state = initial
    ckpt = load_checkpoint(output)
    original_index = {n[len("module.") :]: i for i, n in enumerate(model_state)}
    optimizer = build_optimizer(model, params)  # built, then restored, as train.py does
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    assert scheduler.last_epoch == 37
    assert all(g["lr"] == pytest.approx(1.5e-4) for g in optimizer.param_groups)
    for name, p in model.named_parameters():
        ours = optimizer.state[p]
        theirs = opt_state["state"][original_index[original_name(name)]]
        assert torch.equal(ours["exp_avg"], theirs["exp_avg"].reshape(p.shape)), name
        assert torch.equal(ours["exp_avg_sq"], theirs["exp_avg_sq"].reshape(p.shape)), name
        assert float(ours["step"]) == 1.0


def test_converted_checkpoint_starts_the_incremental_stage(initial):
    _, model, _, output, _, _ = initial
    params = YParams(CONFIG, "tiny_incremental", [f"cl_ckpt_path={output}"])
    grown = VAMoE.from_params(params)
    load_initial_stage(grown, params)
    assert torch.equal(grown.blocks[1].attn.qkv.weight, model.blocks[1].attn.qkv.weight)
    assert torch.equal(
        grown.blocks[0].ffn.experts[2].w_up.weight, model.blocks[0].ffn.experts[2].w_up.weight
    )


@pytest.mark.parametrize(
    "damage,named",
    [
        ("drop", "blocks.1.moe.GateEmbedder.bias"),
        ("reshape", "blocks.2.moe.experts.4.down_proj.weight"),
        ("rename", "blocks.0.moe.extra.weight"),
    ],
)
def test_damaged_checkpoint_names_the_tensor(initial, tmp_path, capsys, damage, named):
    _, _, source, _, _, _ = initial
    ckpt = torch.load(source, weights_only=True)
    key = "module." + named
    if damage == "drop":
        del ckpt["model_state"][key]
    elif damage == "reshape":
        ckpt["model_state"][key] = ckpt["model_state"][key][:, :-1]
    else:
        ckpt["model_state"][key] = torch.zeros(3)
    bad, output = str(tmp_path / "bad.tar"), str(tmp_path / "out.tar")
    torch.save(ckpt, bad)
    params = YParams(CONFIG, "tiny_initial")
    with pytest.raises(ConversionError, match=re.escape(repr(named))) as err:
        convert(params, bad, output)
    assert str(err.value).count("tensor") == 1  # only the damaged one is reported
    assert not os.path.exists(output)
    with pytest.raises(SystemExit) as exit_info:
        main(["--input", bad, "--config", "tiny_initial", "--output", output])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.startswith("error: ") and bad in message and message.count("\n") == 1


def test_existing_output_is_kept_without_overwrite(initial, capsys):
    _, _, source, output, _, _ = initial
    before = os.path.getmtime(output), os.path.getsize(output)
    with pytest.raises(SystemExit) as exit_info:
        main(["--input", source, "--config", "tiny_initial", "--output", output])
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert (os.path.getmtime(output), os.path.getsize(output)) == before
