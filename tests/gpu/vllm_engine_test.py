#!/usr/bin/env python3
"""vLLM end to end on a GPU: a real engine (LLM(..., enable_lora=True), a tiny random Llama)
serves loraflip versions through the plugin, which vLLM loads from its entry point in its own
processes (the engine core included), and follows a flip between two generate calls.

  - v1 of a host-placed adapter and the same weights placed on the GPU generate exactly what
    vLLM generates from a PEFT folder on disk holding those weights (greedy, token for token);
  - after a flip to v2 the Follower's next request is v2, whose output is the disk folder's
    of v2 and differs from v1's; v1 is removed from the engine (keep=1).

Exits 77 (meson: skipped) with the reason where no CUDA GPU or no vLLM is usable."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "client" / "python"))
sys.path.insert(0, str(REPO / "tests" / "python"))


def skip(reason: str) -> None:
    print(f"skipped: {reason}")
    sys.exit(77)


try:
    import torch
except ImportError:
    skip("needs torch (scripts/setup installs it)")
if not torch.cuda.is_available():
    skip("needs a CUDA GPU (torch.cuda.is_available() is False)")
try:
    import vllm  # noqa: F401
except ImportError:
    skip("needs vllm (scripts/setup installs it)")

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, VOCAB, RANK = 256, 512, 2, 4, 2, 512, 8
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_CONFIG = {"peft_type": "LORA", "r": RANK, "lora_alpha": 16, "target_modules": MODULES,
               "bias": "none"}


def tiny_model(where: Path) -> None:
    """A random 2-layer Llama saved as a checkpoint vLLM loads (no tokenizer: prompts are ids)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                         vocab_size=VOCAB, max_position_embeddings=256, torch_dtype="bfloat16")
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(where)


def adapter(seed: int) -> dict:
    """A PEFT state dict large enough to change what the model generates."""
    g = torch.Generator().manual_seed(seed)
    head = HIDDEN // HEADS
    out_features = {"q_proj": HIDDEN, "k_proj": KV_HEADS * head, "v_proj": KV_HEADS * head,
                    "o_proj": HIDDEN, "gate_proj": FFN, "up_proj": FFN, "down_proj": HIDDEN}
    tensors = {}
    for layer in range(LAYERS):
        for m, n_out in out_features.items():
            n_in = FFN if m == "down_proj" else HIDDEN
            part = "mlp" if m in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            prefix = f"base_model.model.model.layers.{layer}.{part}.{m}"
            tensors[f"{prefix}.lora_A.weight"] = (torch.randn(RANK, n_in, generator=g) * 0.5).bfloat16()
            tensors[f"{prefix}.lora_B.weight"] = (torch.randn(n_out, RANK, generator=g) * 0.5).bfloat16()
    return tensors


def peft_folder(where: Path, tensors: dict) -> str:
    from safetensors.torch import save_file
    where.mkdir(parents=True)
    save_file(tensors, str(where / "adapter_model.safetensors"))
    (where / "adapter_config.json").write_text(json.dumps(LORA_CONFIG))
    return str(where)


def main() -> int:
    from conftest import Daemon
    from plugin_dist import install_entry_points
    root = Path(tempfile.mkdtemp(prefix="lf-vllm-"))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [install_entry_points(root / "site"), str(REPO / "client" / "python"),
         os.environ.get("PYTHONPATH", "")])
    daemon = Daemon("vllm", arena="256M", extra=["--devices", "0"]).start()
    os.environ["LORAFLIP_RUNTIME_DIR"] = daemon.dir
    try:
        import loraflip
        import loraflip.vllm as lv
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
        tiny_model(root / "model")
        client = loraflip.Client(daemon.dir)
        v1, v2 = adapter(1), adapter(2)
        client.publish("policy", v1, config=LORA_CONFIG)
        client.publish("policy-gpu", v1, config=LORA_CONFIG, placement="cuda:0")
        llm = LLM(model=str(root / "model"), skip_tokenizer_init=True, enable_lora=True,
                  max_lora_rank=RANK, max_loras=2, dtype="bfloat16", enforce_eager=True,
                  max_model_len=128, gpu_memory_utilization=0.2, seed=0)
        prompts = [{"prompt_token_ids": [1, 17, 42, 99, 7]}]
        params = SamplingParams(temperature=0.0, max_tokens=12, detokenize=False)

        def generate(lora):
            return list(llm.generate(prompts, params, lora_request=lora)[0].outputs[0].token_ids)

        disk1 = generate(LoRARequest("disk-1", 1001, peft_folder(root / "v1", v1)))
        disk2 = generate(LoRARequest("disk-2", 1002, peft_folder(root / "v2", v2)))
        base = generate(None)
        assert disk1 != base and disk1 != disk2, "the adapters do not change the output"

        follow = lv.Follower(llm, "policy", keep=1, runtime_dir=daemon.dir, client=client)
        first = follow.request()
        assert first.lora_name == "policy@1"
        got = generate(first)
        assert got == disk1, f"loraflip v1 {got} != the disk folder's {disk1}"
        on_gpu = generate(lv.request("policy-gpu", 1, runtime_dir=daemon.dir, client=client))
        assert on_gpu == disk1, f"the GPU-placed v1 {on_gpu} != the disk folder's {disk1}"

        client.publish("policy", v2, config=LORA_CONFIG)  # the flip, between two generates
        second = follow.request()
        assert second.lora_name == "policy@2"
        got2 = generate(second)
        assert got2 == disk2 and got2 != got, f"after the flip: {got2}, disk v2 {disk2}"
        assert first.lora_int_id not in llm.llm_engine.list_loras(), "v1 still loaded"
        print("vllm engine: v1 (host and GPU placed) and v2 after a flip match the disk folders")
        return 0
    finally:
        daemon.stop()


if __name__ == "__main__":
    sys.exit(main())
