#include "testbed/adapters.hpp"

namespace loraflip::testbed {

std::string peft_lora_name(int layer, const char *module, bool lora_b) {
  return "base_model.model.model.layers." + std::to_string(layer) + ".self_attn." + module +
         (lora_b ? ".lora_B.weight" : ".lora_A.weight");
}

std::vector<TensorShape> peft_attention_lora(int layers, int64_t rank, int64_t hidden) {
  std::vector<TensorShape> out;
  for (int l = 0; l < layers; ++l)
    for (const char *m : {"q_proj", "k_proj", "v_proj", "o_proj"})
      for (const bool b : {false, true}) {
        TensorShape t;
        t.name = peft_lora_name(l, m, b);
        t.shape[0] = b ? hidden : rank;
        t.shape[1] = b ? rank : hidden;
        t.nbytes = uint64_t(rank) * uint64_t(hidden) * 2;
        t.dtype = LF_DTYPE_F16;
        out.push_back(t);
      }
  return out;
}

std::vector<TensorShape> peft_attention_lora_of_mib(uint64_t mib) {
  constexpr int64_t kHidden = 4096;
  const uint64_t units = mib * 16;  // 64 KiB units: one layer at rank 1
  uint64_t layers = 1;
  for (uint64_t l : {32, 16, 8, 4, 2, 1})
    if (units % l == 0 && (units / l >= 8 || l == 1)) {
      layers = l;
      break;
    }
  return peft_attention_lora(int(layers), int64_t(units / layers), kHidden);
}

int create_adapter(lf_client_t *client, const std::string &name, const AdapterSpec &spec) {
  lf_spec_t *s = nullptr;
  int rc = lf_spec_new(&s);
  for (size_t i = 0; i < spec.tensors.size() && rc == LF_OK; ++i) {
    const TensorShape &t = spec.tensors[i];
    rc = lf_spec_add_tensor(s, t.name.c_str(), t.dtype, 2, t.shape);
  }
  if (rc == LF_OK && spec.lora_rank > 0)
    rc = lf_spec_set_lora(s, spec.lora_rank, spec.lora_alpha, spec.lora_targets.c_str(), 0);
  if (rc == LF_OK) rc = lf_spec_set_slots(s, 0, spec.history);  // 0 slots: history + 2
  if (rc == LF_OK) rc = lf_spec_set_placement(s, spec.placement.c_str());
  if (rc == LF_OK) rc = lf_client_create_adapter(client, name.c_str(), s);
  lf_spec_free(s);
  return rc;
}

}  // namespace loraflip::testbed
