// Checks of names, dtypes and shapes, and the slot layout computed from a schema. Used by the
// daemon before it changes anything, and by clients to fail early with the same message.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ipc/dtype.hpp"
#include "ipc/layout.hpp"
#include "ipc/result.hpp"

namespace loraflip::ipc {

struct TensorSpec {
  std::string name;
  int32_t dtype = 0;
  std::vector<int64_t> shape;
};

// [A-Za-z0-9._:-]{1,127}, starting with a letter or digit: safe in file names, ZeroMQ topics
// and Prometheus labels.
Status check_adapter_name(std::string_view name);
// 1..255 printable ASCII bytes without spaces, quotes or backslashes: PEFT names such as
// "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" pass unchanged.
Status check_tensor_name(std::string_view name);

// Bytes of one tensor; fails on an unknown dtype, a negative dimension, more than kMaxDims
// dimensions, or a product that overflows.
Result<uint64_t> tensor_bytes(int32_t dtype, const std::vector<int64_t> &shape);

struct SlotLayout {
  std::vector<uint64_t> offsets;  // per tensor, from the start of the slot
  uint64_t slot_bytes = 0;        // a multiple of kSlotAlign
};

// Places the tensors one after the other, each on a kTensorAlign boundary. Fails on an empty
// schema, a duplicate or bad name, a bad shape, or a total above max_slot_bytes.
Result<SlotLayout> plan_slot(const std::vector<TensorSpec> &tensors, uint64_t max_slot_bytes);

}  // namespace loraflip::ipc
