// The host implementation's copies and its check_slot: every device pointer is checked to lie,
// with the whole copy or slot, in a block of the device the call names (more than CUDA checks),
// and the bytes move with memmove on the stream's worker (the device's default stream for the
// null stream), later, as on a GPU. Shared declarations: device_host_internal.hpp.
#include <cstring>

#include "device/device_host_internal.hpp"
#include "device/slot_check.hpp"

namespace loraflip::device::host_detail {

Status HostBackend::copy(void *dst, const void *src, uint64_t bytes, CopyKind kind, int device,
                         Stream stream) {
  if (auto s = check_device(device); !s) return s;
  if (bytes == 0) return {};
  if (dst == nullptr || src == nullptr) return invalid("copy with a null pointer");
  auto s = stream_of(stream);
  if (!s) return s.error();
  HostStream *hs = s.value();
  if (hs != nullptr && hs->device() != device)
    return invalid("copy on device " + std::to_string(device) + " with a stream of device " +
                   std::to_string(hs->device()));
  CurrentDevice on(*this);
  if (auto u = on.use(device); !u) return u;
  if (auto r = require_current(device, "a copy"); !r) return r;
  {
    std::lock_guard lock(mu_);
    const bool dst_dev = kind != CopyKind::kDeviceToHost;
    const bool src_dev = kind != CopyKind::kHostToDevice;
    if (auto c = check_side(dst, bytes, dst_dev, device, "destination"); !c) return c;
    if (auto c = check_side(src, bytes, src_dev, device, "source"); !c) return c;
  }
  return enqueue_copy(issuing_stream(hs, device), dst, src, bytes);
}

Status HostBackend::copy_peer(void *dst, int dst_device, const void *src, int src_device,
                              uint64_t bytes, Stream stream) {
  if (auto s = check_device(dst_device); !s) return s;
  if (auto s = check_device(src_device); !s) return s;
  if (bytes == 0) return {};
  if (dst == nullptr || src == nullptr) return invalid("copy_peer with a null pointer");
  auto s = stream_of(stream);
  if (!s) return s.error();
  // Issued on the stream's device, or the source's for the null stream (device.hpp).
  const int issuer = s.value() != nullptr ? s.value()->device() : src_device;
  if (auto c = check_device(issuer); !c) return c;
  CurrentDevice on(*this);
  if (auto u = on.use(issuer); !u) return u;
  if (auto r = require_current(issuer, "a peer copy"); !r) return r;
  {
    std::lock_guard lock(mu_);
    if (auto c = check_side(dst, bytes, true, dst_device, "destination"); !c) return c;
    if (auto c = check_side(src, bytes, true, src_device, "source"); !c) return c;
  }
  return enqueue_copy(issuing_stream(s.value(), issuer), dst, src, bytes);
}

Result<SlotCheck> HostBackend::check_slot(int device, const std::byte *slot, uint64_t bytes,
                                          std::span<const TensorExtent> tensors, unsigned checks) {
  if (auto s = check_device(device); !s) return s.error();
  if (auto s = detail::check_slot_arguments(slot, bytes, tensors, checks); !s) return s.error();
  CurrentDevice on(*this);
  if (auto s = on.use(device); !s) return s.error();
  if (auto s = require_current(device, "a slot check"); !s) return s.error();
  if (bytes != 0) {
    std::lock_guard lock(mu_);
    if (auto c = check_side(slot, bytes, true, device, "slot"); !c) return c.error();
  }
  return check_slot_cpu(slot, bytes, tensors, checks);
}

Status HostBackend::check_side(const void *p, uint64_t bytes, bool device_side, int device,
                               const char *what) const {
  const auto *b = static_cast<const std::byte *>(p);
  const Range *range = nullptr;
  auto it = ranges_.upper_bound(const_cast<std::byte *>(b));
  if (it != ranges_.begin()) {
    --it;
    if (b < it->second.end) range = &it->second;
  }
  if (!device_side) {
    if (range != nullptr)
      return invalid(std::string("the ") + what +
                     " is device memory but the copy kind says host memory");
    return {};
  }
  if (range == nullptr)
    return invalid(std::string("the ") + what + " is not in a block of device " +
                   std::to_string(device) + " (from allocate or open_block)");
  if (range->device != device)
    return invalid(std::string("the ") + what + " is in a block of device " +
                   std::to_string(range->device) + ", not of device " + std::to_string(device));
  if (bytes > uint64_t(range->end - b))
    return invalid(std::string("the ") + what + " runs " +
                   std::to_string(bytes - uint64_t(range->end - b)) +
                   " bytes past the end of its block");
  return {};
}

Status HostBackend::enqueue_copy(HostStream *stream, void *dst, const void *src, uint64_t bytes) {
  if (stream->capturing())
    return invalid("a copy on a stream that is being captured into a graph: the host stand-in "
                   "does not replay graphs");
  // memmove: a copy within one block may overlap, which memcpy does not allow.
  stream->enqueue([dst, src, bytes] { std::memmove(dst, src, bytes); });
  return {};
}

}  // namespace loraflip::device::host_detail
