// The one narrow interface between loraflip and a GPU runtime. Nothing outside device/ calls
// CUDA. Two implementations:
//   - cuda: the CUDA runtime (cudaMalloc, cudaIpcGetMemHandle/cudaIpcOpenMemHandle,
//     cudaMemcpyAsync, cudaMemcpyPeerAsync, interprocess events). Built when CUDA is found.
//   - host: POSIX shared memory stands in for device memory, across processes, with the same
//     semantics (a block is exported once and opened once per process; copies and events
//     behave as on a stream), so every path above this interface runs and is tested on
//     machines without a GPU.
// Errors are values: every failing call says which runtime call failed, with file and line.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ipc/result.hpp"

namespace loraflip::device {

// Bytes another process needs to open a block or an event. cudaIpcMemHandle_t and
// cudaIpcEventHandle_t are 64 bytes each; the host implementation keeps a segment name here.
struct IpcHandle {
  unsigned char bytes[64];
};

// A stream of the underlying runtime (cudaStream_t for cuda); nullptr is the default stream.
using Stream = void *;

enum class CopyKind { kHostToDevice, kDeviceToHost, kDeviceToDevice };

// Device memory this process allocated and exported.
struct Block {
  int device = -1;
  std::byte *ptr = nullptr;
  uint64_t bytes = 0;
  IpcHandle handle{};
  void *impl = nullptr;  // implementation-owned
};

// An interprocess event: recorded by a writer after its copies, waited on by the daemon.
struct Event {
  int device = -1;
  IpcHandle handle{};
  void *impl = nullptr;  // implementation-owned
};

// One tensor of a slot, for check_slot: `bytes` bytes of LF_DTYPE_* `dtype`, `offset` bytes from
// the slot's start.
struct TensorExtent {
  uint64_t offset = 0;
  uint64_t bytes = 0;
  int dtype = 0;
};

// The checks check_slot runs (bit flags): those of kernels/validate.hpp that a commit asks for.
inline constexpr unsigned kCheckFinite = 1;    // first_non_finite over every tensor
inline constexpr unsigned kCheckChecksum = 2;  // checksum of the whole slot

// What check_slot found.
struct SlotCheck {
  // The first tensor, in the order given, that holds a NaN or an infinity (-1: none, or
  // kCheckFinite not asked); the index of its first such element, and that element's bytes
  // read as a little-endian integer (its raw bits, e.g. 0x7fc00000 for an f32 NaN).
  int64_t tensor = -1;
  int64_t element = -1;
  uint64_t bits = 0;
  // checksum() of the slot's bytes when kCheckChecksum was asked, else 0.
  uint64_t checksum = 0;
};

// The commit checks of a slot in host-addressable memory, on the CPU: what Backend::check_slot
// answers (same arguments, already checked by the caller), and the reference its CUDA kernels
// are held to bit for bit (tests/device/slot_check_cases.hpp). The daemon's host placements and
// the host stand-in both call it, so "first non-finite value per tensor, then checksum" is
// written once.
SlotCheck check_slot_cpu(const std::byte *slot, uint64_t bytes,
                         std::span<const TensorExtent> tensors, unsigned checks);

// Blocks, streams and events belong to the backend that made or opened them and must not
// outlive it; what is left when it goes is freed with it (as with a CUDA context). Calls may
// come from several threads. copy_peer is issued on `stream`'s device (src_device for nullptr).
// The cuda implementation cannot check open_block's `bytes`; the host one checks it, and that
// every device pointer of a copy lies, with the whole copy, in a block of the named device.
//
// The current device. Like the CUDA runtime, a backend has one current device per thread of
// the process (whichever backend object set it), on which work that names no device runs: an
// allocation, the null stream, a new stream or event, an opened handle. Every call below that
// names a device makes it current through a CurrentDevice (once, in shared code) and puts the
// caller's back before it returns, on every path: the client library runs on its users'
// threads, whose own kernels, cuBLAS handles and torch allocations follow the current device.
// No call leaves the calling thread on another device.
class Backend {
 public:
  virtual ~Backend() = default;
  // "cuda" or "host".
  virtual const char *name() const = 0;
  // How many devices this process may use. An error says why there are none (no driver, a
  // driver older than the runtime, no device, IPC unsupported).
  virtual Result<int> device_count() = 0;

  // The calling thread's current device (cudaGetDevice): 0 on a thread that never set one.
  virtual Result<int> current_device() = 0;
  // Makes `device` the calling thread's current device (cudaSetDevice). Inside loraflip only
  // CurrentDevice calls it, so that the caller's device always comes back.
  virtual Status set_current_device(int device) = 0;

  // Allocates `bytes` on `device` and exports it for other processes. `tag` names it where
  // names exist (host: part of the shared-memory name). Lives until free_block.
  virtual Result<Block> allocate(int device, uint64_t bytes, const std::string &tag) = 0;
  virtual void free_block(Block &block) = 0;
  // Maps a block another process exported. Opened once per process and cached: a second call
  // with the same handle returns the same pointer without opening it again.
  virtual Result<std::byte *> open_block(int device, const IpcHandle &handle, uint64_t bytes) = 0;
  // How many times this process really opened a block (not cache hits): for tests.
  virtual uint64_t blocks_opened() const = 0;
  // Unmaps a block that open_block mapped (cudaIpcCloseMemHandle) and forgets it, so that a
  // later open_block of that handle maps it again. The caller makes sure nothing of this
  // process still reads or writes it: the driver keeps an exporter's memory alive for as long
  // as an importer maps it, so a client that never closes the blocks of a daemon that went
  // keeps that daemon's device memory allocated.
  virtual Status close_block(int device, std::byte *ptr) = 0;
  // How many blocks this process has open now (opened and not closed): for tests.
  virtual uint64_t blocks_open() const = 0;

  // What names a GPU in every process: device ordinals are per process (CUDA_VISIBLE_DEVICES
  // and CUDA_DEVICE_ORDER renumber them), so the daemon publishes this beside each block and
  // every other process maps it to its own ordinal. cudaDeviceProp::uuid for cuda; for the
  // host stand-in, the device's number before LORAFLIP_HOST_VISIBLE_DEVICES renumbers it.
  struct Uuid {
    unsigned char bytes[16];
    bool operator==(const Uuid &) const = default;
  };
  virtual Result<Uuid> device_uuid(int device) = 0;
  // Lets `device` read and write `peer`'s memory directly (cudaDeviceEnablePeerAccess), so that
  // copies between them go over NVLink or PCIe rather than through host memory. False (not an
  // error) where the hardware cannot (cudaDeviceCanAccessPeer); enabling twice is not an error.
  virtual Result<bool> enable_peer_access(int device, int peer) = 0;

  // Asynchronous copy on `stream` (pointers from allocate/open_block or host memory).
  virtual Status copy(void *dst, const void *src, uint64_t bytes, CopyKind kind, int device,
                      Stream stream) = 0;
  // Device-to-device copy between two devices (tensor-parallel replication).
  virtual Status copy_peer(void *dst, int dst_device, const void *src, int src_device,
                           uint64_t bytes, Stream stream) = 0;
  virtual Status synchronize(int device, Stream stream) = 0;
  virtual Result<Stream> create_stream(int device) = 0;
  virtual void destroy_stream(int device, Stream stream) = 0;
  // The device a stream belongs to (cudaStreamGetDevice). Not for the null stream, which is
  // each device's own: the caller knows which device it named.
  virtual Result<int> stream_device(Stream stream) = 0;
  // Whether `stream` of `device` (nullptr: its default stream) is being captured into a CUDA
  // graph (cudaStreamIsCapturing): work queued there runs at each replay, not now.
  virtual Result<bool> capturing(int device, Stream stream) = 0;

  // Interprocess events (no timing).
  virtual Result<Event> create_event(int device) = 0;
  virtual Result<Event> open_event(int device, const IpcHandle &handle) = 0;
  virtual Status record(Event &event, Stream stream) = 0;
  // True once all work captured by the last record() is done. Never blocks. An error with
  // LF_E_DEVICE means the device's context is broken for good (a sticky CUDA error: no work of
  // this process will run on it again); any other error says nothing about the work (an event
  // recorded during a graph capture, say), which may still run.
  virtual Result<bool> query(Event &event) = 0;
  virtual void destroy_event(Event &event) = 0;
  // An event of this process only (no IPC, no timing: cheaper to record and wait on), for
  // fences between streams and for pins released after a stream's work. Destroyed with
  // destroy_event. Its handle is empty.
  virtual Result<Event> create_local_event(int device) = 0;
  // Makes `stream` of `device` (nullptr: that device's default stream) wait, without blocking
  // the caller, until the work captured by `event`'s last record is done
  // (cudaStreamWaitEvent). The event may belong to another device: this is how work issued on
  // one device fences work on another.
  virtual Status wait_event_on(int device, Stream stream, Event &event) = 0;

  // The daemon's commit checks, run where the slot lies: on a GPU by kernels on that GPU, so
  // that only the results travel to the host, never the slot. `slot` is device memory of
  // `device` (from allocate or open_block), `bytes` long. The answer is bit for bit what the
  // CPU functions of kernels/validate.hpp give on a host copy of the slot:
  //   kCheckFinite: first_non_finite over each tensor, in the order given; the first tensor
  //     with a hit is reported (integer dtypes are always finite);
  //   kCheckChecksum: checksum(slot, bytes), the whole slot, padding between tensors included,
  //     which is what a writer computes over its slot for LF_COMMIT_CHECKSUM.
  // Each tensor must lie inside the slot, hold whole elements of a known dtype and start at an
  // address that is a multiple of its element size (else LF_E_INVALID_ARGUMENT). Returns once
  // the results are in host memory. It runs on a stream of its own and does not wait for work
  // on other streams: the caller makes sure the slot's writes are complete (the writer's event).
  // The cuda implementation needs install_cuda_check_kernels() first (LF_E_UNSUPPORTED without).
  virtual Result<SlotCheck> check_slot(int device, const std::byte *slot, uint64_t bytes,
                                       std::span<const TensorExtent> tensors,
                                       unsigned checks) = 0;
};

// Makes a device current on the calling thread for as long as it lives, and then puts back the
// device that was current before: the one way either implementation switches devices. use()
// reads the current device at its first call and switches only when the device differs
// (cudaSetDevice can be slow, and makes a context); it may be called again for another device.
// A failed switch is put back too. Errors of the restore cannot be reported (a destructor) and
// are dropped: it sets a device that was current moments before. One thread only.
class CurrentDevice {
 public:
  explicit CurrentDevice(Backend &backend) noexcept : backend_(backend) {}
  ~CurrentDevice();
  CurrentDevice(const CurrentDevice &) = delete;
  CurrentDevice &operator=(const CurrentDevice &) = delete;

  Status use(int device);

 private:
  Backend &backend_;
  int saved_ = -1;  // the caller's device, read at the first use(); -1: not read yet
  int now_ = -1;    // the thread's device since then; -1: not known (a switch failed)
};

// The host implementation; `instance` keeps the shared-memory names of two daemons apart.
// Its number of devices comes from the environment variable LORAFLIP_HOST_DEVICES (an integer
// from 1 to kMaxHostDevices, read when the backend is made; unset: 2, so that tensor-parallel
// replication runs everywhere). A malformed value makes device_count() and every call that
// names a device fail with LF_E_INVALID_ARGUMENT and the reason.
// Per-process numbering, as CUDA_VISIBLE_DEVICES gives on a GPU node: those are the machine's
// "physical" devices, and LORAFLIP_HOST_VISIBLE_DEVICES (read when the backend is made) says
// which of them this process sees, in its own order: "1" makes physical device 1 this
// process's device 0 and hides device 0; "1,0" swaps them; unset, every device in order. Every
// entry must be a physical device number, given once (else a config error as above); set but
// empty, the process sees no device (LF_E_UNSUPPORTED, as CUDA_VISIBLE_DEVICES=""). Every call
// takes and answers this process's ordinals (the current device, default streams, pointer
// checks included); only what other processes see uses the physical number: shared-memory
// names and device_uuid. So a daemon's device number means nothing in a client that sees
// another numbering, as on a GPU, and open_block refuses a block of another physical device
// than the ordinal it is opened on (where CUDA would quietly map it into the wrong GPU
// through peer access).
// Shared-memory names: blocks "loraflip.<instance>.<tag>.dev<physical device>", events
// "loraflip.<instance>.ev<pid>.<n>" (a hash stands in for a name too long for a handle).
// Every object is created with mode 0660. Streams run on worker threads: make the backend in
// the process that uses it (after fork, not before).
// Its current device (Backend::current_device) is kept per thread in one place per process,
// shared by every copy of this code that the process links (a test program links its own and
// libloraflip's), as CUDA keeps it in its driver: a thread that set device 1 through a backend
// of its own is on device 1 for the library's backend too. A new thread starts on device 0.
// Its work on a device (what CUDA runs on the current device: allocations, opened handles,
// streams, events and their records, copies, checks) refuses to run while another device is
// current, where CUDA would quietly use the wrong one: a call that forgets to switch fails its
// tests instead of working by luck.
std::unique_ptr<Backend> make_host_backend(const std::string &instance);
// The same with an explicit number of devices (1..kMaxHostDevices); the environment is ignored.
std::unique_ptr<Backend> make_host_backend(const std::string &instance, int devices);
// The same with the physical device of each ordinal given (LORAFLIP_HOST_VISIBLE_DEVICES's
// list, e.g. {1, 0}): distinct numbers below `devices`, at least one. The environment is ignored.
std::unique_ptr<Backend> make_host_backend(const std::string &instance, int devices,
                                           std::vector<int> visible);
inline constexpr int kMaxHostDevices = 16;
// Test hooks of the host implementation (they do nothing to streams of another kind):
// A paused host stream queues its work (copies, event records, waits) and runs none of it until
// unpaused, as a GPU stream stuck behind long kernels would.
void host_pause_stream(Stream stream, bool paused);
// The same for the default stream of `device` (in this process's numbering), which every
// backend object of the process shares, as CUDA's legacy default stream is one per device.
void host_pause_default_stream(int device, bool paused);
// A simulated graph capture of `stream`: while it lasts, Backend::capturing says so, an event
// recorded on the stream fails its queries (cudaErrorCapturedEvent) until recorded again
// outside a capture, a synchronize of it fails, and copies on it are refused.
void host_capture_stream(Stream stream, bool capturing);
// Queues `work` on `stream` (nullptr: the default stream of `device`): a user's kernel or
// tensor copy that writes through a view, which CUDA runs later, in stream order.
void host_enqueue(Stream stream, int device, std::function<void()> work);
// Fails `device`'s context for good, for the rest of the process: every later call that works
// on it fails with LF_E_DEVICE, as every CUDA call does after a sticky error.
void host_fail_device(int device);
// Removes what the host implementation of `instance` left in shared memory under `tag` on
// devices 0..kMaxHostDevices-1 (a killed daemon's arenas): device memory dies with its process
// on a GPU, and the stand-in must not outlive it either. Only the owner of the instance (the
// daemon, holding its runtime directory's lock) may call it.
void remove_host_blocks(const std::string &instance, const std::string &tag);
// The CUDA implementation, or an LF_E_UNSUPPORTED error when this build has no CUDA.
Result<std::unique_ptr<Backend>> make_cuda_backend();
// Hands the CUDA check kernels (kernels/device_kernels.hpp) to the cuda implementation's
// check_slot, for every backend of this process; call it once before checking slots. It sits in
// a library of its own (lf_device_checks, in device_dep) so that libloraflip, which links this
// folder's library whole and never checks a slot, carries no kernel images. The daemon calls it
// when it opens its devices. Does nothing in builds without CUDA. Thread-safe.
void install_cuda_check_kernels();

// Polls `event` until it is complete or `timeout_ms` has passed (LF_E_TIMEOUT). The bounded
// wait of a consumer: an event whose writer died before its stream reached the record may stay
// pending forever, so never wait on one without a deadline. Errors of query() pass through.
Status wait_event(Backend &backend, Event &event, int timeout_ms);

}  // namespace loraflip::device
