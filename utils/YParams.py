"""Configuration: named sections of ``config/vamoe.yaml`` read with ruamel.yaml.

``YParams(path, name)`` loads one section (anchors and merge keys resolved), applies
``--set key=value`` overrides (values parsed as YAML), fills derived values and validates the whole
configuration, raising :class:`ConfigError` with the offending keys named.

A section lists only what it changes: ``base: <section>`` names the section it builds on (looked up
in the same file, then in the shipped ``config/vamoe.yaml``); without ``base`` the missing keys
come from ``full_field`` (the file's own, else the shipped one). A key that ``full_field`` of the
shipped file does not have is an error naming the closest valid key.

Derived value (never written in the YAML): ``layout`` (a :class:`utils.channels.ChannelLayout`).

Keys of the original code are accepted as aliases (in the YAML and in ``--set``) and renamed to
the names the code uses: ``num_blocks`` -> ``num_heads`` (it counts attention heads), ``topk`` ->
``expert_channels_divisor`` (each expert keeps ``embed_dim / topk`` channels) and ``num_exports``
-> ``num_experts``. ``nettype`` (the backbone, of which there is one) is accepted when it is
``vit`` and dropped.
"""

from __future__ import annotations

import datetime
import difflib
import io
import os
from collections.abc import Iterable
from typing import Any

from ruamel.yaml import YAML

from utils.atomic_io import atomic_write_text
from utils.channels import ERA5_LEVELS, ChannelLayout
from utils.errors import ConfigError
from utils.times import period_bounds

DERIVED_KEYS = ("layout",)
ALIASES = {
    "num_blocks": "num_heads",
    "topk": "expert_channels_divisor",
    "num_exports": "num_experts",
}
IGNORED_KEYS = {"nettype": "vit"}  # original keys with one allowed value: checked, then dropped
_CHOICES = {
    "use_moe": ("channelmoe", False, "moe"),
    "moe_impl": ("fast", "loop"),
    "loss": ("trainl2", "l2"),
    "recons_target": ("input", "target"),
    "amp_dtype": ("bf16", "fp16"),
    "loader_backend": ("threads", "processes"),
    "data_format": ("npy", "h5"),
    "attn_padding": ("masked", "original"),
}
_POSITIVE_INTS = (
    "h_size",
    "w_size",
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "expert_channels_divisor",
    "batch_size",
    "valid_batch_size",
    "eval_batch_size",
    "max_epochs",
    "t_in",
    "t_out_train",
    "t_out_valid",
    "t_out_test",
    "lead_time",
    "train_interval",
    "valid_interval",
    "test_interval",
    "global_attn_every",
    "keep_snapshots",
    "prefetch_factor",
)
_NON_NEGATIVE_INTS = (
    "num_data_workers",
    "checkpoint_every_steps",
    "snapshot_every_epochs",
    "log_every_steps",
    "seed",
)
_OPTIONAL_POSITIVE_INTS = ("max_steps_per_epoch", "max_valid_steps")
# Real-valued keys: (low, high, low included, high included); None leaves a side open.
_RANGES = {
    "lr": (0.0, None, False, False),
    "min_lr": (0.0, None, True, False),
    "weight_decay": (0.0, None, True, False),
    "clip_grad_norm": (0.0, None, False, True),
    "drop_path": (0.0, 1.0, True, False),
    "mlp_ratio": (0.0, None, False, False),
    "layer_norm_eps": (0.0, None, False, False),
    "moe_aux_loss_weight": (0.0, None, True, False),
    "loss_weight": (0.0, 1.0, True, True),
}
_FLAGS = ("allow_overlapping_periods", "allow_climatology_fallback")
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGHUP")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _range_problem(key: str, value, low, high, low_in: bool, high_in: bool) -> str | None:
    """A message when ``value`` is not a number inside the interval, else None."""
    inside = _is_number(value)
    if inside and low is not None:
        inside = value >= low if low_in else value > low
    if inside and high is not None:
        inside = value <= high if high_in else value < high
    if inside:
        return None
    interval = (
        f"{'[' if low_in else '('}{low if low is not None else '-inf'}, "
        f"{high if high is not None else 'inf'}{']' if high_in else ')'}"
    )
    return f"'{key}' must be a number in {interval}, got {value!r}"


def _plain(value: Any) -> Any:
    """ruamel's commented containers and scalar types to plain Python objects."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (datetime.date, datetime.datetime)):  # unquoted YAML dates
        return value.isoformat()
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def parse_yaml_value(text: str) -> Any:
    """Parse one ``--set`` value as YAML (``3`` -> int, ``[a, b]`` -> list, ``null`` -> None)."""
    return _plain(YAML(typ="safe").load(io.StringIO(text)))


SHIPPED_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "vamoe.yaml"
)
BASE_KEY = "base"
DEFAULT_SECTION = "full_field"


def _read_document(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    with open(path) as f:
        document = YAML(typ="safe").load(f)
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path!r} is not a mapping of named sections")
    return document


def resolve_aliases(section: dict, where: str) -> dict:
    """Rename the original code's keys (:data:`ALIASES`) and drop the checked :data:`IGNORED_KEYS`
    of a plain config dict, in place; ``where`` names it in errors."""
    for alias, key in ALIASES.items():
        if alias in section:  # wins over the key it names (which may come from a merge key)
            section[key] = section.pop(alias)
    for key, allowed in IGNORED_KEYS.items():
        if key in section and section.pop(key) != allowed:
            raise ConfigError(f"{where}: '{key}' must be {allowed!r} (the only one there is)")
    return section


def _resolve(path: str, document: dict, name: str, chain: tuple) -> dict:
    """Section ``name`` of ``document`` (read from ``path``) merged over its base section."""
    raw = document[name]
    if not isinstance(raw, dict):
        raise ConfigError(f"config section {name!r} in {path} is not a mapping of keys")
    section = resolve_aliases(_plain(raw), f"section {name!r} of {path}")
    base = section.pop(BASE_KEY, None)
    shipped_path = os.path.abspath(SHIPPED_CONFIG)
    if base is None and name == DEFAULT_SECTION and os.path.abspath(path) == shipped_path:
        return section
    base = DEFAULT_SECTION if base is None else str(base)
    if base in document and base != name:
        target_path, target = path, document
    else:
        target_path, target = shipped_path, _read_document(shipped_path)
        if base not in target:
            raise ConfigError(
                f"section {name!r} of {path}: base section {base!r} is neither in that file nor "
                f"in {SHIPPED_CONFIG}; sections there: {sorted(target)}"
            )
    link = (os.path.abspath(target_path), base)
    if link in chain:
        cycle = " -> ".join(n for _, n in chain + (link,))
        raise ConfigError(f"config sections build on each other in a cycle: {cycle}")
    return {**_resolve(target_path, target, base, chain + (link,)), **section}


def add_override_argument(parser) -> None:
    """The ``--set KEY=VALUE`` option (repeatable, values parsed as YAML) of every entry point;
    the values land in ``args.overrides`` for :class:`YParams`."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (parsed as YAML)",
    )


def closest_key_hint(key: str, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the valid key closest to ``key``, or an empty string."""
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def load_section(path: str, name: str) -> dict:
    """Read section ``name`` of the YAML file at ``path`` as a plain dict, completed from its
    ``base`` section or ``full_field`` (see the module docstring)."""
    document = _read_document(path)
    if name not in document:
        raise ConfigError(
            f"config section {name!r} not found in {path}; sections: {sorted(document)}"
        )
    section = _resolve(path, document, name, ((os.path.abspath(path), name),))
    shipped = _read_document(SHIPPED_CONFIG)
    valid = resolve_aliases(_plain(shipped[DEFAULT_SECTION]), SHIPPED_CONFIG)
    unknown = [k for k in section if k not in valid]
    if unknown:
        problems = [f"{k!r}{closest_key_hint(k, valid)}" for k in unknown]
        raise ConfigError(
            f"config section {name!r} of {path}: unknown key(s) {', '.join(problems)}; every key "
            "is listed in docs/configuration.md"
        )
    return section


class YParams:
    """One configuration section, readable as attributes (``p.embed_dim``) or items (``p["lr"]``).

    Args:
        yaml_filename: path of the YAML file.
        config_name: name of the section.
        overrides: ``key=value`` strings, values parsed as YAML; unknown keys are errors.
    """

    def __init__(
        self, yaml_filename: str, config_name: str, overrides: Iterable[str] | None = None
    ):
        self._yaml_filename = yaml_filename
        self._config_name = config_name
        self.params: dict = load_section(yaml_filename, config_name)
        self.apply_overrides(overrides or [])
        self.update_derived()

    @classmethod
    def from_dict(
        cls,
        section: dict,
        config_name: str,
        overrides: Iterable[str] | None = None,
        defaults: dict | None = None,
        source: str = "",
    ) -> YParams:
        """A configuration from a plain dict, e.g. the one a checkpoint records (``params``).

        ``defaults`` (e.g. the ``full_field`` section) fill the keys the dict lacks, such as keys
        added to the project after it was written; ``source`` names where the dict came from.
        """
        self = cls.__new__(cls)
        self._yaml_filename = source
        self._config_name = config_name
        where = f"configuration of {source or config_name!r}"
        merged = dict(defaults or {})
        merged.update(resolve_aliases(_plain(dict(section)), where))
        self.params = merged
        self.apply_overrides(overrides or [])
        self.update_derived()
        return self

    # -- access -------------------------------------------------------------------------------
    def __getattr__(self, key: str):
        if key.startswith("_") or key == "params":
            raise AttributeError(key)
        try:
            return self.params[key]
        except KeyError:
            raise AttributeError(
                f"config section {self._config_name!r} has no key {key!r}"
            ) from None

    def __getitem__(self, key: str):
        if key not in self.params:
            raise KeyError(f"config section {self._config_name!r} has no key {key!r}")
        return self.params[key]

    def __setitem__(self, key: str, value) -> None:
        self.params[key] = value

    def __contains__(self, key: str) -> bool:
        return key in self.params

    def get(self, key: str, default=None):
        return self.params.get(key, default)

    @property
    def config_name(self) -> str:
        return self._config_name

    # -- overrides and derived values ----------------------------------------------------------
    def apply_overrides(self, overrides: Iterable[str]) -> None:
        """Apply ``key=value`` strings; the key must exist in the section."""
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"--set expects key=value, got {item!r}")
            key, text = item.split("=", 1)
            key = ALIASES.get(key.strip(), key.strip())
            if key not in self.params or key in DERIVED_KEYS:
                valid = [k for k in self.params if k not in DERIVED_KEYS]
                raise ConfigError(
                    f"--set {item!r}: unknown config key {key!r} in section "
                    f"{self._config_name!r}{closest_key_hint(key, valid)}"
                )
            self.params[key] = parse_yaml_value(text)

    def update_derived(self) -> None:
        """Recompute derived values and validate; call after changing variable lists."""
        validate(self.params, self._config_name)
        layout = ChannelLayout.from_params(self.params)
        self.params["layout"] = layout
        if self.params.get("cl_ckpt_path") is not None or self.params.get("old_higher_features"):
            validate_incremental(self.params, layout)

    def to_dict(self) -> dict:
        """The resolved configuration without derived objects (for ``hyperparams.yaml``)."""
        return {k: v for k, v in self.params.items() if k not in DERIVED_KEYS}

    def dump(self, path: str) -> None:
        """Write the resolved section as YAML (atomically)."""
        yaml = YAML()
        yaml.default_flow_style = None
        text = io.StringIO()
        yaml.dump({self._config_name: self.to_dict()}, text)
        atomic_write_text(path, text.getvalue())


def validate(params: dict, section: str = "") -> None:
    """Raise :class:`ConfigError` naming the keys of any inconsistent setting.

    Every problem is reported in one error, in two rounds: the type and range of each key, then
    (when those hold) how the keys fit together."""
    where = f" (section {section!r})" if section else ""
    _raise_problems(_type_problems(params) + _numeric_problems(params), where)
    try:
        layout = ChannelLayout.from_params(params)
    except (ValueError, KeyError) as err:
        raise ConfigError(f"invalid config{where}: {err}") from None
    _raise_problems(
        _level_problems(layout)
        + _shape_problems(params)
        + _expert_problems(params, layout)
        + _period_problems(params)
        + _step_problems(params),
        where,
    )


def _raise_problems(problems: list[str], where: str) -> None:
    if problems:
        raise ConfigError("invalid config" + where + ": " + "; ".join(problems))


def _type_problems(params: dict) -> list[str]:
    """Keys with a fixed set of choices, and the integer keys (positive, >= 0, positive or null)."""
    problems = []
    for key, choices in _CHOICES.items():
        if key in params and params[key] not in choices:
            problems.append(f"'{key}' is {params[key]!r}; expected one of {list(choices)}")
    for key in _POSITIVE_INTS:
        if key in params and not (_is_int(params[key]) and params[key] > 0):
            problems.append(f"'{key}' must be a positive integer, got {params[key]!r}")
    for key in _NON_NEGATIVE_INTS:
        if key in params and not (_is_int(params[key]) and params[key] >= 0):
            problems.append(f"'{key}' must be an integer >= 0, got {params[key]!r}")
    for key in _OPTIONAL_POSITIVE_INTS:
        value = params.get(key)
        if value is not None and not (_is_int(value) and value > 0):
            problems.append(f"'{key}' must be a positive integer or null, got {value!r}")
    return problems


def _level_problems(layout: ChannelLayout) -> list[str]:
    bad_levels = [p for p in layout.pressure_level if p not in ERA5_LEVELS]
    if bad_levels:
        return [f"'pressure_level' has {bad_levels}, which are not ERA5 levels {ERA5_LEVELS}"]
    return []


def _shape_problems(params: dict) -> list[str]:
    """The embedding splits into the attention heads (and the experts' channel shares); the
    attention window is two positive integers."""
    problems = []
    d = params["embed_dim"]
    if d % params["num_heads"]:
        problems.append(
            f"'embed_dim' ({d}) is not divisible by 'num_heads' ({params['num_heads']})"
        )
    divisor = params["expert_channels_divisor"]
    if params.get("use_moe") == "channelmoe" and d % divisor:
        problems.append(
            f"'embed_dim' ({d}) is not divisible by 'expert_channels_divisor' ({divisor})"
        )
    window = params.get("window_size")
    if not (
        isinstance(window, list)
        and len(window) == 2
        and all(isinstance(w, int) and w > 0 for w in window)
    ):
        problems.append(f"'window_size' must be two positive integers, got {window!r}")
    return problems


def _expert_problems(params: dict, layout: ChannelLayout) -> list[str]:
    """The channel MoE has one expert per variable group; the token MoE's top-k fits its experts."""
    problems = []
    experts = params.get("num_experts")
    if params.get("use_moe") == "channelmoe" and experts != layout.n_groups:
        problems.append(
            f"'num_experts' ({experts}) must equal the number of variable groups "
            f"({layout.n_groups}: {layout.group_names}) derived from 'higher_features' and "
            f"'surface_features'"
        )
    if params.get("use_moe") == "moe":
        if not isinstance(experts, int) or experts < 1:
            problems.append(f"'num_experts' must be a positive integer, got {experts!r}")
        elif not 1 <= params.get("moe_topk_tokens", 1) <= experts:
            problems.append(
                f"'moe_topk_tokens' ({params.get('moe_topk_tokens')}) must be between "
                f"1 and 'num_experts' ({experts})"
            )
    return problems


def _step_problems(params: dict) -> list[str]:
    """The sample intervals and the lead time divide one another; with a ``data_step``, each is
    a multiple of it."""
    problems = []
    for key in ("train_interval", "valid_interval", "test_interval"):
        if (
            key in params
            and isinstance(params[key], int)
            and params[key] % params["lead_time"]
            and params["lead_time"] % params[key]
        ):
            problems.append(
                f"'{key}' ({params[key]}) and 'lead_time' ({params['lead_time']}) "
                "must divide one another"
            )
    step = params.get("data_step")
    if step is not None and not (_is_int(step) and step > 0):
        problems.append(f"'data_step' must be null or a positive integer (hours), got {step!r}")
    elif step:
        for key in ("lead_time", "train_interval", "valid_interval", "test_interval"):
            if isinstance(params.get(key), int) and params[key] % step:
                problems.append(
                    f"'{key}' ({params[key]}) is not a multiple of 'data_step' ({step})"
                )
    return problems


def _numeric_problems(params: dict) -> list[str]:
    """Range checks of the real-valued keys, the optimiser's betas, flags and stop signals."""
    problems = []
    for key, bounds in _RANGES.items():
        if key in params:
            problem = _range_problem(key, params[key], *bounds)
            if problem:
                problems.append(problem)
    lr, min_lr = params.get("lr"), params.get("min_lr")
    if _is_number(lr) and _is_number(min_lr) and min_lr > lr:
        problems.append(f"'min_lr' ({min_lr}) must not exceed 'lr' ({lr})")
    betas = params.get("betas")
    if "betas" in params and not (
        isinstance(betas, list)
        and len(betas) == 2
        and all(_is_number(b) and 0.0 <= b < 1.0 for b in betas)
    ):
        problems.append(f"'betas' must be two numbers in [0, 1), got {betas!r}")
    for key in _FLAGS:
        if key in params and not isinstance(params[key], bool):
            problems.append(f"'{key}' must be true or false, got {params[key]!r}")
    signals = params.get("stop_signals")
    if "stop_signals" in params and not (
        isinstance(signals, list) and all(s in STOP_SIGNALS for s in signals)
    ):
        problems.append(f"'stop_signals' must be a list of {list(STOP_SIGNALS)}, got {signals!r}")
    return problems


def _period_problems(params: dict) -> list[str]:
    """Each period must parse; the training period may not overlap the validation or test
    period (samples seen in training would be scored) unless ``allow_overlapping_periods``."""
    problems, bounds = [], {}
    for key in ("train_period", "valid_period", "test_period"):
        value = params.get(key)
        if not (isinstance(value, list) and len(value) == 2):
            problems.append(f"'{key}' must be [start_date, end_date], got {value!r}")
            continue
        try:
            bounds[key] = period_bounds(value)
        except ValueError as err:
            problems.append(f"'{key}': {err}")
    if not params.get("allow_overlapping_periods", False) and "train_period" in bounds:
        first, last = bounds["train_period"]
        for key in ("valid_period", "test_period"):
            if key in bounds and bounds[key][0] <= last and first <= bounds[key][1]:
                problems.append(
                    f"'train_period' {params['train_period']} overlaps '{key}' "
                    f"{params[key]} (set allow_overlapping_periods: true if intended)"
                )
    return problems


def validate_incremental(params: dict, layout: ChannelLayout) -> None:
    """The old variable set of an incremental section must exist and be a subset of the new one."""
    missing = [
        k
        for k in ("old_higher_features", "old_pressure_level", "old_surface_features")
        if params.get(k) is None
    ]
    if missing:
        raise ConfigError(f"incremental config (cl_ckpt_path set) lacks {missing}")
    try:
        old = ChannelLayout.from_params(params, prefix="old_")
    except (ValueError, KeyError) as err:
        raise ConfigError(f"invalid old variable set: {err}") from None
    unmatched = [c.name for c in old.channels if c not in layout]
    if unmatched:
        raise ConfigError(
            f"old variables {unmatched} (from 'old_higher_features', 'old_pressure_level', "
            f"'old_surface_features') are not in the new variable set {layout.names}"
        )
