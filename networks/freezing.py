"""Freezing policy of the incremental stage: parameter-name patterns from the config.

Patterns are ``fnmatch`` patterns over ``model.named_parameters()`` names (``*`` also matches
dots). The placeholder ``{old_experts}`` expands to the index of every expert whose variable group
exists in the old variable set (``old_higher_features`` / ``old_surface_features``), located in
the *new* model's expert order, so ``blocks.*.ffn.experts.{old_experts}.*`` freezes exactly the
old variables' experts wherever the new groups put them.
"""

from collections.abc import Iterable
from fnmatch import fnmatchcase

from torch import nn

from utils.channels import ChannelLayout
from utils.errors import ConfigError

OLD_EXPERTS = "{old_experts}"


def old_expert_indices(params) -> list[int]:
    """Indices, in the new model, of the experts whose variable group the old model had."""
    new_groups = params["layout"].group_names
    old_groups = ChannelLayout.from_params(params, prefix="old_").group_names
    return [new_groups.index(g) for g in old_groups]


def expand_freeze_patterns(patterns: Iterable[str], params) -> list[str]:
    """Replace ``{old_experts}`` in each pattern by every old expert index."""
    expanded = []
    for pattern in patterns:
        if OLD_EXPERTS in pattern:
            expanded += [pattern.replace(OLD_EXPERTS, str(i)) for i in old_expert_indices(params)]
        else:
            expanded.append(pattern)
    return expanded


def apply_freeze(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Set ``requires_grad=False`` on every parameter matching a pattern; returns their names.

    A pattern that matches no parameter is an error naming it (a typo would silently train
    what the user meant to freeze).
    """
    patterns = list(patterns)
    names = [n for n, _ in model.named_parameters()]
    unused = [p for p in patterns if not any(fnmatchcase(n, p) for n in names)]
    if unused:
        raise ConfigError(f"config key 'freeze': patterns {unused} match no parameter of the model")
    frozen = []
    for name, param in model.named_parameters():
        if any(fnmatchcase(name, p) for p in patterns):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def freeze_from_params(model: nn.Module, params) -> list[str]:
    """Apply the section's ``freeze`` patterns (expanded) to ``model``; returns frozen names."""
    patterns = params.get("freeze") or []
    if not patterns:
        return []
    return apply_freeze(model, expand_freeze_patterns(patterns, params))
