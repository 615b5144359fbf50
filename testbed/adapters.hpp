// Adapters for the multi-process tests and the benchmarks: tensor names as PEFT writes them,
// LoRA tensor sets of a given size, and one call that creates an adapter from a tensor list.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "loraflip.h"

namespace loraflip::testbed {

// One 2-D tensor of an adapter's schema.
struct TensorShape {
  std::string name;
  int64_t shape[2];
  uint64_t nbytes;  // shape[0] x shape[1] x the dtype's size
  int dtype = LF_DTYPE_F16;
};

// "base_model.model.model.layers.<layer>.self_attn.<module>.lora_<A|B>.weight", the name PEFT
// gives a LoRA matrix of an attention projection (`module` is "q_proj", "k_proj", ...).
std::string peft_lora_name(int layer, const char *module, bool lora_b);

// The target modules of peft_attention_lora, as lf_spec_set_lora takes them.
inline constexpr const char *kAttentionModules = "q_proj,k_proj,v_proj,o_proj";

// An f16 LoRA adapter of the attention projections, in PEFT's order and names: for each of
// `layers` layers and each of q/k/v/o_proj, lora_A [rank, hidden] then lora_B [hidden, rank].
// Its bytes: layers x 8 x rank x hidden x 2.
std::vector<TensorShape> peft_attention_lora(int layers, int64_t rank, int64_t hidden);

// peft_attention_lora of exactly `mib` MiB at hidden size 4096 (a 7-8B model): the most layers
// (up to 32) whose rank is a whole number of at least 8, so that 32 MiB is 32 layers at r = 16.
// Each layer at rank r is r x 64 KiB, so every whole MiB count fits.
std::vector<TensorShape> peft_attention_lora_of_mib(uint64_t mib);

// What create_adapter makes; the defaults are those of a fresh lf_spec_t.
struct AdapterSpec {
  std::vector<TensorShape> tensors;
  int lora_rank = 0;  // 0: no LoRA config at all
  double lora_alpha = 0;
  std::string lora_targets = kAttentionModules;
  int history = -1;  // versions kept readable besides the active one; -1: the daemon's default
  std::string placement = "host";
};

// Creates adapter `name` through `client`: the status of the first call that failed (the
// client's lf_client_last_error tells why when it was the create itself), or LF_OK.
int create_adapter(lf_client_t *client, const std::string &name, const AdapterSpec &spec);

}  // namespace loraflip::testbed
