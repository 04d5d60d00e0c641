"""Model configs: the parsed YAML of configs/model/*.yaml, checked and completed with defaults."""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

ENCODER_DEFAULTS = {
    "edsr": {"n_resblocks": 16, "n_feats": 64, "res_scale": 1.0},
    "rdn": {"n_blocks": 16, "n_convs": 8, "growth": 64, "g0": 64},
}
DEFAULTS = {
    "name": "arasfsr",
    "encoder": {"name": "edsr"},
    "decoder": {"hidden": 256, "layers": 4},
    "local_frequency": {"enabled": True, "latent": 64, "token": 8, "width": 64},
    "global_coordinate": {"enabled": True, "n_freqs": 10},
    "scale_conditioning": True,
    "skip": True,
}


def merge_config(defaults: dict, given: dict, kind: str, where: str = "", free_form: frozenset = frozenset()) -> dict:
    """`given` merged over a deep copy of `defaults`; a key not in `defaults` raises ValueError naming the valid ones.

    `kind` names the config in messages ("model config"); `free_form` lists dotted keys whose mapping is taken
    as given (not checked against the defaults).

        >>> merge_config({"a": {"b": 1}}, {"a": {"b": 2}}, "demo config")
        {'a': {'b': 2}}
    """
    if not isinstance(given, dict):
        raise ValueError(f"{kind} {where.rstrip('.') or 'root'} must be a mapping, got {type(given).__name__}")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {kind} key(s) {', '.join(where + k for k in unknown)}; "
                         f"valid: {', '.join(where + k for k in sorted(defaults))}")
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        nested = isinstance(defaults[key], dict) and where + key not in free_form
        out[key] = merge_config(defaults[key], value, kind, f"{where}{key}.", free_form) if nested else value
    return out


def resolve_config(cfg: dict) -> dict:
    """Return `cfg` completed with defaults; unknown keys raise ValueError listing the valid ones."""
    encoder = dict((cfg or {}).get("encoder", {}))
    name = encoder.get("name", "edsr")
    if name not in ENCODER_DEFAULTS:
        raise ValueError(f"unknown encoder {name!r}; valid: {', '.join(ENCODER_DEFAULTS)}")
    defaults = copy.deepcopy(DEFAULTS)
    defaults["encoder"] = {"name": name, **ENCODER_DEFAULTS[name]}
    out = merge_config(defaults, cfg or {}, "model config")
    if out["decoder"]["layers"] < 1 or out["decoder"]["hidden"] < 1:
        raise ValueError("decoder.layers and decoder.hidden must be >= 1")
    return out


def load_config(path: str | Path) -> dict:
    """Read a configs/model/*.yaml file."""
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}
