"""LoRA configs: what an adapter is created with, read from a dict or a PEFT LoraConfig, and the
PEFT adapter_config.json written back out by export()."""
from __future__ import annotations

import json
from collections.abc import Mapping

from . import _lib as L
from ._errors import InvalidArgument


def _jsonable(o):
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if hasattr(o, "value"):  # enums (PEFT's TaskType)
        return o.value
    return str(o)


def lora_config(config) -> dict:
    """r, lora_alpha, target_modules, use_rslora and the whole config (for metadata) from a
    dict or a PEFT LoraConfig-like object."""
    if isinstance(config, Mapping):
        full = dict(config)
    elif hasattr(config, "to_dict"):
        full = dict(config.to_dict())
    elif hasattr(config, "__dict__"):
        full = {k: v for k, v in vars(config).items() if not k.startswith("_")}
    else:
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT,
                              f"config must be a dict or a LoraConfig-like object, not {type(config).__name__}")
    get = (lambda k, d=None: full.get(k, getattr(config, k, d)))
    r = get("r", full.get("rank"))
    if r is None:
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, "the LoRA config needs r (the rank)")
    alpha = get("lora_alpha", full.get("alpha", 8))  # 8: PEFT's LoraConfig default
    tm = get("target_modules")
    if tm is None:
        modules = []
    elif isinstance(tm, str):
        modules = [tm]
    else:
        modules = sorted(tm) if isinstance(tm, (set, frozenset)) else list(tm)
    for m in modules:
        if not isinstance(m, str) or "," in m:
            raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, f"bad target module {m!r}")
    try:
        r, alpha = int(r), float(alpha)
    except (TypeError, ValueError):
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, f"bad r {r!r} or lora_alpha {alpha!r}") from None
    if r <= 0:
        raise InvalidArgument(L.LF_E_INVALID_ARGUMENT, f"r must be positive, not {r}")
    full.setdefault("peft_type", "LORA")
    full["r"], full["lora_alpha"], full["target_modules"] = r, alpha, modules
    return {"r": r, "lora_alpha": alpha, "target_modules": modules,
            "use_rslora": bool(get("use_rslora", False)),
            "metadata": json.dumps({"peft_config": full}, default=_jsonable)}


def peft_config(info: dict) -> dict:
    """The PEFT config of an adapter, from its info(): the one it was created with (kept in its
    metadata), else one rebuilt from the LoRA fields the daemon holds."""
    try:
        cfg = json.loads(info.get("metadata") or "{}").get("peft_config")
    except ValueError:
        cfg = None
    if not isinstance(cfg, dict):
        lora = info.get("lora", {})
        cfg = {"peft_type": "LORA", "r": lora.get("rank"), "lora_alpha": lora.get("alpha"),
               "target_modules": lora.get("target_modules"), "use_rslora": lora.get("use_rslora")}
    return cfg
