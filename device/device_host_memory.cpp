// The host implementation's device memory: a block is a POSIX shared-memory segment, exported
// by its handle (name, size, nonce) and opened once per process, as cudaIpcOpenMemHandle maps
// a block once per context. Shared declarations: device_host_internal.hpp.
#include <cstring>
#include <limits>

#include "device/device_host_internal.hpp"

namespace loraflip::device::host_detail {

Result<Block> HostBackend::allocate(int device, uint64_t bytes, const std::string &tag) {
  if (auto s = check_device(device); !s) return s.error();
  CurrentDevice on(*this);
  if (auto s = on.use(device); !s) return s.error();
  if (auto s = require_current(device, "an allocation"); !s) return s.error();
  if (bytes == 0) return invalid("a block of 0 bytes");
  if (bytes > uint64_t(std::numeric_limits<int64_t>::max()) - kDataOffset)
    return make_error(LF_E_TOO_LARGE, "a block of " + std::to_string(bytes) + " bytes");
  if (!valid_name_part(tag))
    return invalid("block tag '" + tag + "': use 1 to 200 of A-Z a-z 0-9 . _ -");
  const std::string name =
      fit_name("loraflip." + instance_ + "." + tag + ".dev" + std::to_string(device));
  if (Segment::exists(name))
    return make_error(LF_E_EXISTS, "shared memory '/" + name +
                                       "' exists already: a block of that tag on that device, "
                                       "or one left by a process that died (remove it)");
  auto segment = Segment::create(name, kDataOffset + bytes, 0660, -1);
  if (!segment) return segment.error();
  const uint64_t nonce = make_nonce();
  *reinterpret_cast<SegmentHead *>(segment->base()) = SegmentHead{kBlockMagic, nonce, bytes};

  Block block;
  block.device = device;
  block.ptr = segment->base() + kDataOffset;
  block.bytes = bytes;
  HostHandle h{};
  h.magic = kBlockMagic;
  h.bytes = bytes;
  h.nonce = nonce;
  std::memcpy(h.name, name.c_str(), name.size() + 1);
  std::memcpy(block.handle.bytes, &h, sizeof h);
  auto owned = std::make_unique<OwnedBlock>(OwnedBlock{std::move(segment).value()});
  block.impl = owned.get();
  std::lock_guard lock(mu_);
  ranges_[block.ptr] = Range{block.ptr + bytes, device};
  owned_blocks_.emplace(owned.get(), std::move(owned));
  return block;
}

void HostBackend::free_block(Block &block) {
  if (block.impl == nullptr) return;
  CurrentDevice on(*this);
  // Nothing to report to: a free that does not run on its device is a leak, as in CUDA.
  if (!on.use(block.device) || !require_current(block.device, "a free")) return;
  std::unique_ptr<OwnedBlock> owned;
  {
    std::lock_guard lock(mu_);
    auto it = owned_blocks_.find(static_cast<OwnedBlock *>(block.impl));
    if (it == owned_blocks_.end()) return;  // not ours, or freed already
    owned = std::move(it->second);
    owned_blocks_.erase(it);
    ranges_.erase(block.ptr);
  }
  const std::string name = owned->segment.name();
  owned.reset();  // unmaps
  Segment::remove(name);
  block.impl = nullptr;
  block.ptr = nullptr;
}

Result<std::byte *> HostBackend::open_block(int device, const IpcHandle &handle, uint64_t bytes) {
  if (auto s = check_device(device); !s) return s.error();
  auto parsed = parse_handle(handle, kBlockMagic, "block");
  if (!parsed) return parsed.error();
  const HostHandle &h = parsed.value();
  if (bytes == 0 || bytes > h.bytes)
    return invalid("open_block asks for " + std::to_string(bytes) + " bytes of a block of " +
                   std::to_string(h.bytes));
  const std::string key = std::to_string(device) + "/" + h.name + "/" + hex(h.nonce);
  std::lock_guard lock(mu_);
  if (auto it = opened_blocks_.find(key); it != opened_blocks_.end()) return it->second->ptr;
  CurrentDevice on(*this);
  if (auto s = on.use(device); !s) return s.error();
  if (auto s = require_current(device, "opening a block"); !s) return s.error();
  auto segment = Segment::open(h.name, Segment::Access::kReadWrite);
  if (!segment) {
    Error e = segment.error();
    if (e.code == LF_E_NOT_FOUND) e.message += " (the block was freed, or its owner is gone)";
    return e;
  }
  const auto *head = reinterpret_cast<const SegmentHead *>(segment->base());
  if (segment->size() < kDataOffset + h.bytes || head->magic != kBlockMagic ||
      head->nonce != h.nonce || head->bytes != h.bytes)
    return make_error(LF_E_NOT_FOUND, std::string("stale block handle: shared memory '/") + h.name +
                                          "' now holds another block");
  std::byte *ptr = segment->base() + kDataOffset;
  opened_blocks_.emplace(
      key, std::make_unique<OpenedBlock>(OpenedBlock{std::move(segment).value(), ptr}));
  ranges_[ptr] = Range{ptr + h.bytes, device};
  ++blocks_opened_;
  return ptr;
}

uint64_t HostBackend::blocks_opened() const {
  std::lock_guard lock(mu_);
  return blocks_opened_;
}

}  // namespace loraflip::device::host_detail
