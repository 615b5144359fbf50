"""Test adapters shaped like PEFT's get_peft_model_state_dict output, shared by the tests."""
import numpy as np

CONFIG = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def peft_state(seed=0, r=4, hidden=32, layers=2, dtype=np.float32):
    """q_proj and v_proj LoRA A/B for `layers` layers, under PEFT's names, random from `seed`."""
    rng = np.random.default_rng(seed)
    out = {}
    for layer in range(layers):
        for m in ("q_proj", "v_proj"):
            p = f"base_model.model.model.layers.{layer}.self_attn.{m}"
            out[f"{p}.lora_A.weight"] = rng.standard_normal((r, hidden)).astype(dtype)
            out[f"{p}.lora_B.weight"] = rng.standard_normal((hidden, r)).astype(dtype)
    return out
