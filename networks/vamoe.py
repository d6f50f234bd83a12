"""The VA-MoE network: a ViT over the token grid whose feed-forward layers are channel MoEs.

Forward on a normalised state ``x`` of shape ``(B, C, H, W)`` (any ``H``, ``W``: the patch
embedding pads the state to a multiple of the patch size and the head crops it back, see
:mod:`networks.patch_embedding`):

1. tokens = PatchEmbed(x) + pos_embed, ``(B, N, D)`` with ``N = ceil(H/p) ceil(W/p)``;
2. recons = Head(tokens) -- the reconstruction branch, ``(B, C, H, W)``;
3. e = VariableEmbedding(P), ``(E, D)``, from the variable index matrix ``P`` (a buffer; only the
   channel-MoE network has it);
4. L blocks (windowed attention, global attention every ``global_attn_every``-th block);
5. forecast = Head(tokens), ``(B, C, H, W)``.

Given a target, the forward also returns the loss
``(1 - lambda) L_forecast(forecast, target) + lambda L_recons(recons, recons_target)``
(+ ``moe_aux_loss_weight`` x the load-balancing loss for the token-MoE ablation), so the trainer
and the evaluator share one code path.
"""

from dataclasses import dataclass, field

import torch
from timm.layers import trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from networks.block import Block
from networks.losses import LOSSES
from networks.patch_embedding import DecoderHead, PatchEmbed, padded_size
from networks.variable_embedding import VariableEmbedding
from utils.channels import ChannelLayout
from utils.grid import latitude_weights, latitudes

FFN_KINDS = {"channelmoe": "channelmoe", False: "mlp", "moe": "moe"}


@dataclass
class VAMoEOutput:
    """Forecast and reconstruction ``(B, C, H, W)``; ``loss`` (scalar) and its named terms when a
    target was given."""

    forecast: torch.Tensor
    recons: torch.Tensor
    loss: torch.Tensor | None = None
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class VAMoE(nn.Module):
    """VA-MoE for the channels of ``layout`` on an ``img_size`` grid (see module docstring).

    ``lat``: latitudes in degrees of the grid rows, ``(H,)``, for the latitude-weighted loss
    (``lat_weight_loss``; default: the cell-centre grid).
    """

    def __init__(
        self,
        layout: ChannelLayout,
        img_size=(128, 256),
        patch_size: int = 2,
        embed_dim: int = 768,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 2.0,
        window_size=(8, 8),
        global_attn_every: int = 3,
        expert_channels_divisor: int = 2,
        use_moe="channelmoe",
        num_experts: int | None = None,
        moe_topk_tokens: int = 2,
        moe_aux_loss_weight: float = 0.01,
        drop_path: float = 0.0,
        eps: float = 1e-6,
        moe_impl: str = "fast",
        loss: str = "trainl2",
        loss_weight: float = 0.1,
        recons_target: str = "input",
        lat_weight_loss: bool = False,
        checkpoint_blocks: bool = False,
        lat=None,
        attn_padding: str = "masked",
    ):
        super().__init__()
        if use_moe not in FFN_KINDS:
            raise ValueError(f"use_moe must be one of {list(FFN_KINDS)}, got {use_moe!r}")
        n_channels = layout.n_channels
        num_experts = layout.n_groups if num_experts is None else num_experts
        self.layout = layout
        self.img_size = tuple(img_size)
        padded = padded_size(self.img_size, patch_size)
        self.grid_size = (padded[0] // patch_size, padded[1] // patch_size)
        self.loss_weight = loss_weight
        self.recons_target = recons_target
        self.moe_aux_loss_weight = moe_aux_loss_weight
        self.checkpoint_blocks = checkpoint_blocks

        self.patch_embed = PatchEmbed(n_channels, embed_dim, patch_size)
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim)
        )
        self.register_buffer("index_matrix", layout.index_matrix(), persistent=False)
        # Only the channel MoE reads the variable embedding; the ablations have none.
        self.var_embed = (
            VariableEmbedding(n_channels, embed_dim) if use_moe == "channelmoe" else None
        )
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                self.grid_size,
                None if (i + 1) % global_attn_every == 0 else window_size,
                FFN_KINDS[use_moe],
                num_experts,
                expert_channels_divisor,
                mlp_ratio,
                moe_topk_tokens,
                drop_path=rates[i],
                eps=eps,
                moe_impl=moe_impl,
                attn_padding=attn_padding,
            )
            for i in range(depth)
        )
        self.head = DecoderHead(embed_dim, n_channels, patch_size, self.grid_size, self.img_size)
        if lat is None:
            lat = latitudes(img_size[0])
        if lat_weight_loss and len(lat) != img_size[0]:
            raise ValueError(f"{len(lat)} latitudes for a grid of {img_size[0]} rows")
        lat_w = latitude_weights(lat) if lat_weight_loss else None
        self.forecast_loss = LOSSES[loss](n_channels, lat_w)
        self.recons_loss = LOSSES[loss](n_channels, lat_w)
        self.reset_parameters()

    @classmethod
    def from_params(cls, params, lat=None) -> "VAMoE":
        """Build from a :class:`utils.YParams.YParams` configuration; ``lat`` (degrees, ``(H,)``,
        the dataset's latitudes) weights the loss when ``lat_weight_loss`` is set."""
        if params["t_in"] != 1:
            raise ValueError(
                f"config key 't_in' is {params['t_in']}; the vit network takes one "
                "input state (t_in: 1)"
            )
        return cls(
            params["layout"],
            img_size=(params["h_size"], params["w_size"]),
            patch_size=params["patch_size"],
            embed_dim=params["embed_dim"],
            depth=params["depth"],
            num_heads=params["num_heads"],
            mlp_ratio=params["mlp_ratio"],
            window_size=params["window_size"],
            global_attn_every=params["global_attn_every"],
            expert_channels_divisor=params["expert_channels_divisor"],
            use_moe=params["use_moe"],
            num_experts=params["num_experts"],
            moe_topk_tokens=params["moe_topk_tokens"],
            moe_aux_loss_weight=params["moe_aux_loss_weight"],
            drop_path=params["drop_path"],
            eps=params["layer_norm_eps"],
            moe_impl=params["moe_impl"],
            loss=params["loss"],
            loss_weight=params["loss_weight"],
            recons_target=params["recons_target"],
            lat_weight_loss=params["lat_weight_loss"],
            checkpoint_blocks=params["checkpoint_blocks"],
            lat=lat,
            attn_padding=params["attn_padding"],
        )

    def reset_parameters(self) -> None:
        """Linear weights ~ truncated normal (std 0.02), biases 0; LayerNorm 1 / 0; pos_embed ~
        truncated normal (std 0.02)."""
        trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder output (patch + position embedding): ``(B, C, H, W)`` -> ``(B, N, D)``."""
        return self.patch_embed(x) + self.pos_embed

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> VAMoEOutput:
        if x.shape[1:] != (self.layout.n_channels, *self.img_size):
            raise ValueError(
                f"expected input (B, {self.layout.n_channels}, {self.img_size[0]}, "
                f"{self.img_size[1]}), got {tuple(x.shape)}"
            )
        tokens = self.encode(x)
        recons = self.head(tokens)
        var_embed = (
            None if self.var_embed is None else self.var_embed(self.index_matrix.to(tokens.dtype))
        )
        aux = tokens.new_zeros((), dtype=torch.float32)
        for block in self.blocks:
            if self.checkpoint_blocks and self.training and torch.is_grad_enabled():
                tokens, block_aux = checkpoint(block, tokens, var_embed, use_reentrant=False)
            else:
                tokens, block_aux = block(tokens, var_embed)
            aux = aux + block_aux.float()
        forecast = self.head(tokens)
        out = VAMoEOutput(forecast, recons)
        if target is not None:
            recons_target = x if self.recons_target == "input" else target
            l_forecast = self.forecast_loss(forecast, target)
            l_recons = self.recons_loss(recons, recons_target)
            out.loss = (
                (1 - self.loss_weight) * l_forecast
                + self.loss_weight * l_recons
                + self.moe_aux_loss_weight * aux
            )
            out.terms = {
                "forecast": l_forecast.detach(),
                "recons": l_recons.detach(),
                "aux": aux.detach(),
            }
        return out
