// The host implementation's device memory: a block is a POSIX shared-memory segment, exported
// by its handle (name, size, nonce) and opened once per process, as cudaIpcOpenMemHandle maps
// a block once per context. Shared declarations: device_host_internal.hpp.
#include <cstring>
#include <limits>
#include <unistd.h>

#include "device/device_host_internal.hpp"

namespace loraflip::device::host_detail {
namespace {

// The head of a block's segment: the common head, then the physical device the block lives
// on, which open_block checks (the rest of the kDataOffset bytes stay zero).
struct BlockHead {
  SegmentHead head;
  uint64_t device;
};
static_assert(sizeof(BlockHead) <= kDataOffset);

}  // namespace

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
  // The physical number: two processes that number the devices differently must name one
  // device's block alike (remove_host_blocks finds it), and never two devices' alike.
  const std::string name =
      fit_name("loraflip." + instance_ + "." + tag + ".dev" + std::to_string(visible_[device]));
  if (Segment::exists(name))
    return make_error(LF_E_EXISTS, "shared memory '/" + name +
                                       "' exists already: a block of that tag on that device, "
                                       "or one left by a process that died (remove it)");
  auto segment = Segment::create(name, kDataOffset + bytes, 0660, -1);
  if (!segment) return segment.error();
  const uint64_t nonce = make_nonce();
  *reinterpret_cast<BlockHead *>(segment->base()) =
      BlockHead{SegmentHead{kBlockMagic, nonce, bytes}, uint64_t(visible_[device])};

  Block block;
  block.device = device;
  block.ptr = segment->base() + kDataOffset;
  block.bytes = bytes;
  HostHandle h{};
  h.magic = kBlockMagic;
  h.creator = static_cast<uint32_t>(::getpid());
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
  // cudaIpcOpenMemHandle refuses a block of the calling process (its own allocation): code
  // that works here only because it opens what it exported would not work on a GPU.
  if (h.creator == static_cast<uint32_t>(::getpid()))
    return invalid("open_block of a block this process allocated: CUDA refuses to import a "
                   "handle in the process that exported it");
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
  const auto *head = reinterpret_cast<const BlockHead *>(segment->base());
  if (segment->size() < kDataOffset + h.bytes || head->head.magic != kBlockMagic ||
      head->head.nonce != h.nonce || head->head.bytes != h.bytes)
    return make_error(LF_E_NOT_FOUND, std::string("stale block handle: shared memory '/") + h.name +
                                          "' now holds another block");
  // cudaIpcOpenMemHandle maps a block of another GPU too, through peer access: reads cross
  // NVLink or PCIe and views name the wrong device. Always a defect here (the caller used an
  // ordinal of another process's numbering), so the stand-in refuses it.
  if (head->device != uint64_t(visible_[device]))
    return invalid("open_block on device " + std::to_string(device) + " (host device " +
                   std::to_string(visible_[device]) + ") of a block that lives on host device " +
                   std::to_string(head->device) +
                   ": ordinals are per process (LORAFLIP_HOST_VISIBLE_DEVICES); find this "
                   "process's ordinal of the block's device by its uuid");
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

Status HostBackend::close_block(int device, std::byte *ptr) {
  if (auto s = check_device(device); !s) return s;
  CurrentDevice on(*this);
  if (auto s = on.use(device); !s) return s;
  if (auto s = require_current(device, "closing a block"); !s) return s;
  std::unique_ptr<OpenedBlock> closed;  // unmapped after the lock
  std::lock_guard lock(mu_);
  for (auto it = opened_blocks_.begin(); it != opened_blocks_.end(); ++it) {
    if (it->second->ptr != ptr) continue;
    auto range = ranges_.find(ptr);
    if (range == ranges_.end() || range->second.device != device)
      return invalid("close_block names device " + std::to_string(device) +
                     ", but the block was opened on another");
    ranges_.erase(range);
    closed = std::move(it->second);
    opened_blocks_.erase(it);
    return {};
  }
  // cudaIpcCloseMemHandle of a pointer that open did not give fails too.
  return invalid("close_block of a pointer that open_block did not give (or closed already)");
}

uint64_t HostBackend::blocks_open() const {
  std::lock_guard lock(mu_);
  return opened_blocks_.size();
}

Result<Backend::Uuid> HostBackend::device_uuid(int device) {
  if (auto s = check_device(device); !s) return s.error();
  Uuid id{};
  // "loraflip-host" and the device's physical number: the same in every process, whatever
  // ordinal LORAFLIP_HOST_VISIBLE_DEVICES gives it here.
  static constexpr char kPrefix[] = "loraflip-host";
  std::memcpy(id.bytes, kPrefix, sizeof kPrefix - 1);
  id.bytes[15] = static_cast<unsigned char>(visible_[device]);
  return id;
}

Result<bool> HostBackend::enable_peer_access(int device, int peer) {
  if (auto s = check_device(device); !s) return s.error();
  if (auto s = check_device(peer); !s) return s.error();
  return true;  // shared memory: every device reaches every other
}

}  // namespace loraflip::device::host_detail
