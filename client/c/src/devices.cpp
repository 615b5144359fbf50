#include "devices.hpp"

#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace loraflip::client {
namespace {

// A block opened in this process, shared by every hold on it (DeviceMaps, writers).
struct SharedBlock {
  device::Backend *backend;
  uint64_t epoch;  // the daemon start it belongs to: with the handle, what names it
  device::IpcHandle handle;
  int device;  // this process's ordinal it was opened on
  std::byte *ptr;
  uint64_t holds;
};

// Every block this process has open. Never destroyed: holds may be let go at exit, in any
// order with the destructors of other statics.
struct OpenBlocks {
  std::mutex mu;
  std::vector<SharedBlock> blocks;  // a handful: one per device per daemon epoch in use
};
OpenBlocks &open_blocks() {
  static OpenBlocks *all = new OpenBlocks;
  return *all;
}

bool same_handle(const device::IpcHandle &a, const device::IpcHandle &b) {
  return std::memcmp(a.bytes, b.bytes, sizeof a.bytes) == 0;
}

// A hold on the block `handle` of daemon epoch `epoch`, opened on `device` at the first hold.
// Keyed by (epoch, handle), not by the handle alone: a daemon restarted with the same pid (PID
// 1 in a container) may export its new memory under the handle bytes of the old.
Result<std::byte *> open_shared(device::Backend *backend, uint64_t epoch,
                                const device::IpcHandle &handle, int device, uint64_t bytes) {
  OpenBlocks &all = open_blocks();
  std::lock_guard lock(all.mu);
  for (SharedBlock &b : all.blocks) {
    if (b.backend == backend && b.epoch == epoch && same_handle(b.handle, handle)) {
      ++b.holds;
      return b.ptr;
    }
  }
  Result<std::byte *> ptr = backend->open_block(device, handle, bytes);
  if (!ptr) return ptr.error();
  // The backend caches opens by handle: the same pointer as a block of another epoch is that
  // block (still mapped for pins taken before the restart), not the new daemon's memory.
  for (const SharedBlock &b : all.blocks)
    if (b.backend == backend && b.ptr == ptr.value())
      return make_error(LF_E_UNSUPPORTED,
                        "the restarted daemon's device memory has the IPC handle of memory this "
                        "process still maps from before the restart: release the pins taken "
                        "before it, then try again");
  all.blocks.push_back(SharedBlock{backend, epoch, handle, device, ptr.value(), 1});
  return ptr;
}

void let_go(device::Backend *backend, std::byte *ptr) {
  OpenBlocks &all = open_blocks();
  std::lock_guard lock(all.mu);
  for (auto it = all.blocks.begin(); it != all.blocks.end(); ++it) {
    if (it->backend != backend || it->ptr != ptr) continue;
    if (--it->holds == 0) {
      // Nothing to report a failure to; the backend forgets the block either way.
      (void)backend->close_block(it->device, ptr);
      all.blocks.erase(it);
    }
    return;
  }
}

// What a backend's devices are called in every process: their uuids, by this process's
// ordinal, read once per backend (reading them creates no context). `why`: why there are
// none, when there are none.
struct SeenDevices {
  std::vector<device::Backend::Uuid> uuids;
  std::string why;
};

const SeenDevices &seen_devices(device::Backend *backend) {
  static std::mutex mu;
  static auto *seen = new std::map<device::Backend *, SeenDevices>;  // never destroyed, as above
  std::lock_guard lock(mu);
  auto found = seen->find(backend);
  if (found != seen->end()) return found->second;
  SeenDevices s;
  Result<int> count = backend->device_count();
  if (!count) s.why = count.error().message;
  for (int d = 0; count && d < count.value(); ++d) {
    Result<device::Backend::Uuid> uuid = backend->device_uuid(d);
    if (!uuid) {
      s.uuids.clear();
      s.why = "device " + std::to_string(d) + ": " + uuid.error().message;
      break;
    }
    s.uuids.push_back(uuid.value());
  }
  return seen->emplace(backend, std::move(s)).first->second;
}

// As nvidia-smi -L and CUDA_VISIBLE_DEVICES write a GPU's uuid.
std::string uuid_text(const unsigned char (&u)[16]) {
  char buf[48];
  std::snprintf(buf, sizeof buf,
                "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
                u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
                u[14], u[15]);
  return buf;
}

}  // namespace

BlockRef &BlockRef::operator=(BlockRef &&other) noexcept {
  if (this != &other) {
    reset();
    backend_ = std::exchange(other.backend_, nullptr);
    ptr_ = std::exchange(other.ptr_, nullptr);
  }
  return *this;
}

void BlockRef::reset() {
  if (ptr_ != nullptr) let_go(backend_, ptr_);
  backend_ = nullptr;
  ptr_ = nullptr;
}

BlockRef BlockRef::share() const {
  if (ptr_ == nullptr) return {};
  OpenBlocks &all = open_blocks();
  std::lock_guard lock(all.mu);
  for (SharedBlock &b : all.blocks) {
    if (b.backend == backend_ && b.ptr == ptr_) {
      ++b.holds;
      return BlockRef(backend_, ptr_);
    }
  }
  return {};  // unreachable while this hold lives
}

Result<device::Backend *> process_backend(const char *kind) {
  static std::mutex mutex;
  // The host stand-in is destroyed at exit: that removes the shared memory of its events, as a
  // CUDA context takes its events with it, and the tests check /dev/shm is left clean.
  static std::unique_ptr<device::Backend> host;
  // The CUDA one never is, on purpose: a static destructor runs after the CUDA runtime may have
  // been torn down at exit, and closing its handles then is undefined; the driver frees what a
  // process held when it exits.
  static device::Backend *cuda = nullptr;
  std::lock_guard lock(mutex);
  if (std::strcmp(kind, "host") == 0) {
    if (!host) host = device::make_host_backend("client");
    return host.get();
  }
  if (std::strcmp(kind, "cuda") == 0) {
    if (cuda == nullptr) {
      auto made = device::make_cuda_backend();
      if (!made) return made.error();
      cuda = std::move(made).value().release();
    }
    return cuda;
  }
  return make_error(LF_E_UNSUPPORTED, std::string("the daemon serves devices through '") + kind +
                                          "', which this client does not know");
}

Result<device::Backend *> stream_backend(const ipc::Arena &arena, const DeviceMap &devices) {
  if (devices.backend() != nullptr) return devices.backend();
  const ipc::ArenaHeader &h = arena.header();
  if (h.device_count == 0 || h.device_count > ipc::kMaxDevices) return process_backend("cuda");
  char kind[sizeof h.device_backend + 1] = {};
  std::memcpy(kind, h.device_backend, sizeof h.device_backend);
  return process_backend(kind);
}

Status DeviceMap::refresh(const ipc::Arena &arena) {
  const ipc::ArenaHeader &h = arena.header();
  const uint64_t epoch = h.device_epoch.load(std::memory_order_seq_cst);
  if (epoch != 0 && epoch == epoch_) return {};
  // Another daemon (or none): this map's blocks of the last epoch are retired, not closed.
  for (uint32_t i = 0; i < count_; ++i)
    if (opened_[i].get() != nullptr) retired_.emplace_back(epoch_, std::move(opened_[i]));
  epoch_ = 0;
  count_ = 0;
  if (epoch == 0 || h.device_count == 0 || h.device_count > ipc::kMaxDevices)
    return make_error(LF_E_UNSUPPORTED, "the daemon serves no devices");
  char kind[sizeof h.device_backend + 1] = {};
  std::memcpy(kind, h.device_backend, sizeof h.device_backend);
  Result<device::Backend *> backend = process_backend(kind);
  if (!backend) return backend.error();
  const SeenDevices &seen = seen_devices(backend.value());
  const uint32_t count = h.device_count;
  for (uint32_t i = 0; i < count; ++i) {
    const ipc::DeviceArenaRecord &d = h.devices[i];
    std::memcpy(handles_[i].bytes, d.handle, sizeof handles_[i].bytes);
    bytes_[i] = d.bytes;
    remote_[i] = d.ordinal;
    std::memcpy(uuids_[i], d.uuid, sizeof uuids_[i]);
    local_[i] = -1;
    for (size_t o = 0; o < seen.uuids.size(); ++o)
      if (std::memcmp(seen.uuids[o].bytes, d.uuid, sizeof d.uuid) == 0) local_[i] = int(o);
  }
  unseen_why_ = seen.why;
  // The daemon writes its table before its epoch (DeviceSet::publish): one that started while
  // this read it may have left a mix of two tables. Read it again at the next call.
  if (h.device_epoch.load(std::memory_order_seq_cst) != epoch)
    return make_error(LF_E_NO_VERSION, "the daemon restarted while its device table was read; "
                                       "try again");
  backend_ = backend.value();
  count_ = count;
  epoch_ = epoch;
  return {};
}

Result<std::byte *> DeviceMap::base(uint32_t index) {
  if (index >= count_)
    return make_error(LF_E_PROTOCOL, "the adapter names device " + std::to_string(index) +
                                         " of the daemon's table, which has " +
                                         std::to_string(count_));
  if (opened_[index].get() != nullptr) return opened_[index].get();
  if (local_[index] < 0) return invisible(index);
  Result<std::byte *> ptr =
      open_shared(backend_, epoch_, handles_[index], local_[index], bytes_[index]);
  if (!ptr) return ptr.error();
  opened_[index] = BlockRef(backend_, ptr.value());
  return ptr;
}

Error DeviceMap::invisible(uint32_t index) const {
  if (index >= count_)
    return make_error(LF_E_PROTOCOL, "the adapter names device " + std::to_string(index) +
                                         " of the daemon's table, which has " +
                                         std::to_string(count_));
  return make_error(LF_E_UNSUPPORTED,
                    "the daemon's device " + std::to_string(remote_[index]) + " (" +
                        uuid_text(uuids_[index]) +
                        ") is not visible in this process (CUDA_VISIBLE_DEVICES hides it, or "
                        "LORAFLIP_HOST_VISIBLE_DEVICES for the host stand-in)" +
                        (unseen_why_.empty() ? "" : ": " + unseen_why_));
}

}  // namespace loraflip::client
