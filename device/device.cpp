// What both implementations share: the switch of the current device, the bounded wait on an
// event, the argument checks of check_slot.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "device/device.hpp"
#include "device/slot_check.hpp"
#include "ipc/dtype.hpp"
#include "ipc/split_runs.hpp"
#include "kernels/validate.hpp"

namespace loraflip::device {

Status CurrentDevice::use(int device) {
  if (saved_ < 0) {
    Result<int> current = backend_.current_device();
    if (!current) return current.error();
    saved_ = now_ = current.value();
  }
  if (device == now_) return {};
  Status switched = backend_.set_current_device(device);
  // After a failure the thread's device is not known (cudaSetDevice may have switched before
  // it failed): the next use() switches again, and the destructor puts the caller's back.
  now_ = switched ? device : -1;
  return switched;
}

CurrentDevice::~CurrentDevice() {
  if (saved_ >= 0 && now_ != saved_) (void)backend_.set_current_device(saved_);
}

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

namespace {

// The first non-finite value of tensors [begin, end), in tensor order.
struct NonFinite {
  size_t tensor = SIZE_MAX;  // SIZE_MAX: none
  int64_t element = -1;
};

NonFinite scan_tensors(const std::byte *slot, std::span<const TensorExtent> tensors, size_t begin,
                       size_t end) {
  for (size_t t = begin; t < end; ++t) {
    const TensorExtent &e = tensors[t];
    const size_t elem = ipc::dtype_size(e.dtype);
    const int64_t bad = kernels::first_non_finite(slot + e.offset, e.bytes / elem, e.dtype);
    if (bad >= 0) return {t, bad};
  }
  return {};
}

// A slot of tens of MiB is scanned at the speed one core reads memory, and the scan sits
// between a writer's commit and the flip: tensors go to several threads (ipc::runs_for says
// when that pays), each taking the next tensor as it finishes one, and the lowest tensor found
// holding a non-finite value is the answer, the same as one scan in order. A find stops the
// taking of new tensors: every tensor before it was taken earlier, so it is scanned either way.
NonFinite scan_tensors_parallel(const std::byte *slot, std::span<const TensorExtent> tensors) {
  uint64_t total = 0;
  for (const TensorExtent &e : tensors) total += e.bytes;
  const unsigned threads = ipc::runs_for(total, tensors.size());
  if (threads < 2) return scan_tensors(slot, tensors, 0, tensors.size());
  std::mutex lowest_mutex;
  NonFinite lowest;
  ipc::for_each_item_shared(tensors.size(), threads, [&](size_t t) {
    const NonFinite found = scan_tensors(slot, tensors, t, t + 1);
    if (found.tensor == SIZE_MAX) return true;
    const std::lock_guard lock(lowest_mutex);
    if (found.tensor < lowest.tensor) lowest = found;
    return false;
  });
  return lowest;
}

}  // namespace

SlotCheck check_slot_cpu(const std::byte *slot, uint64_t bytes,
                         std::span<const TensorExtent> tensors, unsigned checks) {
  SlotCheck out;
  if (checks & kCheckFinite) {
    const NonFinite bad = scan_tensors_parallel(slot, tensors);
    if (bad.tensor != SIZE_MAX) {
      const size_t elem = ipc::dtype_size(tensors[bad.tensor].dtype);
      out.tensor = static_cast<int64_t>(bad.tensor);
      out.element = bad.element;
      // Little-endian host: the element's bytes are the low bytes of the word.
      std::memcpy(&out.bits, slot + tensors[bad.tensor].offset + static_cast<uint64_t>(bad.element) * elem,
                  elem);
    }
  }
  // The checksum reads the whole slot again, at the speed of its multiplies rather than of
  // memory: split over threads like the scan (checksum_parallel gives checksum()'s value).
  if (checks & kCheckChecksum) out.checksum = kernels::checksum_parallel(slot, bytes);
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
