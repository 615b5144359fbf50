"""Tiny transformers + PEFT models built from a config with random weights (nothing is
downloaded), and adapter weights that are a pure function of a version number, so a process
can tell which version a model must have produced its output with."""
from __future__ import annotations

import os

# Nothing is downloaded: a test that would reach for the Hub fails instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

TARGETS = ["q_proj", "v_proj"]
PROMPT = [[1, 5, 9, 13, 17, 21]]
NEW_TOKENS = 6


def llama_config() -> LlamaConfig:
    return LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=64)


def lora_config(r: int = 8, alpha: float = 16, targets=None, **kwargs) -> LoraConfig:
    return LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets or TARGETS),
                      lora_dropout=0.0, **kwargs)


def base_model(dtype=torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(0)  # the same base weights in every process
    return LlamaForCausalLM(llama_config()).to(dtype).eval()


def peft_model(config: LoraConfig | None = None, dtype=torch.float32):
    return get_peft_model(base_model(dtype), config or lora_config()).eval()


def version_weights(version: int, model, dtype=None) -> dict[str, torch.Tensor]:
    """The adapter weights of `version`: seeded by the version number, shaped as `model`'s."""
    g = torch.Generator().manual_seed(1000 + version)
    out = {}
    for name, t in get_peft_model_state_dict(model).items():
        out[name] = (torch.randn(t.shape, generator=g) * 0.3).to(dtype or t.dtype)
    return out


def generate(model, prompt=None) -> torch.Tensor:
    ids = torch.tensor(prompt or PROMPT)
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                              max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                              do_sample=False, pad_token_id=0)


def word_tokenizer():
    """A word-level tokenizer over the tiny vocabulary ("w0" .. "w127"), built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {f"w{i}": i for i in range(llama_config().vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="w0", eos_token="w2",
                                   unk_token="w0")
