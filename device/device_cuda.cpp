// The CUDA runtime implementation of the device interface. Plain C++ against cuda_runtime.h
// (no nvcc): every call makes the device it works on current through a CurrentDevice, which
// puts the caller's device back on return (cudaSetDevice appears only in set_current_device),
// and every runtime status becomes an error value that names the call, the CUDA error and the
// file and line.
// check_slot launches the check kernels of kernels/device_kernels.hpp through a table that
// install_cuda_check_kernels() hands over (device/cuda_check_kernels.cpp), so that this file
// links without them.
#include <atomic>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "device/device.hpp"
#include "device/slot_check.hpp"
#include "ipc/dtype.hpp"
#include "kernels/device_kernels.hpp"

namespace loraflip::device {
namespace {

// Set once by install_cuda_check_kernels, read by every check_slot: release/acquire publish
// the table.
std::atomic<const detail::CudaCheckKernels *> g_check_kernels{nullptr};

static_assert(sizeof(cudaIpcMemHandle_t) == sizeof(IpcHandle));
static_assert(sizeof(cudaIpcEventHandle_t) == sizeof(IpcHandle));

int status_code(cudaError_t e) {
  switch (e) {
    case cudaErrorInvalidValue:
    case cudaErrorInvalidDevice:
    case cudaErrorInvalidResourceHandle:
    case cudaErrorInvalidDevicePointer:
    case cudaErrorInvalidMemcpyDirection:
      return LF_E_INVALID_ARGUMENT;
    case cudaErrorInsufficientDriver:
    case cudaErrorNoDevice:
    case cudaErrorNotSupported:
    case cudaErrorSystemDriverMismatch:
      return LF_E_UNSUPPORTED;
    // Sticky errors: the context is corrupt and every later call of this process fails with
    // the same error; only a new process gets a working GPU again.
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorLaunchTimeout:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorECCUncorrectable:
    case cudaErrorAssert:
      return LF_E_DEVICE;
    default:
      return LF_E_SYSTEM;
  }
}

// "12.4" from 12040, the encoding of cudaDriverGetVersion and cudaRuntimeGetVersion.
std::string cuda_version(int v) {
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

Error cuda_error(cudaError_t e, const char *call, const char *file, int line) {
  std::string message = std::string(call) + " failed: " + cudaGetErrorName(e) + " (" +
                        cudaGetErrorString(e) + ") at " + file + ":" + std::to_string(line);
  if (e == cudaErrorInsufficientDriver || e == cudaErrorSystemDriverMismatch) {
    int driver = 0, runtime = 0;
    (void)cudaDriverGetVersion(&driver);
    (void)cudaRuntimeGetVersion(&runtime);
    // The runtime gives the same error when there is no driver at all (version 0).
    if (driver == 0)
      message = "no NVIDIA driver (libcuda.so cannot be loaded; loraflip was built with CUDA " +
                cuda_version(runtime) + "): " + message;
    else
      message = "the NVIDIA driver is too old for this CUDA runtime (the driver supports CUDA " +
                cuda_version(driver) + ", loraflip was built with CUDA " + cuda_version(runtime) +
                "; update the driver): " + message;
  } else if (e == cudaErrorNoDevice) {
    message = "no CUDA device: " + message;
  } else if (e == cudaErrorMemoryAllocation) {
    message = "out of device memory: " + message;
  }
  return make_error(status_code(e), std::move(message));
}

// Returns an Error (which converts to Status and to any Result) when `call` fails.
#define LF_CUDA_CHECK(call)                                          \
  do {                                                               \
    const cudaError_t lf_cuda_status_ = (call);                      \
    if (lf_cuda_status_ != cudaSuccess)                              \
      return cuda_error(lf_cuda_status_, #call, __FILE__, __LINE__); \
  } while (0)

cudaMemcpyKind to_cuda(CopyKind kind) {
  switch (kind) {
    case CopyKind::kHostToDevice:
      return cudaMemcpyHostToDevice;
    case CopyKind::kDeviceToHost:
      return cudaMemcpyDeviceToHost;
    case CopyKind::kDeviceToDevice:
      return cudaMemcpyDeviceToDevice;
  }
  return cudaMemcpyDefault;
}

cudaStream_t to_cuda(Stream stream) { return static_cast<cudaStream_t>(stream); }
cudaEvent_t to_cuda_event(const Event &event) { return static_cast<cudaEvent_t>(event.impl); }

// Opened handles are cached by device and handle bytes.
std::string cache_key(int device, const IpcHandle &handle) {
  return std::to_string(device) + "/" +
         std::string(reinterpret_cast<const char *>(handle.bytes), sizeof handle.bytes);
}

bool all_zero(const IpcHandle &handle) {
  for (unsigned char b : handle.bytes)
    if (b != 0) return false;
  return true;
}

Error invalid(std::string message) { return make_error(LF_E_INVALID_ARGUMENT, std::move(message)); }

bool is_float(int dtype) {
  return dtype == LF_DTYPE_F32 || dtype == LF_DTYPE_F16 || dtype == LF_DTYPE_BF16 ||
         dtype == LF_DTYPE_F64;
}

// A check launcher's status (kernels/device_kernels.hpp) as an error that names the launch.
Error launch_error(int status, const std::string &what) {
  std::string why;
  switch (status) {
    case LF_E_UNSUPPORTED:
      why = "no usable GPU, or no kernel image for this GPU (this build's gpu_archs)";
      break;
    case LF_E_INVALID_ARGUMENT: why = "invalid argument"; break;
    default: why = "CUDA error"; break;
  }
  return make_error(status, what + " failed with status " + std::to_string(status) + " (" +
                                why + ")");
}

class CudaBackend final : public Backend {
 public:
  CudaBackend() = default;  // no CUDA call until the first use, so a caller may still fork
  CudaBackend(const CudaBackend &) = delete;
  CudaBackend &operator=(const CudaBackend &) = delete;

  // Closes what this process opened and destroys the events it created and did not destroy.
  // Errors are ignored: at exit the runtime may already be unloading.
  ~CudaBackend() override {
    CurrentDevice on(*this);
    for (auto &[key, block] : opened_blocks_) {
      (void)on.use(block.device);
      (void)cudaIpcCloseMemHandle(block.ptr);
    }
    for (auto &[key, event] : opened_events_) {
      (void)on.use(event.device);
      (void)cudaEventDestroy(event.event);
    }
    for (auto &[event, device] : created_events_) {
      (void)on.use(device);
      (void)cudaEventDestroy(event);
    }
    for (auto &[device, context] : check_contexts_) {
      (void)on.use(device);
      if (context->stream != nullptr) (void)cudaStreamDestroy(context->stream);
      (void)cudaFree(context->workspace);
      (void)cudaFree(context->results);
    }
  }

  const char *name() const override { return "cuda"; }

  Result<int> device_count() override {
    std::lock_guard lock(mu_);
    if (device_count_ > 0) return device_count_;
    int n = 0;
    LF_CUDA_CHECK(cudaGetDeviceCount(&n));
    if (n <= 0) return make_error(LF_E_UNSUPPORTED, "no CUDA device (cudaGetDeviceCount gave 0)");
    for (int d = 0; d < n; ++d) {
      int unified = 0;
      LF_CUDA_CHECK(cudaDeviceGetAttribute(&unified, cudaDevAttrUnifiedAddressing, d));
      if (unified == 0)
        return make_error(LF_E_UNSUPPORTED, "CUDA device " + std::to_string(d) +
                                                " has no unified addressing, which CUDA IPC needs");
#if CUDART_VERSION >= 12000
      int ipc_events = 0;
      LF_CUDA_CHECK(cudaDeviceGetAttribute(&ipc_events, cudaDevAttrIpcEventSupport, d));
      if (ipc_events == 0)
        return make_error(LF_E_UNSUPPORTED,
                          "CUDA device " + std::to_string(d) +
                              " does not support interprocess events (CUDA IPC is unavailable "
                              "on this platform, e.g. WSL or some virtual GPUs)");
#endif
    }
    device_count_ = n;
    return n;
  }

  // cudaGetDevice gives 0 on a thread that never chose a device, so putting that thread back
  // makes device 0's context if it has none yet (cudaSetDevice initializes it since CUDA 12).
  // Today every client opens every served device's block anyway, device 0's included.
  Result<int> current_device() override {
    int device = 0;
    LF_CUDA_CHECK(cudaGetDevice(&device));
    return device;
  }

  Status set_current_device(int device) override {
    LF_CUDA_CHECK(cudaSetDevice(device));
    return {};
  }

  Result<Block> allocate(int device, uint64_t bytes,
                         const std::string & /*tag: no names*/) override {
    if (bytes == 0) return invalid("a block of 0 bytes");
    CurrentDevice on(*this);
    if (Status s = on.use(device); !s) return s.error();
    void *ptr = nullptr;
    LF_CUDA_CHECK(cudaMalloc(&ptr, bytes));
    cudaIpcMemHandle_t handle;
    const cudaError_t exported = cudaIpcGetMemHandle(&handle, ptr);
    if (exported != cudaSuccess) {
      (void)cudaFree(ptr);
      return cuda_error(exported, "cudaIpcGetMemHandle(&handle, ptr)", __FILE__, __LINE__);
    }
    // Zeroed, as the host implementation's fresh shared memory is. cudaMemset is asynchronous
    // (on the legacy default stream): wait for it before the handle can reach a writer, whose
    // copies on another stream would otherwise race the zeroing.
    cudaError_t zeroed = cudaMemset(ptr, 0, bytes);
    if (zeroed == cudaSuccess) zeroed = cudaStreamSynchronize(nullptr);
    if (zeroed != cudaSuccess) {
      (void)cudaFree(ptr);
      return cuda_error(zeroed, "cudaMemset(ptr, 0, bytes)", __FILE__, __LINE__);
    }
    Block block;
    block.device = device;
    block.ptr = static_cast<std::byte *>(ptr);
    block.bytes = bytes;
    std::memcpy(block.handle.bytes, &handle, sizeof handle);
    return block;
  }

  void free_block(Block &block) override {
    if (block.ptr == nullptr) return;
    CurrentDevice on(*this);
    (void)on.use(block.device);
    (void)cudaFree(block.ptr);
    block.ptr = nullptr;
  }

  // CUDA cannot tell the size of an opened block, so `bytes` is not checked here.
  Result<std::byte *> open_block(int device, const IpcHandle &handle, uint64_t bytes) override {
    if (bytes == 0) return invalid("open_block of 0 bytes");
    if (all_zero(handle)) return invalid("an empty block handle");
    const std::string key = cache_key(device, handle);
    std::lock_guard lock(mu_);
    if (auto it = opened_blocks_.find(key); it != opened_blocks_.end())
      return static_cast<std::byte *>(it->second.ptr);
    CurrentDevice on(*this);
    if (Status s = on.use(device); !s) return s.error();
    cudaIpcMemHandle_t h;
    std::memcpy(&h, handle.bytes, sizeof h);
    void *ptr = nullptr;
    LF_CUDA_CHECK(cudaIpcOpenMemHandle(&ptr, h, cudaIpcMemLazyEnablePeerAccess));
    opened_blocks_.emplace(key, OpenedBlock{ptr, device});
    ++blocks_opened_;
    return static_cast<std::byte *>(ptr);
  }

  uint64_t blocks_opened() const override {
    std::lock_guard lock(mu_);
    return blocks_opened_;
  }

  Status close_block(int device, std::byte *ptr) override {
    std::lock_guard lock(mu_);
    for (auto it = opened_blocks_.begin(); it != opened_blocks_.end(); ++it) {
      if (it->second.ptr != ptr) continue;
      if (it->second.device != device)
        return invalid("close_block names device " + std::to_string(device) +
                       ", but the block was opened on device " +
                       std::to_string(it->second.device));
      CurrentDevice on(*this);
      if (Status s = on.use(device); !s) return s.error();
      opened_blocks_.erase(it);  // forgotten even if the close fails: it cannot be retried
      LF_CUDA_CHECK(cudaIpcCloseMemHandle(ptr));
      return {};
    }
    return invalid("close_block of a pointer that open_block did not give (or closed already)");
  }

  uint64_t blocks_open() const override {
    std::lock_guard lock(mu_);
    return opened_blocks_.size();
  }

  Result<Uuid> device_uuid(int device) override {
    cudaDeviceProp prop{};
    LF_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    static_assert(sizeof prop.uuid.bytes == sizeof(Uuid::bytes));
    Uuid id;
    std::memcpy(id.bytes, prop.uuid.bytes, sizeof id.bytes);
    return id;
  }

  Result<bool> enable_peer_access(int device, int peer) override {
    if (device == peer) return true;
    int can = 0;
    LF_CUDA_CHECK(cudaDeviceCanAccessPeer(&can, device, peer));
    if (can == 0) return false;
    CurrentDevice on(*this);
    if (Status s = on.use(device); !s) return s.error();
    const cudaError_t enabled = cudaDeviceEnablePeerAccess(peer, 0);
    if (enabled == cudaErrorPeerAccessAlreadyEnabled) {
      (void)cudaGetLastError();  // not an error here: do not leave it as the thread's last
      return true;
    }
    if (enabled != cudaSuccess)
      return cuda_error(enabled, "cudaDeviceEnablePeerAccess(peer, 0)", __FILE__, __LINE__);
    return true;
  }

  Status copy(void *dst, const void *src, uint64_t bytes, CopyKind kind, int device,
              Stream stream) override {
    if (bytes == 0) return {};
    CurrentDevice on(*this);
    if (Status s = on.use(device); !s) return s.error();
    LF_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, to_cuda(kind), to_cuda(stream)));
    return {};
  }

  // Issued from the stream's device (src_device for the null stream, or where the runtime
  // cannot say which device a stream belongs to).
  Status copy_peer(void *dst, int dst_device, const void *src, int src_device, uint64_t bytes,
                   Stream stream) override {
    if (bytes == 0) return {};
    int issuer = src_device;
#if CUDART_VERSION >= 12080
    if (stream != nullptr) LF_CUDA_CHECK(cudaStreamGetDevice(to_cuda(stream), &issuer));
#endif
    CurrentDevice on(*this);
    if (Status s = on.use(issuer); !s) return s.error();
    LF_CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_device, src, src_device, bytes, to_cuda(stream)));
    return {};
  }

  Status synchronize(int device, Stream stream) override {
    CurrentDevice on(*this);
    if (Status s = on.use(device); !s) return s.error();
    LF_CUDA_CHECK(cudaStreamSynchronize(to_cuda(stream)));
    return {};
  }

  Result<Stream> create_stream(int device) override {
    CurrentDevice on(*this);
    if (Status s = on.use(device); !s) return s.error();
    cudaStream_t stream = nullptr;
    LF_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    return static_cast<Stream>(stream);
  }

  void destroy_stream(int device, Stream stream) override {
    if (stream == nullptr) return;
    CurrentDevice on(*this);
    (void)on.use(device);
    (void)cudaStreamDestroy(to_cuda(stream));
  }

  Result<int> stream_device(Stream stream) override {
    if (stream == nullptr) return invalid("stream_device of the null stream (each device has one)");
#if CUDART_VERSION >= 12080
    int device = -1;
    LF_CUDA_CHECK(cudaStreamGetDevice(to_cuda(stream), &device));
    return device;
#else
    return make_error(LF_E_UNSUPPORTED, "which device a stream belongs to needs CUDA 12.8");
#endif
  }

  Result<bool> capturing(int device, Stream stream) override {
    CurrentDevice on(*this);  // the null stream is the current device's
    if (Status s = on.use(device); !s) return s.error();
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    LF_CUDA_CHECK(cudaStreamIsCapturing(to_cuda(stream), &status));
    return status != cudaStreamCaptureStatusNone;
  }

  Result<Event> create_event(int device) override {
    CurrentDevice on(*this);
    if (Status s = on.use(device); !s) return s.error();
    cudaEvent_t event = nullptr;
    LF_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventInterprocess | cudaEventDisableTiming));
    cudaIpcEventHandle_t handle;
    const cudaError_t exported = cudaIpcGetEventHandle(&handle, event);
    if (exported != cudaSuccess) {
      (void)cudaEventDestroy(event);
      return cuda_error(exported, "cudaIpcGetEventHandle(&handle, event)", __FILE__, __LINE__);
    }
    Event out;
    out.device = device;
    std::memcpy(out.handle.bytes, &handle, sizeof handle);
    out.impl = event;
    std::lock_guard lock(mu_);
    created_events_.emplace(event, device);
    return out;
  }

  Result<Event> create_local_event(int device) override {
    CurrentDevice on(*this);
    if (Status s = on.use(device); !s) return s.error();
    cudaEvent_t event = nullptr;
    LF_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
    Event out;
    out.device = device;
    out.impl = event;
    std::lock_guard lock(mu_);
    created_events_.emplace(event, device);
    return out;
  }

  Status wait_event_on(int device, Stream stream, Event &event) override {
    if (event.impl == nullptr) return invalid("a wait on a destroyed event");
    CurrentDevice on(*this);  // the null stream is the current device's
    if (Status s = on.use(device); !s) return s.error();
    LF_CUDA_CHECK(cudaStreamWaitEvent(to_cuda(stream), to_cuda_event(event), 0));
    return {};
  }

  Result<Event> open_event(int device, const IpcHandle &handle) override {
    if (all_zero(handle)) return invalid("an empty event handle");
    const std::string key = cache_key(device, handle);
    Event out;
    out.device = device;
    out.handle = handle;
    std::lock_guard lock(mu_);
    if (auto it = opened_events_.find(key); it != opened_events_.end()) {
      ++it->second.refs;
      out.impl = it->second.event;
      return out;
    }
    CurrentDevice on(*this);
    if (Status s = on.use(device); !s) return s.error();
    cudaIpcEventHandle_t h;
    std::memcpy(&h, handle.bytes, sizeof h);
    cudaEvent_t event = nullptr;
    LF_CUDA_CHECK(cudaIpcOpenEventHandle(&event, h));
    opened_events_.emplace(key, OpenedEvent{event, device, 1});
    opened_keys_.emplace(event, key);
    out.impl = event;
    return out;
  }

  Status record(Event &event, Stream stream) override {
    if (event.impl == nullptr) return invalid("record of a destroyed event");
    CurrentDevice on(*this);
    if (Status s = on.use(event.device); !s) return s.error();
    LF_CUDA_CHECK(cudaEventRecord(to_cuda_event(event), to_cuda(stream)));
    return {};
  }

  Result<bool> query(Event &event) override {
    if (event.impl == nullptr) return invalid("query of a destroyed event");
    CurrentDevice on(*this);
    if (Status s = on.use(event.device); !s) return s.error();
    const cudaError_t status = cudaEventQuery(to_cuda_event(event));
    if (status == cudaSuccess) return true;
    if (status == cudaErrorNotReady) {
      // Not an error; make sure it does not linger as the thread's last error, where a kernel
      // launcher's cudaGetLastError() would take it for its own failure.
      if (cudaPeekAtLastError() == cudaErrorNotReady) (void)cudaGetLastError();
      return false;
    }
    return cuda_error(status, "cudaEventQuery(event)", __FILE__, __LINE__);
  }

  void destroy_event(Event &event) override {
    if (event.impl == nullptr) return;
    cudaEvent_t e = to_cuda_event(event);
    CurrentDevice on(*this);
    std::lock_guard lock(mu_);
    if (auto it = created_events_.find(e); it != created_events_.end()) {
      (void)on.use(it->second);
      (void)cudaEventDestroy(e);
      created_events_.erase(it);
    } else if (auto k = opened_keys_.find(e); k != opened_keys_.end()) {
      auto it2 = opened_events_.find(k->second);
      if (it2 != opened_events_.end() && --it2->second.refs == 0) {
        (void)on.use(it2->second.device);
        (void)cudaEventDestroy(e);
        opened_events_.erase(it2);
        opened_keys_.erase(k);
      }
    }
    event.impl = nullptr;
  }

  // One launch for the first non-finite element of every float tensor
  // (lf_cuda_first_non_finite_tensors) and one pair for the checksum, all on this device's check
  // stream; then one copy of the results (8 bytes per tensor scanned and 8 for the checksum) and,
  // only when a tensor failed, of the failing element.
  Result<SlotCheck> check_slot(int device, const std::byte *slot, uint64_t bytes,
                               std::span<const TensorExtent> tensors, unsigned checks) override {
    if (Status s = detail::check_slot_arguments(slot, bytes, tensors, checks); !s)
      return s.error();
    SlotCheck out;
    std::vector<size_t> scanned;  // tensors that go to the GPU: the rest are finite by dtype
    std::vector<kernels::CudaScanTensor> scan;  // the same, as the launcher takes them
    if (checks & kCheckFinite)
      for (size_t t = 0; t < tensors.size(); ++t)
        if (is_float(tensors[t].dtype) && tensors[t].bytes != 0) {
          const TensorExtent &e = tensors[t];
          scanned.push_back(t);
          scan.push_back({e.offset, e.bytes / ipc::dtype_size(e.dtype), e.dtype, 0});
        }
    const bool checksum = (checks & kCheckChecksum) != 0;
    const size_t entries = scanned.size() + (checksum ? 1 : 0);
    if (entries == 0) return out;
    const detail::CudaCheckKernels *launch = g_check_kernels.load(std::memory_order_acquire);
    if (launch == nullptr)
      return make_error(LF_E_UNSUPPORTED,
                        "this program has no CUDA check kernels: install_cuda_check_kernels() "
                        "was not called (the daemon calls it when it opens its devices)");
    // The size of the scan's workspace (its copy of `scan`): no CUDA call.
    size_t table_bytes = 0;
    if (!scan.empty()) {
      const int rc = launch->first_non_finite_tensors(nullptr, scan.data(), scan.size(), nullptr,
                                                      nullptr, &table_bytes, nullptr);
      if (rc != LF_OK) return launch_error(rc, "lf_cuda_first_non_finite_tensors (size query)");
    }
    const size_t table_words = (table_bytes + sizeof(uint64_t) - 1) / sizeof(uint64_t);
    CurrentDevice on(*this);
    if (Status s = on.use(device); !s) return s.error();
    // The launchers read their launch status with cudaGetLastError, which also returns a
    // failure of any earlier runtime call on this thread (a bad event handle, say) that was
    // already reported to its caller: clear it so that it does not fail this check.
    (void)cudaGetLastError();
    Result<CheckContext *> made = check_context(device);
    if (!made) return made.error();
    CheckContext &c = *made.value();
    std::lock_guard lock(c.mu);
    if (Status s = c.reserve(entries + table_words); !s) return s.error();

    if (!scan.empty()) {
      const int rc = launch->first_non_finite_tensors(
          slot, scan.data(), scan.size(), reinterpret_cast<int64_t *>(c.results),
          c.results + entries, &table_bytes, c.stream);
      if (rc != LF_OK)
        return launch_error(rc, "lf_cuda_first_non_finite_tensors over " +
                                    std::to_string(scan.size()) + " tensors");
    }
    if (checksum) {
      size_t workspace_bytes = kernels::kCudaWorkspaceMaxBytes;
      const int rc = launch->checksum(slot, bytes, c.results + scanned.size(), c.workspace,
                                      &workspace_bytes, c.stream);
      if (rc != LF_OK) return launch_error(rc, "lf_cuda_checksum");
    }
    c.host.resize(entries);
    LF_CUDA_CHECK(cudaMemcpyAsync(c.host.data(), c.results, entries * sizeof(uint64_t),
                                  cudaMemcpyDeviceToHost, c.stream));
    LF_CUDA_CHECK(cudaStreamSynchronize(c.stream));

    for (size_t j = 0; j < scanned.size(); ++j) {
      const auto bad = static_cast<int64_t>(c.host[j]);
      if (bad < 0) continue;
      const TensorExtent &e = tensors[scanned[j]];
      const size_t elem = ipc::dtype_size(e.dtype);
      if (static_cast<uint64_t>(bad) >= e.bytes / elem)
        return make_error(LF_E_INTERNAL, "lf_cuda_first_non_finite gave element " +
                                             std::to_string(bad) + " of a tensor of " +
                                             std::to_string(e.bytes / elem));
      out.tensor = static_cast<int64_t>(scanned[j]);
      out.element = bad;
      // The element itself, for the error message (little-endian, as on the host).
      LF_CUDA_CHECK(cudaMemcpyAsync(&out.bits, slot + e.offset + static_cast<uint64_t>(bad) * elem,
                                    elem, cudaMemcpyDeviceToHost, c.stream));
      LF_CUDA_CHECK(cudaStreamSynchronize(c.stream));
      break;
    }
    if (checksum) out.checksum = c.host[scanned.size()];
    return out;
  }

 private:
  // What check_slot keeps per device, made at its first call there.
  struct CheckContext {
    std::mutex mu;  // one check at a time per device: they share everything below
    cudaStream_t stream = nullptr;  // non-blocking: never waits for the legacy default stream
    void *workspace = nullptr;      // kCudaWorkspaceMaxBytes, for the checksum launches
    // Device: one entry per tensor scanned, then the checksum, then the scan's workspace (its
    // table of the tensors, copied there by the launcher): one allocation, grown as needed.
    uint64_t *results = nullptr;
    size_t capacity = 0;            // entries (8 bytes each) of `results`
    std::vector<uint64_t> host;     // the results, copied back

    // With mu held and the context's device current.
    Status reserve(size_t entries) {
      if (entries <= capacity) return {};
      // Launches of a check that failed half-way may still use the old buffer.
      LF_CUDA_CHECK(cudaStreamSynchronize(stream));
      (void)cudaFree(results);
      results = nullptr;
      capacity = 0;
      void *p = nullptr;
      LF_CUDA_CHECK(cudaMalloc(&p, entries * sizeof(uint64_t)));
      results = static_cast<uint64_t *>(p);
      capacity = entries;
      return {};
    }
  };

  // With `device` current.
  Result<CheckContext *> check_context(int device) {
    std::lock_guard lock(mu_);
    if (auto it = check_contexts_.find(device); it != check_contexts_.end())
      return it->second.get();
    auto c = std::make_unique<CheckContext>();
    LF_CUDA_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    const cudaError_t allocated = cudaMalloc(&c->workspace, kernels::kCudaWorkspaceMaxBytes);
    if (allocated != cudaSuccess) {
      (void)cudaStreamDestroy(c->stream);
      return cuda_error(allocated, "cudaMalloc(&workspace, kCudaWorkspaceMaxBytes)", __FILE__,
                        __LINE__);
    }
    CheckContext *raw = c.get();
    check_contexts_.emplace(device, std::move(c));
    return raw;
  }

  struct OpenedBlock {
    void *ptr;
    int device;
  };
  struct OpenedEvent {
    cudaEvent_t event;
    int device;
    int refs;  // open_event calls not yet matched by destroy_event
  };

  mutable std::mutex mu_;                             // guards everything below
  int device_count_ = 0;                              // 0 until device_count() succeeded
  std::map<std::string, OpenedBlock> opened_blocks_;  // by cache_key
  uint64_t blocks_opened_ = 0;
  std::map<std::string, OpenedEvent> opened_events_;  // by cache_key
  std::map<cudaEvent_t, std::string> opened_keys_;
  std::map<cudaEvent_t, int> created_events_;  // event -> device
  std::map<int, std::unique_ptr<CheckContext>> check_contexts_;  // by device
};

}  // namespace

Result<std::unique_ptr<Backend>> make_cuda_backend() {
  return std::unique_ptr<Backend>(std::make_unique<CudaBackend>());
}

void detail::set_cuda_check_kernels(const CudaCheckKernels *kernels) {
  g_check_kernels.store(kernels, std::memory_order_release);
}

}  // namespace loraflip::device
