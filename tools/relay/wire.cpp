#include "tools/relay/wire.hpp"

#include "ipc/schema.hpp"
#include "loraflip.h"

namespace loraflip::relay::wire {

namespace {

// A slot image bigger than this is refused on both sides: the follower holds one image in
// memory per transfer. 64 GiB: far above any LoRA adapter (a 70B model at rank 256 is ~2 GiB).
constexpr uint64_t kMaxSlotBytes = uint64_t{64} << 30;

Status bad(const std::string &message) { return make_error(LF_E_INVALID_ARGUMENT, message); }

}  // namespace

Status check(const Want &w) {
  if (w.protocol < kOldestRelayProtocol || w.protocol > kRelayProtocol)
    return make_error(LF_E_PROTOCOL_VERSION, "relay protocol " + std::to_string(w.protocol) +
                                                 " asked; this upstream speaks " +
                                                 std::to_string(kOldestRelayProtocol) + " to " +
                                                 std::to_string(kRelayProtocol));
  if (w.adapters.size() > kMaxWanted) return make_error(LF_E_TOO_LARGE, "too many adapters");
  if (w.wait_ms > kMaxWaitMs)
    return bad("wait_ms above " + std::to_string(kMaxWaitMs));
  for (const Have &h : w.adapters) {
    if (Status s = ipc::check_adapter_name(h.name); !s) return s;
    if (h.after > ipc::kMaxVersion) return bad("'after' above the largest version");
    if (h.active.value_or(0) > ipc::kMaxVersion) return bad("'active' above the largest version");
    if (h.stuck.value_or(0) > ipc::kMaxVersion) return bad("'stuck' above the largest version");
  }
  return {};
}

Status check(const Fetch &f) {
  if (Status s = ipc::check_adapter_name(f.name); !s) return s;
  if (f.bytes < 1 || f.bytes > kMaxChunkBytes)
    return make_error(LF_E_TOO_LARGE, "a chunk is 1.." + std::to_string(kMaxChunkBytes) + " bytes");
  if (f.offset > kMaxSlotBytes) return bad("offset past any slot");
  return {};
}

Status check(const Offer &o) {
  if (Status s = ipc::check_adapter_name(o.name); !s) return s;
  if (o.version < 1 || o.version > ipc::kMaxVersion) return bad("offer of version 0 or past 2^40");
  // Not 0: a follower keeps 0 for "no incarnation known".
  if (o.incarnation < 1) return bad("offer without an incarnation");
  if (o.slot_bytes < 1 || o.slot_bytes > kMaxSlotBytes) return bad("offer of a slot size out of range");
  if (o.slots < 2 || o.slots > ipc::kMaxSlots || o.history + 1 >= o.slots)
    return bad("offer of a slot ring the daemon would not make");
  // The follower writes the upstream's slot image as it is, so its own daemon must lay the
  // same schema out the same way: the layout is recomputed here, and compared again with the
  // local adapter's before any byte is written.
  std::vector<ipc::TensorSpec> specs;
  specs.reserve(o.tensors.size());
  for (const ipc::msg::InfoTensor &t : o.tensors) specs.push_back({t.name, t.dtype.code, t.shape});
  Result<ipc::SlotLayout> layout = ipc::plan_slot(specs, kMaxSlotBytes);
  if (!layout) return layout.error();
  if (layout->slot_bytes != o.slot_bytes) return bad("offer's slot size disagrees with its tensors");
  for (size_t i = 0; i < o.tensors.size(); ++i)
    if (layout->offsets[i] != o.tensors[i].offset) return bad("offer's tensor offsets disagree with its schema");
  return {};
}

}  // namespace loraflip::relay::wire
