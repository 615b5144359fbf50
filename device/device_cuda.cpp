// The CUDA runtime implementation of the device interface. Plain C++ against cuda_runtime.h
// (no nvcc): every call sets the device it works on first, and every runtime status becomes an
// error value that names the call, the CUDA error and the file and line.
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include <cuda_runtime.h>

#include "device/device.hpp"

namespace loraflip::device {
namespace {

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

class CudaBackend final : public Backend {
 public:
  CudaBackend() = default;  // no CUDA call until the first use, so a caller may still fork
  CudaBackend(const CudaBackend &) = delete;
  CudaBackend &operator=(const CudaBackend &) = delete;

  // Closes what this process opened and destroys the events it created and did not destroy.
  // Errors are ignored: at exit the runtime may already be unloading.
  ~CudaBackend() override {
    for (auto &[key, block] : opened_blocks_) {
      (void)cudaSetDevice(block.device);
      (void)cudaIpcCloseMemHandle(block.ptr);
    }
    for (auto &[key, event] : opened_events_) {
      (void)cudaSetDevice(event.device);
      (void)cudaEventDestroy(event.event);
    }
    for (auto &[event, device] : created_events_) {
      (void)cudaSetDevice(device);
      (void)cudaEventDestroy(event);
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

  Result<Block> allocate(int device, uint64_t bytes,
                         const std::string & /*tag: no names*/) override {
    if (bytes == 0) return invalid("a block of 0 bytes");
    LF_CUDA_CHECK(cudaSetDevice(device));
    void *ptr = nullptr;
    LF_CUDA_CHECK(cudaMalloc(&ptr, bytes));
    cudaIpcMemHandle_t handle;
    const cudaError_t exported = cudaIpcGetMemHandle(&handle, ptr);
    if (exported != cudaSuccess) {
      (void)cudaFree(ptr);
      return cuda_error(exported, "cudaIpcGetMemHandle(&handle, ptr)", __FILE__, __LINE__);
    }
    // Zeroed, as the host implementation's fresh shared memory is.
    const cudaError_t zeroed = cudaMemset(ptr, 0, bytes);
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
    (void)cudaSetDevice(block.device);
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
    LF_CUDA_CHECK(cudaSetDevice(device));
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

  Status copy(void *dst, const void *src, uint64_t bytes, CopyKind kind, int device,
              Stream stream) override {
    if (bytes == 0) return {};
    LF_CUDA_CHECK(cudaSetDevice(device));
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
    LF_CUDA_CHECK(cudaSetDevice(issuer));
    LF_CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_device, src, src_device, bytes, to_cuda(stream)));
    return {};
  }

  Status synchronize(int device, Stream stream) override {
    LF_CUDA_CHECK(cudaSetDevice(device));
    LF_CUDA_CHECK(cudaStreamSynchronize(to_cuda(stream)));
    return {};
  }

  Result<Stream> create_stream(int device) override {
    LF_CUDA_CHECK(cudaSetDevice(device));
    cudaStream_t stream = nullptr;
    LF_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    return static_cast<Stream>(stream);
  }

  void destroy_stream(int device, Stream stream) override {
    if (stream == nullptr) return;
    (void)cudaSetDevice(device);
    (void)cudaStreamDestroy(to_cuda(stream));
  }

  Result<Event> create_event(int device) override {
    LF_CUDA_CHECK(cudaSetDevice(device));
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
    LF_CUDA_CHECK(cudaSetDevice(device));
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
    LF_CUDA_CHECK(cudaSetDevice(event.device));
    LF_CUDA_CHECK(cudaEventRecord(to_cuda_event(event), to_cuda(stream)));
    return {};
  }

  Result<bool> query(Event &event) override {
    if (event.impl == nullptr) return invalid("query of a destroyed event");
    LF_CUDA_CHECK(cudaSetDevice(event.device));
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
    std::lock_guard lock(mu_);
    if (auto it = created_events_.find(e); it != created_events_.end()) {
      (void)cudaSetDevice(it->second);
      (void)cudaEventDestroy(e);
      created_events_.erase(it);
    } else if (auto k = opened_keys_.find(e); k != opened_keys_.end()) {
      auto it2 = opened_events_.find(k->second);
      if (it2 != opened_events_.end() && --it2->second.refs == 0) {
        (void)cudaSetDevice(it2->second.device);
        (void)cudaEventDestroy(e);
        opened_events_.erase(it2);
        opened_keys_.erase(k);
      }
    }
    event.impl = nullptr;
  }

 private:
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
};

}  // namespace

Result<std::unique_ptr<Backend>> make_cuda_backend() {
  return std::unique_ptr<Backend>(std::make_unique<CudaBackend>());
}

}  // namespace loraflip::device
