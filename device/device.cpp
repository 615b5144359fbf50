// What both implementations share: the bounded wait on an event, the argument checks of
// check_slot.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "device/device.hpp"
#include "device/slot_check.hpp"
#include "ipc/dtype.hpp"
#include "kernels/validate.hpp"

namespace loraflip::device {

Status wait_event(Backend &backend, Event &event, int timeout_ms) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::milliseconds(std::max(timeout_ms, 0));
  // Start by spinning briefly (a record usually completes within microseconds of a copy), then
  // back off to 1 ms so that a long wait costs little CPU.
  auto pause = std::chrono::microseconds(20);
  for (;;) {
    auto done = backend.query(event);
    if (!done.ok()) return done.error();
    if (done.value()) return {};
    const auto now = Clock::now();
    if (now >= deadline)
      return make_error(LF_E_TIMEOUT, "the event was still pending after " +
                                          std::to_string(timeout_ms) +
                                          " ms (its writer may be slow, stuck or dead)");
    std::this_thread::sleep_for(std::min<Clock::duration>(pause, deadline - now));
    pause = std::min(pause * 2, std::chrono::microseconds(1000));
  }
}

SlotCheck check_slot_cpu(const std::byte *slot, uint64_t bytes,
                         std::span<const TensorExtent> tensors, unsigned checks) {
  SlotCheck out;
  if (checks & kCheckFinite) {
    for (size_t t = 0; t < tensors.size(); ++t) {
      const TensorExtent &e = tensors[t];
      const size_t elem = ipc::dtype_size(e.dtype);
      const int64_t bad = kernels::first_non_finite(slot + e.offset, e.bytes / elem, e.dtype);
      if (bad < 0) continue;
      out.tensor = static_cast<int64_t>(t);
      out.element = bad;
      // Little-endian host: the element's bytes are the low bytes of the word.
      std::memcpy(&out.bits, slot + e.offset + static_cast<uint64_t>(bad) * elem, elem);
      break;
    }
  }
  if (checks & kCheckChecksum) out.checksum = kernels::checksum(slot, bytes);
  return out;
}

namespace detail {

Status check_slot_arguments(const std::byte *slot, uint64_t bytes,
                            std::span<const TensorExtent> tensors, unsigned checks) {
  auto invalid = [](std::string message) {
    return make_error(LF_E_INVALID_ARGUMENT, std::move(message));
  };
  if ((checks & ~(kCheckFinite | kCheckChecksum)) != 0)
    return invalid("unknown slot checks " + std::to_string(checks));
  if (slot == nullptr && bytes != 0) return invalid("a null slot pointer");
  for (size_t t = 0; t < tensors.size(); ++t) {
    const TensorExtent &e = tensors[t];
    const size_t elem = ipc::dtype_size(e.dtype);
    if (elem == 0)
      return invalid("tensor " + std::to_string(t) + " has an unknown dtype (" +
                     std::to_string(e.dtype) + ")");
    if (e.offset > bytes || e.bytes > bytes - e.offset)
      return invalid("tensor " + std::to_string(t) + " (" + std::to_string(e.bytes) +
                     " bytes at offset " + std::to_string(e.offset) +
                     ") does not lie inside the slot of " + std::to_string(bytes) + " bytes");
    if (e.bytes % elem != 0)
      return invalid("tensor " + std::to_string(t) + ": " + std::to_string(e.bytes) +
                     " bytes are not a whole number of " + ipc::dtype_name(e.dtype) + " elements");
    if ((reinterpret_cast<uintptr_t>(slot) + e.offset) % elem != 0)
      return invalid("tensor " + std::to_string(t) + " starts at an address that is not a "
                     "multiple of its element size (" + std::to_string(elem) + ")");
  }
  return {};
}

}  // namespace detail

}  // namespace loraflip::device
