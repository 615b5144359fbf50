// The host implementation of the device interface: POSIX shared memory stands in for device
// memory, a worker thread for each stream, and a shared atomic word for an interprocess event.
// It keeps the CUDA semantics that the layers above rely on (a block is exported once and
// opened once per process, copies and event records run in stream order, an event recorded on
// a stream that never gets there stays pending) and checks more than CUDA does: every device
// pointer must lie inside a block of the device the call names, with the whole copy in it.
// Its check_slot runs the CPU checks of kernels/validate.hpp on the block in place: it is
// ordinary shared memory.
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <new>
#include <optional>
#include <random>
#include <thread>
#include <type_traits>
#include <dirent.h>
#include <unistd.h>

#include "device/device.hpp"
#include "device/slot_check.hpp"
#include "ipc/arena.hpp"
#include "ipc/dtype.hpp"
#include "ipc/proc.hpp"
#include "kernels/validate.hpp"

namespace loraflip::device {
namespace {

using ipc::Segment;

constexpr uint32_t kBlockMagic = 0x4c46424b;              // "LFBK"
constexpr uint32_t kEventMagic = 0x4c464556;              // "LFEV"
constexpr uint64_t kStreamMagic = 0x4c4653747265616dULL;  // "LFStream", guards host_pause_stream

// What a host handle holds; it fills the 64 bytes of an IpcHandle.
struct HostHandle {
  uint32_t magic;     // kBlockMagic or kEventMagic
  uint32_t reserved;  // zero
  uint64_t bytes;     // a block's usable bytes; 0 for an event
  uint64_t nonce;     // random per object: tells a reused name from the object it named
  char name[40];      // the shared-memory name, NUL-terminated
};
static_assert(sizeof(HostHandle) == sizeof(IpcHandle));
static_assert(std::is_trivially_copyable_v<HostHandle>);

// The head of every host segment. Written by the creator before its handle leaves the process
// and never again. These segments stand in for memory the GPU driver owns, so their layout is
// private to this file rather than declared in ipc/ with the arena's.
struct SegmentHead {
  uint64_t magic;  // kBlockMagic or kEventMagic
  uint64_t nonce;  // the handle's nonce
  uint64_t bytes;  // a block's usable bytes; 0 for an event
};
// A block's bytes start here: cudaMalloc aligns to at least 256 bytes, and so does this.
constexpr uint64_t kDataOffset = 256;
static_assert(sizeof(SegmentHead) <= kDataOffset);

// The shared memory of an event.
struct EventWord {
  SegmentHead head;
  // (sequence << 1) | kPending. record() bumps the sequence and sets kPending (seq_cst); the
  // stream clears kPending of that sequence only (compare-exchange, release), so an event
  // recorded again stays pending until its latest record is reached; query() loads it
  // (acquire), so a consumer that sees it complete sees the bytes copied before the record.
  std::atomic<uint64_t> state;
};
static_assert(std::atomic<uint64_t>::is_always_lock_free);
constexpr uint64_t kPending = 1;

Error invalid(std::string message) { return make_error(LF_E_INVALID_ARGUMENT, std::move(message)); }

bool valid_name_part(const std::string &s) {
  if (s.empty() || s.size() > 200) return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
          c == '_' || c == '-'))
      return false;
  return true;
}

// The name itself when it fits a handle, else "loraflip.<FNV-1a 64 of the name>".
std::string fit_name(const std::string &full) {
  if (full.size() < sizeof(HostHandle::name)) return full;
  uint64_t h = 14695981039346656037ULL;  // FNV-1a 64 offset basis and prime
  for (unsigned char c : full) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "loraflip.%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// From the kernel's random source on every call: a generator seeded once would repeat its
// sequence in every child forked after it.
uint64_t make_nonce() {
  std::random_device rd;
  return (uint64_t{rd()} << 32) ^ rd() ^ (uint64_t(::getpid()) << 17);
}

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

Result<HostHandle> parse_handle(const IpcHandle &handle, uint32_t magic, const char *what) {
  HostHandle h;
  std::memcpy(&h, handle.bytes, sizeof h);
  if (h.magic != magic)
    return invalid(std::string("not a host ") + what +
                   " handle (bad magic number): a handle of another implementation or kind, "
                   "or no handle at all");
  if (std::memchr(h.name, '\0', sizeof h.name) == nullptr || h.name[0] == '\0')
    return invalid(std::string("a host ") + what + " handle without a valid segment name");
  return h;
}

// Executes queued operations in order on one worker thread, like a GPU stream.
class HostStream {
 public:
  explicit HostStream(int device) : device_(device), worker_([this] { run(); }) {}
  ~HostStream() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
      paused_ = false;  // what was queued still runs, as on a destroyed CUDA stream
    }
    work_cv_.notify_all();
    worker_.join();
  }
  HostStream(const HostStream &) = delete;
  HostStream &operator=(const HostStream &) = delete;

  void enqueue(std::function<void()> op) {
    {
      std::lock_guard lock(mu_);
      queue_.push_back(std::move(op));
    }
    work_cv_.notify_one();
  }
  // Blocks until everything queued so far has run (forever while paused, as on a GPU).
  void wait_idle() {
    std::unique_lock lock(mu_);
    idle_cv_.wait(lock, [&] { return queue_.empty() && !running_; });
  }
  void set_paused(bool paused) {
    {
      std::lock_guard lock(mu_);
      paused_ = paused;
    }
    work_cv_.notify_all();
  }
  int device() const { return device_; }

  const uint64_t magic = kStreamMagic;

 private:
  void run() {
    std::unique_lock lock(mu_);
    for (;;) {
      work_cv_.wait(lock,
                    [&] { return (!paused_ && !queue_.empty()) || (stop_ && queue_.empty()); });
      if (queue_.empty()) return;  // stopping, and nothing left
      auto op = std::move(queue_.front());
      queue_.pop_front();
      running_ = true;
      lock.unlock();
      op();
      lock.lock();
      running_ = false;
      if (queue_.empty()) idle_cv_.notify_all();
    }
  }

  const int device_;
  std::mutex mu_;
  std::condition_variable work_cv_, idle_cv_;
  std::deque<std::function<void()>> queue_;
  bool paused_ = false, stop_ = false, running_ = false;
  std::thread worker_;  // last: starts after every other member exists
};

struct OwnedBlock {
  Segment segment;
};

struct OpenedBlock {
  Segment segment;
  std::byte *ptr;
};

// A mapped event. Shared with the stream operations that complete it, so that destroying the
// event while a record is queued leaves the queued store something to write to.
struct EventMapping {
  Segment segment;
  EventWord *word;
  bool creator;     // removes the name when destroyed
  std::string key;  // for opened events: the cache key
  int refs = 1;     // for opened events: open_event calls not yet matched by destroy_event
};

class HostBackend final : public Backend {
 public:
  HostBackend(std::string instance, int devices, std::optional<Error> config_error)
      : instance_(std::move(instance)), devices_(devices), config_error_(std::move(config_error)) {}

  ~HostBackend() override {
    // Streams first: joining their workers runs what is still queued.
    std::map<HostStream *, std::unique_ptr<HostStream>> streams;
    {
      std::lock_guard lock(mu_);
      streams.swap(streams_);
    }
    streams.clear();
    // What this process created and did not free goes with it, as device memory goes with a
    // CUDA context.
    for (auto &[ptr, block] : owned_blocks_) {
      const std::string name = block->segment.name();
      block.reset();
      Segment::remove(name);
    }
    for (auto &[ptr, event] : events_)
      if (event->creator) Segment::remove(event->segment.name());
  }

  const char *name() const override { return "host"; }

  Result<int> device_count() override {
    if (config_error_) return *config_error_;
    return devices_;
  }

  Result<Block> allocate(int device, uint64_t bytes, const std::string &tag) override {
    if (auto s = check_device(device); !s) return s.error();
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

  void free_block(Block &block) override {
    if (block.impl == nullptr) return;
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

  Result<std::byte *> open_block(int device, const IpcHandle &handle, uint64_t bytes) override {
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
    auto segment = Segment::open(h.name, Segment::Access::kReadWrite);
    if (!segment) {
      Error e = segment.error();
      if (e.code == LF_E_NOT_FOUND) e.message += " (the block was freed, or its owner is gone)";
      return e;
    }
    const auto *head = reinterpret_cast<const SegmentHead *>(segment->base());
    if (segment->size() < kDataOffset + h.bytes || head->magic != kBlockMagic ||
        head->nonce != h.nonce || head->bytes != h.bytes)
      return make_error(LF_E_NOT_FOUND, std::string("stale block handle: shared memory '/") +
                                            h.name + "' now holds another block");
    std::byte *ptr = segment->base() + kDataOffset;
    opened_blocks_.emplace(
        key, std::make_unique<OpenedBlock>(OpenedBlock{std::move(segment).value(), ptr}));
    ranges_[ptr] = Range{ptr + h.bytes, device};
    ++blocks_opened_;
    return ptr;
  }

  uint64_t blocks_opened() const override {
    std::lock_guard lock(mu_);
    return blocks_opened_;
  }

  Status copy(void *dst, const void *src, uint64_t bytes, CopyKind kind, int device,
              Stream stream) override {
    if (auto s = check_device(device); !s) return s;
    if (bytes == 0) return {};
    if (dst == nullptr || src == nullptr) return invalid("copy with a null pointer");
    auto s = stream_of(stream);
    if (!s) return s.error();
    HostStream *hs = s.value();
    if (hs != nullptr && hs->device() != device)
      return invalid("copy on device " + std::to_string(device) + " with a stream of device " +
                     std::to_string(hs->device()));
    {
      std::lock_guard lock(mu_);
      const bool dst_dev = kind != CopyKind::kDeviceToHost;
      const bool src_dev = kind != CopyKind::kHostToDevice;
      if (auto c = check_side(dst, bytes, dst_dev, device, "destination"); !c) return c;
      if (auto c = check_side(src, bytes, src_dev, device, "source"); !c) return c;
    }
    run_or_enqueue(hs, dst, src, bytes);
    return {};
  }

  Status copy_peer(void *dst, int dst_device, const void *src, int src_device, uint64_t bytes,
                   Stream stream) override {
    if (auto s = check_device(dst_device); !s) return s;
    if (auto s = check_device(src_device); !s) return s;
    if (bytes == 0) return {};
    if (dst == nullptr || src == nullptr) return invalid("copy_peer with a null pointer");
    auto s = stream_of(stream);
    if (!s) return s.error();
    {
      std::lock_guard lock(mu_);
      if (auto c = check_side(dst, bytes, true, dst_device, "destination"); !c) return c;
      if (auto c = check_side(src, bytes, true, src_device, "source"); !c) return c;
    }
    run_or_enqueue(s.value(), dst, src, bytes);
    return {};
  }

  Status synchronize(int device, Stream stream) override {
    if (auto s = check_device(device); !s) return s;
    auto s = stream_of(stream);
    if (!s) return s.error();
    // Work on the null stream ran when it was issued.
    if (s.value() != nullptr) s.value()->wait_idle();
    return {};
  }

  Result<Stream> create_stream(int device) override {
    if (auto s = check_device(device); !s) return s.error();
    auto stream = std::make_unique<HostStream>(device);
    HostStream *raw = stream.get();
    std::lock_guard lock(mu_);
    streams_.emplace(raw, std::move(stream));
    return static_cast<Stream>(raw);
  }

  void destroy_stream(int /*device*/, Stream stream) override {
    std::unique_ptr<HostStream> owned;
    {
      std::lock_guard lock(mu_);
      auto it = streams_.find(static_cast<HostStream *>(stream));
      if (it == streams_.end()) return;
      owned = std::move(it->second);
      streams_.erase(it);
    }
    owned.reset();  // outside the lock: joining runs what is queued, which may take the lock
  }

  Result<Event> create_event(int device) override {
    if (auto s = check_device(device); !s) return s.error();
    uint64_t n;
    bool sweep = false;
    {
      std::lock_guard lock(mu_);
      n = next_event_++;
      sweep = !swept_events_;
      swept_events_ = true;
    }
    if (sweep) remove_dead_events();
    const std::string name = fit_name("loraflip." + instance_ + ".ev" + std::to_string(::getpid()) +
                                      "." + std::to_string(n));
    auto segment = Segment::create(name, sizeof(EventWord), 0660, -1);
    if (!segment) return segment.error();
    const uint64_t nonce = make_nonce();
    auto *word = new (segment->base()) EventWord{};
    word->head = SegmentHead{kEventMagic, nonce, 0};
    word->state.store(0);  // complete, like a CUDA event never recorded

    Event event;
    event.device = device;
    HostHandle h{};
    h.magic = kEventMagic;
    h.nonce = nonce;
    std::memcpy(h.name, name.c_str(), name.size() + 1);
    std::memcpy(event.handle.bytes, &h, sizeof h);
    auto mapping =
        std::make_shared<EventMapping>(EventMapping{std::move(segment).value(), word, true, {}, 1});
    event.impl = mapping.get();
    std::lock_guard lock(mu_);
    events_.emplace(mapping.get(), std::move(mapping));
    return event;
  }

  Result<Event> open_event(int device, const IpcHandle &handle) override {
    if (auto s = check_device(device); !s) return s.error();
    auto parsed = parse_handle(handle, kEventMagic, "event");
    if (!parsed) return parsed.error();
    const HostHandle &h = parsed.value();
    const std::string key = std::to_string(device) + "/" + h.name + "/" + hex(h.nonce);
    Event event;
    event.device = device;
    event.handle = handle;
    std::lock_guard lock(mu_);
    if (auto it = opened_events_.find(key); it != opened_events_.end()) {
      ++it->second->refs;
      event.impl = it->second;
      return event;
    }
    auto segment = Segment::open(h.name, Segment::Access::kReadWrite);
    if (!segment) {
      Error e = segment.error();
      if (e.code == LF_E_NOT_FOUND) e.message += " (the event was destroyed by its creator)";
      return e;
    }
    auto *word = reinterpret_cast<EventWord *>(segment->base());
    if (segment->size() < sizeof(EventWord) || word->head.magic != kEventMagic ||
        word->head.nonce != h.nonce)
      return make_error(LF_E_NOT_FOUND, std::string("stale event handle: shared memory '/") +
                                            h.name + "' now holds another object");
    auto mapping = std::make_shared<EventMapping>(
        EventMapping{std::move(segment).value(), word, false, key, 1});
    event.impl = mapping.get();
    opened_events_.emplace(key, mapping.get());
    events_.emplace(mapping.get(), std::move(mapping));
    return event;
  }

  Status record(Event &event, Stream stream) override {
    auto m = find_event(event);
    if (!m) return m.error();
    auto s = stream_of(stream);
    if (!s) return s.error();
    HostStream *hs = s.value();
    if (hs != nullptr && hs->device() != event.device)
      return invalid("an event of device " + std::to_string(event.device) +
                     " recorded on a stream of device " + std::to_string(hs->device()));
    std::atomic<uint64_t> &state = m.value()->word->state;
    const uint64_t pending = hs != nullptr ? kPending : 0;  // the null stream is synchronous
    uint64_t old = state.load();
    uint64_t next;
    do {
      next = (((old >> 1) + 1) << 1) | pending;
    } while (!state.compare_exchange_weak(old, next));
    if (hs != nullptr)
      hs->enqueue([mapping = std::move(m).value(), next] {
        uint64_t expected = next;
        mapping->word->state.compare_exchange_strong(
            expected, next & ~kPending, std::memory_order_release, std::memory_order_relaxed);
      });
    return {};
  }

  Result<bool> query(Event &event) override {
    auto m = find_event(event);
    if (!m) return m.error();
    return (m.value()->word->state.load(std::memory_order_acquire) & kPending) == 0;
  }

  void destroy_event(Event &event) override {
    std::shared_ptr<EventMapping> doomed;  // released after the lock
    {
      std::lock_guard lock(mu_);
      auto it = events_.find(static_cast<EventMapping *>(event.impl));
      if (it == events_.end()) return;
      EventMapping &m = *it->second;
      if (!m.creator && --m.refs > 0) {
        event.impl = nullptr;
        return;
      }
      if (m.creator)
        Segment::remove(m.segment.name());
      else
        opened_events_.erase(m.key);
      doomed = std::move(it->second);
      events_.erase(it);
    }
    event.impl = nullptr;
  }

  // Synchronous in the caller's thread, like every host call on the null stream; it does not
  // wait for the host streams, as the CUDA check does not wait for other streams.
  Result<SlotCheck> check_slot(int device, const std::byte *slot, uint64_t bytes,
                               std::span<const TensorExtent> tensors, unsigned checks) override {
    if (auto s = check_device(device); !s) return s.error();
    if (auto s = detail::check_slot_arguments(slot, bytes, tensors, checks); !s) return s.error();
    if (bytes != 0) {
      std::lock_guard lock(mu_);
      if (auto c = check_side(slot, bytes, true, device, "slot"); !c) return c.error();
    }
    return check_slot_cpu(slot, bytes, tensors, checks);
  }

 private:
  struct Range {
    std::byte *end;
    int device;
  };

  Status check_device(int device) const {
    if (config_error_) return *config_error_;
    if (device < 0 || device >= devices_)
      return invalid("device " + std::to_string(device) + " does not exist (the host backend has " +
                     std::to_string(devices_) + "; LORAFLIP_HOST_DEVICES sets how many)");
    return {};
  }

  // Like a cudaStream_t, a host stream belongs to the process, not to the backend object that
  // made it: a writer passes a stream of its own to the client library, whose backend is
  // another object (in another copy of this code, linked into the library). So a stream is
  // recognised by its magic number, not looked up in streams_.
  Result<HostStream *> stream_of(Stream stream) const {
    if (stream == nullptr) return static_cast<HostStream *>(nullptr);
    auto *s = static_cast<HostStream *>(stream);
    if (s->magic != kStreamMagic) return invalid("not a host stream (destroyed?)");
    return s;
  }

  Result<std::shared_ptr<EventMapping>> find_event(const Event &event) const {
    std::lock_guard lock(mu_);
    auto it = events_.find(static_cast<EventMapping *>(event.impl));
    if (it == events_.end()) return invalid("not an event of this backend (destroyed?)");
    return it->second;
  }

  // With mu_ held. A device-side pointer must lie, with all `bytes` after it, inside one block
  // of `device`; a host-side pointer must lie in no block.
  Status check_side(const void *p, uint64_t bytes, bool device_side, int device,
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

  static void run_or_enqueue(HostStream *stream, void *dst, const void *src, uint64_t bytes) {
    // memmove: a copy within one block may overlap, which memcpy does not allow.
    if (stream == nullptr)
      std::memmove(dst, src, bytes);
    else
      stream->enqueue([dst, src, bytes] { std::memmove(dst, src, bytes); });
  }

  const std::string instance_;
  const int devices_;
  const std::optional<Error> config_error_;

  mutable std::mutex mu_;                // guards everything below
  std::map<std::byte *, Range> ranges_;  // blocks allocated or opened here, by start
  std::map<OwnedBlock *, std::unique_ptr<OwnedBlock>> owned_blocks_;
  std::map<std::string, std::unique_ptr<OpenedBlock>> opened_blocks_;  // by device/name/nonce
  uint64_t blocks_opened_ = 0;
  std::map<EventMapping *, std::shared_ptr<EventMapping>> events_;  // created and opened
  std::map<std::string, EventMapping *> opened_events_;             // by device/name/nonce
  uint64_t next_event_ = 0;
  bool swept_events_ = false;  // remove_dead_events ran (at the first create_event)

  // A CUDA event dies with the process that made it; the stand-in's shared memory would not.
  // Removes the event segments of this instance whose creating process is gone (writers
  // killed mid-commit), as this pid namespace sees them, so that /dev/shm does not fill up
  // over crash tests and soaks.
  void remove_dead_events() const {
    const std::string prefix = "loraflip." + instance_ + ".ev";
    DIR *dir = ::opendir("/dev/shm");
    if (dir == nullptr) return;  // not Linux's tmpfs: nothing to sweep this way
    while (const dirent *entry = ::readdir(dir)) {
      const std::string name = entry->d_name;
      if (name.rfind(prefix, 0) != 0) continue;
      // "<prefix><pid>.<n>"; names too long for a handle were hashed and are left alone.
      char *end = nullptr;
      const long pid = std::strtol(name.c_str() + prefix.size(), &end, 10);
      if (pid <= 0 || end == nullptr || *end != '.') continue;
      if (!ipc::process_alive(static_cast<pid_t>(pid), 0)) ipc::Segment::remove(name);
    }
    ::closedir(dir);
  }
  std::map<HostStream *, std::unique_ptr<HostStream>> streams_;
};

}  // namespace

std::unique_ptr<Backend> make_host_backend(const std::string &instance, int devices) {
  std::optional<Error> error;
  if (!valid_name_part(instance))
    error = invalid("instance name '" + instance + "': use 1 to 200 of A-Z a-z 0-9 . _ -");
  else if (devices < 1 || devices > kMaxHostDevices)
    error = invalid("the host backend takes 1 to " + std::to_string(kMaxHostDevices) +
                    " devices, not " + std::to_string(devices));
  return std::make_unique<HostBackend>(instance, error ? 0 : devices, std::move(error));
}

std::unique_ptr<Backend> make_host_backend(const std::string &instance) {
  const char *env = std::getenv("LORAFLIP_HOST_DEVICES");
  if (env == nullptr || *env == '\0') return make_host_backend(instance, 2);
  char *end = nullptr;
  errno = 0;
  const long n = std::strtol(env, &end, 10);
  if (errno != 0 || *end != '\0' || n < 1 || n > kMaxHostDevices)
    return std::make_unique<HostBackend>(
        instance, 0,
        invalid(std::string("LORAFLIP_HOST_DEVICES='") + env + "': expected an integer from 1 to " +
                std::to_string(kMaxHostDevices)));
  return make_host_backend(instance, static_cast<int>(n));
}

void host_pause_stream(Stream stream, bool paused) {
  if (stream == nullptr) return;
  auto *s = static_cast<HostStream *>(stream);
  if (s->magic != kStreamMagic) return;
  s->set_paused(paused);
}

void remove_host_blocks(const std::string &instance, const std::string &tag) {
  for (int device = 0; device < kMaxHostDevices; ++device)
    ipc::Segment::remove(
        fit_name("loraflip." + instance + "." + tag + ".dev" + std::to_string(device)));
}

}  // namespace loraflip::device
