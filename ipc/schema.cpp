#include "ipc/schema.hpp"

#include <unordered_set>

namespace loraflip::ipc {
namespace {

bool is_alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

std::string printable(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 64)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (s.size() > 64) out += "...";
  return out;
}

}  // namespace

Status check_adapter_name(std::string_view name) {
  if (name.empty()) return make_error(LF_E_INVALID_ARGUMENT, "adapter name is empty");
  if (name.size() > kMaxAdapterName)
    return make_error(LF_E_TOO_LARGE, "adapter name is longer than 127 bytes");
  if (!is_alnum(name[0]))
    return make_error(LF_E_INVALID_ARGUMENT,
                      "adapter name '" + printable(name) + "' must start with a letter or digit");
  for (char c : name) {
    if (!is_alnum(c) && c != '.' && c != '_' && c != '-' && c != ':')
      return make_error(LF_E_INVALID_ARGUMENT, "adapter name '" + printable(name) +
                                                   "' may hold only letters, digits and . _ - :");
  }
  return {};
}

Status check_tensor_name(std::string_view name) {
  if (name.empty()) return make_error(LF_E_INVALID_ARGUMENT, "tensor name is empty");
  if (name.size() > kMaxTensorName)
    return make_error(LF_E_TOO_LARGE, "tensor name is longer than 255 bytes");
  for (char c : name) {
    if (c <= 0x20 || c >= 0x7f || c == '"' || c == '\'' || c == '\\')
      return make_error(LF_E_INVALID_ARGUMENT,
                        "tensor name '" + printable(name) +
                            "' may hold only printable ASCII without spaces, quotes or '\\'");
  }
  return {};
}

Result<uint64_t> tensor_bytes(int32_t dtype, const std::vector<int64_t> &shape) {
  const uint64_t elem = dtype_size(dtype);
  if (elem == 0) return make_error(LF_E_INVALID_ARGUMENT, "unknown dtype " + std::to_string(dtype));
  if (shape.size() > kMaxDims)
    return make_error(LF_E_TOO_LARGE, "a tensor has more than " + std::to_string(kMaxDims) +
                                          " dimensions");
  uint64_t bytes = elem;
  for (int64_t d : shape) {
    if (d < 0) return make_error(LF_E_INVALID_ARGUMENT, "a dimension is negative");
    if (d != 0 && bytes > UINT64_MAX / static_cast<uint64_t>(d))
      return make_error(LF_E_TOO_LARGE, "a tensor's size overflows 64 bits");
    bytes *= static_cast<uint64_t>(d);
  }
  return bytes;
}

Result<SlotLayout> plan_slot(const std::vector<TensorSpec> &tensors, uint64_t max_slot_bytes) {
  if (tensors.empty()) return make_error(LF_E_INVALID_ARGUMENT, "the schema has no tensors");
  SlotLayout layout;
  layout.offsets.reserve(tensors.size());
  std::unordered_set<std::string_view> seen;
  uint64_t cursor = 0;
  for (const TensorSpec &t : tensors) {
    if (Status s = check_tensor_name(t.name); !s) return s.error();
    if (!seen.insert(t.name).second)
      return make_error(LF_E_INVALID_ARGUMENT, "tensor '" + t.name + "' appears twice");
    Result<uint64_t> bytes = tensor_bytes(t.dtype, t.shape);
    if (!bytes) return make_error(bytes.error().code, "tensor '" + t.name + "': " + bytes.error().message);
    // Both sums stay far from overflow: each term is checked against max_slot_bytes first.
    if (bytes.value() > max_slot_bytes || cursor > max_slot_bytes - bytes.value())
      return make_error(LF_E_TOO_LARGE, "the tensors need more than " +
                                            std::to_string(max_slot_bytes) + " bytes per slot");
    layout.offsets.push_back(cursor);
    cursor = align_up(cursor + bytes.value(), kTensorAlign);
  }
  if (cursor == 0)
    return make_error(LF_E_INVALID_ARGUMENT, "every tensor of the schema is empty");
  layout.slot_bytes = align_up(cursor, kSlotAlign);
  if (layout.slot_bytes > max_slot_bytes)
    return make_error(LF_E_TOO_LARGE, "the tensors need more than " +
                                          std::to_string(max_slot_bytes) + " bytes per slot");
  return layout;
}

}  // namespace loraflip::ipc
