// What the files of the host implementation share (internal to device/): the layout of its
// handles and segments, its streams, and the HostBackend class, whose members are defined by
// topic:
//   device_host.cpp          construction, the device count and current device, the factories,
//                            remove_host_blocks
//   device_host_current.cpp  the current device of each thread, one per process (exported)
//   device_host_memory.cpp   blocks: allocate, free, export, open once per process
//   device_host_streams.cpp  streams (a worker thread each): create, destroy, synchronize, pause
//   device_host_copies.cpp   copies and check_slot, with the check of every device pointer
//   device_host_events.cpp   interprocess events: create, open, record, query, destroy, sweep
// Names have external linkage (a class cannot be split otherwise), in host_detail; libloraflip,
// which links this folder whole, exports none of them (client/c/libloraflip.map).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "device/device.hpp"
#include "ipc/arena.hpp"

// The calling thread's current device, shared by every copy of the host implementation in the
// process (device_host_current.cpp).
extern "C" int *loraflip_host_thread_device() noexcept;
// The default stream of `device` (a HostStream, made at the first call), one per device for the
// whole process and shared the same way, as CUDA's legacy default stream is one per device of a
// process (device_host_current.cpp). Null for a device out of range.
extern "C" void *loraflip_host_default_stream(int device) noexcept;
// The devices whose context a test failed for good (host_fail_device), one bit each.
extern "C" std::atomic<uint32_t> *loraflip_host_failed_devices() noexcept;

namespace loraflip::device::host_detail {

using ipc::Segment;

inline constexpr uint32_t kBlockMagic = 0x4c46424b;  // "LFBK"
inline constexpr uint32_t kEventMagic = 0x4c464556;  // "LFEV"
// "LFStream": tells a host stream from anything else (stream_of, host_pause_stream).
inline constexpr uint64_t kStreamMagic = 0x4c4653747265616dULL;

// What a host handle holds; it fills the 64 bytes of an IpcHandle.
struct HostHandle {
  uint32_t magic;     // kBlockMagic or kEventMagic
  uint32_t creator;   // the pid of the process that exported it: CUDA refuses to import there
  uint64_t bytes;     // a block's usable bytes; 0 for an event
  uint64_t nonce;     // random per object: tells a reused name from the object it named
  char name[40];      // the shared-memory name, NUL-terminated
};
static_assert(sizeof(HostHandle) == sizeof(IpcHandle));
static_assert(std::is_trivially_copyable_v<HostHandle>);

// The head of every host segment. Written by the creator before its handle leaves the process
// and never again. These segments stand in for memory the GPU driver owns, so their layout is
// private to the host implementation rather than declared in ipc/ with the arena's.
struct SegmentHead {
  uint64_t magic;  // kBlockMagic or kEventMagic
  uint64_t nonce;  // the handle's nonce
  uint64_t bytes;  // a block's usable bytes; 0 for an event
};
// A block's bytes start here: cudaMalloc aligns to at least 256 bytes, and so does this.
inline constexpr uint64_t kDataOffset = 256;
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
inline constexpr uint64_t kPending = 1;

Error invalid(std::string message);
// 1 to 200 of A-Z a-z 0-9 . _ -: an instance name or a block tag.
bool valid_name_part(const std::string &s);
// The name itself when it fits a handle, else "loraflip.<FNV-1a 64 of the name>".
std::string fit_name(const std::string &full);
// From the kernel's random source on every call: a generator seeded once would repeat its
// sequence in every child forked after it.
uint64_t make_nonce();
std::string hex(uint64_t v);
// The handle of a block or an event (`magic`), checked; `what` names it in the error.
Result<HostHandle> parse_handle(const IpcHandle &handle, uint32_t magic, const char *what);

// Executes queued operations in order on one worker thread, like a GPU stream.
class HostStream {
 public:
  explicit HostStream(int device) : device_(device), worker_([this] { run(); }) {}
  ~HostStream();
  HostStream(const HostStream &) = delete;
  HostStream &operator=(const HostStream &) = delete;

  void enqueue(std::function<void()> op);
  // Blocks until everything queued so far has run (forever while paused, as on a GPU).
  void wait_idle();
  void set_paused(bool paused);
  int device() const { return device_; }
  // A test hook's simulated graph capture (host_capture_stream): see HostBackend::record.
  void set_capturing(bool capturing) { capturing_.store(capturing); }
  bool capturing() const { return capturing_.load(); }

  const uint64_t magic = kStreamMagic;

 private:
  void run();

  const int device_;
  std::mutex mu_;
  std::condition_variable work_cv_, idle_cv_;
  std::deque<std::function<void()>> queue_;
  bool paused_ = false, stop_ = false, running_ = false;
  std::atomic<bool> capturing_{false};
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
  pid_t owner = 0;  // for opened events: the process that created it
  // Guarded by the backend's mu_. Set when done by the stream op of this process's last
  // record, and what wait_event_on waits for: the shared word cannot tell which of two records
  // on two streams completed (null: never recorded here, or recorded on the null stream of a
  // device that ran it).
  std::shared_ptr<std::atomic<bool>> last_record_done;
  // Guarded by mu_: the last record was queued in a (simulated) graph capture, so that query
  // fails as cudaEventQuery does for cudaErrorCapturedEvent until it is recorded again.
  bool captured = false;
};

class HostBackend final : public Backend {
 public:
  // `visible`: the physical device number of each of this process's ordinals
  // (LORAFLIP_HOST_VISIBLE_DEVICES); empty with a config error.
  HostBackend(std::string instance, std::vector<int> visible, std::optional<Error> config_error)
      : instance_(std::move(instance)),
        devices_(static_cast<int>(visible.size())),
        visible_(std::move(visible)),
        config_error_(std::move(config_error)) {}
  ~HostBackend() override;

  const char *name() const override { return "host"; }
  Result<int> device_count() override;
  Result<int> current_device() override;
  Status set_current_device(int device) override;

  // device_host_memory.cpp
  Result<Block> allocate(int device, uint64_t bytes, const std::string &tag) override;
  void free_block(Block &block) override;
  Result<std::byte *> open_block(int device, const IpcHandle &handle, uint64_t bytes) override;
  uint64_t blocks_opened() const override;

  // device_host_copies.cpp
  Status copy(void *dst, const void *src, uint64_t bytes, CopyKind kind, int device,
              Stream stream) override;
  Status copy_peer(void *dst, int dst_device, const void *src, int src_device, uint64_t bytes,
                   Stream stream) override;
  // Synchronous in the caller's thread, like every host call on the null stream; it does not
  // wait for the host streams, as the CUDA check does not wait for other streams.
  Result<SlotCheck> check_slot(int device, const std::byte *slot, uint64_t bytes,
                               std::span<const TensorExtent> tensors, unsigned checks) override;

  // device_host_streams.cpp
  Status synchronize(int device, Stream stream) override;
  Result<Stream> create_stream(int device) override;
  void destroy_stream(int device, Stream stream) override;

  // device_host_events.cpp
  Result<Event> create_event(int device) override;
  Result<Event> open_event(int device, const IpcHandle &handle) override;
  Status record(Event &event, Stream stream) override;
  Result<bool> query(Event &event) override;
  void destroy_event(Event &event) override;
  Result<Event> create_local_event(int device) override;
  Status wait_event_on(int device, Stream stream, Event &event) override;
  Result<int> stream_device(Stream stream) override;
  Result<bool> capturing(int device, Stream stream) override;

  // device_host_memory.cpp
  Status close_block(int device, std::byte *ptr) override;
  uint64_t blocks_open() const override;
  Result<Uuid> device_uuid(int device) override;
  Result<bool> enable_peer_access(int device, int peer) override;

 private:
  struct Range {
    std::byte *end;
    int device;
  };

  Status check_device(int device) const;
  // Work that CUDA runs on the calling thread's current device (an allocation, an opened
  // handle, the null stream, a new stream or event, a record, a check) runs here only while
  // `device`, the one the call names, is current: each call switches through a CurrentDevice
  // first. CUDA would quietly use whatever device is current; the stand-in refuses, naming
  // `what`, so that a call that does not switch fails its tests.
  Status require_current(int device, const char *what) const;

  // Like a cudaStream_t, a host stream belongs to the process, not to the backend object that
  // made it: a writer passes a stream of its own to the client library, whose backend is
  // another object (in another copy of this code, linked into the library). So a stream is
  // recognised by its magic number, not looked up in streams_.
  Result<HostStream *> stream_of(Stream stream) const;
  // Where work issued on `stream` for `device` runs: the stream itself, or for the null stream
  // that device's default stream (one per device of the process, asynchronous as in CUDA: a
  // copy or a record on it is done later, when the stream gets there, not in the call).
  static HostStream *issuing_stream(HostStream *stream, int device);

  Result<std::shared_ptr<EventMapping>> find_event(const Event &event) const;

  // With mu_ held. A device-side pointer must lie, with all `bytes` after it, inside one block
  // of `device`; a host-side pointer must lie in no block.
  Status check_side(const void *p, uint64_t bytes, bool device_side, int device,
                    const char *what) const;

  // Queues a copy on `stream` (never null: see issuing_stream). Refused on a capturing stream:
  // the stand-in cannot replay a graph, and a copy that ran now would be kinder than CUDA.
  static Status enqueue_copy(HostStream *stream, void *dst, const void *src, uint64_t bytes);
  // Makes an event of `device` with its segment; `exported`: its handle leaves the process.
  Result<Event> make_event(int device, bool exported);

  // A CUDA event dies with the process that made it; the stand-in's shared memory would not.
  // Removes the event segments of this instance whose creating process is gone (writers
  // killed mid-commit), as this pid namespace sees them, so that /dev/shm does not fill up
  // over crash tests and soaks.
  void remove_dead_events() const;

  const std::string instance_;
  const int devices_;  // this process's ordinals: 0..devices_-1
  // The physical number of each ordinal: what names a device in every process (shared-memory
  // names, device_uuid, a block's head), where ordinals are per process as in CUDA. Everything
  // else (check_device, ranges_, the current device, default streams) is in ordinals.
  const std::vector<int> visible_;
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
  std::map<HostStream *, std::unique_ptr<HostStream>> streams_;
};

}  // namespace loraflip::device::host_detail
