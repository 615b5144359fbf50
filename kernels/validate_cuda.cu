// CUDA launchers of device_kernels.hpp: first non-finite element (of one tensor or of many),
// checksum, fp32 cast.
//
// The single-tensor reductions run in two kernels on the caller's stream: a grid-stride pass in
// which every block writes one partial result to the workspace, then one block that folds the
// partials and writes the answer. No atomics and no memset, so the answer does not depend on
// scheduling and the result location needs no initialization. The many-tensor search is one
// kernel with a 64-bit atomicMin per tensor instead (see below). Integer min and wrapping integer
// sum are exact in any order, so the answers equal the CPU loops' bit for bit.
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "kernels/cast.hpp"
#include "kernels/device_kernels.hpp"
#include "kernels/validate.hpp"
#include "loraflip.h"

namespace loraflip::kernels {
namespace {

constexpr unsigned kThreads = 256;
// 1024 blocks of 256 threads fill an H100 (132 SMs x 2048 threads) about once; more would only
// grow the workspace. The final pass runs one block of kMaxBlocks threads, the CUDA maximum.
constexpr uint64_t kMaxBlocks = kCudaWorkspaceMaxBytes / sizeof(uint64_t);
static_assert(kMaxBlocks == 1024, "the final pass needs one thread per partial");
// Below this many items per thread the grid shrinks instead, so small slots use few blocks.
constexpr uint64_t kItemsPerThread = 8;

uint64_t blocks_for(uint64_t items) {
  constexpr uint64_t per_block = kThreads * kItemsPerThread;
  const uint64_t b = items / per_block + (items % per_block != 0 ? 1 : 0);
  return b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b);
}

int status_of(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return LF_OK;
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorInvalidDevice: return LF_E_UNSUPPORTED;
    case cudaErrorInvalidValue:
    case cudaErrorInvalidDevicePointer: return LF_E_INVALID_ARGUMENT;
    default: return LF_E_INTERNAL;
  }
}

// The launches' own errors (bad configuration, no device); cudaGetLastError also clears a
// non-sticky error so that it is not reported again by the caller's next call.
int launch_status() { return status_of(cudaGetLastError()); }

bool aligned(const void *p, uintptr_t to) { return reinterpret_cast<uintptr_t>(p) % to == 0; }

struct MinOp {
  static constexpr uint64_t kIdentity = UINT64_MAX;
  __device__ static uint64_t apply(uint64_t a, uint64_t b) { return a < b ? a : b; }
};
struct SumOp {
  static constexpr uint64_t kIdentity = 0;
  __device__ static uint64_t apply(uint64_t a, uint64_t b) { return a + b; }
};

// Folds one value per thread of the block; the result is valid in thread 0. blockDim.x must be
// a multiple of 32 and at most 1024.
template <class Op>
__device__ uint64_t block_reduce(uint64_t v) {
  __shared__ uint64_t warp_results[32];
  for (int offset = 16; offset > 0; offset /= 2) {
    v = Op::apply(v, __shfl_down_sync(0xFFFFFFFFu, v, offset));
  }
  const unsigned lane = threadIdx.x % 32;
  const unsigned warp = threadIdx.x / 32;
  if (lane == 0) warp_results[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < blockDim.x / 32 ? warp_results[lane] : Op::kIdentity;
    for (int offset = 16; offset > 0; offset /= 2) {
      v = Op::apply(v, __shfl_down_sync(0xFFFFFFFFu, v, offset));
    }
  }
  return v;
}

__device__ uint64_t global_thread() {
  return static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ uint64_t grid_threads() { return static_cast<uint64_t>(gridDim.x) * blockDim.x; }

// ---- first non-finite -------------------------------------------------------------------------

// Same test as the CPU: exponent bits all ones. A thread's first hit is its smallest index, since
// it walks its indices in increasing order.
template <typename Bits, Bits kExponentMask>
__global__ void __launch_bounds__(kThreads)
    first_non_finite_kernel(const Bits *data, uint64_t count, uint64_t *partials) {
  uint64_t found = MinOp::kIdentity;
  for (uint64_t i = global_thread(); i < count; i += grid_threads()) {
    if ((data[i] & kExponentMask) == kExponentMask) {
      found = i;
      break;
    }
  }
  found = block_reduce<MinOp>(found);
  if (threadIdx.x == 0) partials[blockIdx.x] = found;
}

// One block of kMaxBlocks threads; n partials (n may be 0: then all finite).
__global__ void __launch_bounds__(kMaxBlocks)
    first_non_finite_final(const uint64_t *partials, uint64_t n, int64_t *result) {
  uint64_t v = threadIdx.x < n ? partials[threadIdx.x] : MinOp::kIdentity;
  v = block_reduce<MinOp>(v);
  if (threadIdx.x == 0) *result = v == MinOp::kIdentity ? -1 : static_cast<int64_t>(v);
}

template <typename Bits, Bits kExponentMask>
void launch_first_non_finite(const void *data, uint64_t count, uint64_t blocks,
                             uint64_t *partials, cudaStream_t stream) {
  first_non_finite_kernel<Bits, kExponentMask>
      <<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(static_cast<const Bits *>(data),
                                                               count, partials);
}

// ---- first non-finite of many tensors ---------------------------------------------------------
//
// One launch for a whole slot. Tensors are cut into chunks of kChunkElements; the grid walks the
// chunks of all tensors in turn, so one huge tensor spreads over every block while a tiny one
// costs a single chunk. Each chunk's first hit goes into its tensor's result with atomicMin:
// the minimum does not depend on the order of the updates, so the answer is the CPU's exactly,
// and a result needs no second pass. The results start as all ones (-1 as int64, and above
// every index as uint64).

enum ScanKind : uint32_t { kScanF16, kScanBf16, kScanF32, kScanF64 };

// The launcher's table in device memory: the float tensors that have elements, in the caller's
// order, each with its first chunk (a prefix sum), so that a block finds the tensor of a chunk by
// binary search. Every entry has at least one chunk.
struct ScanEntry {
  uint64_t offset;       // bytes from the base; a multiple of the element size
  uint64_t count;        // elements, > 0
  uint64_t first_chunk;  // chunks of the entries before this one
  uint32_t tensor;       // where its result goes
  uint32_t kind;         // ScanKind
};
static_assert(sizeof(ScanEntry) == 32, "device_kernels.hpp promises 32 bytes per tensor");

// 16 elements per thread: enough loads in flight per thread, and the per-chunk lookup (one
// thread's binary search of the table, a few hundred cycles) stays small next to them.
constexpr uint64_t kChunkElements = kThreads * 16;

// This thread's first hit among its elements of [begin, end) of one chunk (MinOp::kIdentity for
// none). Its indices increase with k, so the first hit is its smallest. The loads do not depend
// on each other (only the choice does), so they are all issued before the first compare.
template <typename Bits, Bits kExponentMask>
__device__ uint64_t chunk_first_hit(const unsigned char *base, uint64_t offset, uint64_t begin,
                                    uint64_t end) {
  const Bits *data = reinterpret_cast<const Bits *>(base + offset);
  uint64_t found = MinOp::kIdentity;
#pragma unroll
  for (uint64_t k = 0; k < kChunkElements / kThreads; ++k) {
    const uint64_t i = begin + k * kThreads + threadIdx.x;
    const bool hit = i < end && (data[i] & kExponentMask) == kExponentMask;
    if (hit && found == MinOp::kIdentity) found = i;
  }
  return found;
}

__global__ void __launch_bounds__(kThreads)
    first_non_finite_tensors_kernel(const unsigned char *base, const ScanEntry *entries,
                                    uint32_t n_entries, uint64_t chunks,
                                    unsigned long long *results) {
  __shared__ uint32_t s_entry;
  __shared__ bool s_skip;
  // The loop bounds and every branch on shared values are the same in the whole block, so each
  // thread reaches every barrier.
  for (uint64_t g = blockIdx.x; g < chunks; g += gridDim.x) {
    if (threadIdx.x == 0) {
      // The last entry whose first chunk is <= g holds chunk g, since none is empty.
      uint32_t lo = 0, hi = n_entries;  // the answer lies in [lo, hi)
      while (hi - lo > 1) {
        const uint32_t mid = lo + (hi - lo) / 2;
        if (entries[mid].first_chunk <= g) lo = mid; else hi = mid;
      }
      s_entry = lo;
      // A hit already found at or before this chunk's first element cannot be beaten by it (the
      // read may be stale; that only costs a scan). Mostly useful for a tensor full of NaNs.
      const uint64_t begin = (g - entries[lo].first_chunk) * kChunkElements;
      s_skip = *static_cast<volatile unsigned long long *>(&results[entries[lo].tensor]) <= begin;
    }
    __syncthreads();
    if (!s_skip) {
      const ScanEntry e = entries[s_entry];
      const uint64_t begin = (g - e.first_chunk) * kChunkElements;
      const uint64_t end = e.count - begin < kChunkElements ? e.count : begin + kChunkElements;
      uint64_t found = MinOp::kIdentity;
      switch (e.kind) {
        case kScanF16:
          found = chunk_first_hit<uint16_t, 0x7C00u>(base, e.offset, begin, end);
          break;
        case kScanBf16:
          found = chunk_first_hit<uint16_t, 0x7F80u>(base, e.offset, begin, end);
          break;
        case kScanF32:
          found = chunk_first_hit<uint32_t, 0x7F800000u>(base, e.offset, begin, end);
          break;
        case kScanF64:
          found = chunk_first_hit<uint64_t, 0x7FF0000000000000ull>(base, e.offset, begin, end);
          break;
      }
      found = block_reduce<MinOp>(found);
      if (threadIdx.x == 0 && found != MinOp::kIdentity) {
        atomicMin(&results[e.tensor], static_cast<unsigned long long>(found));
      }
    }
    __syncthreads();  // s_entry, s_skip and block_reduce's scratch are reused next round
  }
}

// The element size and ScanKind of `dtype`: 0 for the integer dtypes (nothing to scan), -1 for
// an unknown one.
int scan_kind(int dtype, uint32_t *kind) {
  switch (dtype) {
    case LF_DTYPE_F16: *kind = kScanF16; return 2;
    case LF_DTYPE_BF16: *kind = kScanBf16; return 2;
    case LF_DTYPE_F32: *kind = kScanF32; return 4;
    case LF_DTYPE_F64: *kind = kScanF64; return 8;
    case LF_DTYPE_I8:
    case LF_DTYPE_U8:
    case LF_DTYPE_I32:
    case LF_DTYPE_I64: return 0;
    default: return -1;
  }
}

// ---- checksum ---------------------------------------------------------------------------------

// Word i is bytes [8i, 8i + 8) read little-endian (CUDA GPUs are little-endian, as is every host
// the CPU checksum runs on), the tail zero-padded; see checksum() in validate.hpp.
template <bool kAligned>
__global__ void __launch_bounds__(kThreads)
    checksum_kernel(const unsigned char *data, uint64_t bytes, uint64_t *partials) {
  const uint64_t full_words = bytes / 8;
  const uint64_t words = full_words + (bytes % 8 != 0 ? 1 : 0);
  uint64_t sum = 0;
  for (uint64_t i = global_thread(); i < words; i += grid_threads()) {
    uint64_t w = 0;
    if (kAligned && i < full_words) {
      w = reinterpret_cast<const uint64_t *>(data)[i];
    } else {
      const uint64_t n = i < full_words ? 8 : bytes % 8;
      for (uint64_t k = 0; k < n; ++k) w |= static_cast<uint64_t>(data[i * 8 + k]) << (8 * k);
    }
    sum += checksum_mix(w, i);
  }
  sum = block_reduce<SumOp>(sum);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

__global__ void __launch_bounds__(kMaxBlocks)
    checksum_final(const uint64_t *partials, uint64_t n, uint64_t bytes, uint64_t *out) {
  uint64_t v = threadIdx.x < n ? partials[threadIdx.x] : 0;
  v = block_reduce<SumOp>(v);
  if (threadIdx.x == 0) *out = v + bytes;
}

// ---- cast -------------------------------------------------------------------------------------

// Functors rather than function pointers as template arguments, which device code handles less
// portably.
struct ToF16 {
  __device__ uint16_t operator()(uint32_t x) const { return f32_to_f16_bits(x); }
};
struct ToBf16 {
  __device__ uint16_t operator()(uint32_t x) const { return f32_to_bf16_bits(x); }
};

template <class Convert>
__global__ void __launch_bounds__(kThreads)
    cast_kernel(const uint32_t *src, uint16_t *dst, uint64_t count) {
  for (uint64_t i = global_thread(); i < count; i += grid_threads()) dst[i] = Convert{}(src[i]);
}

// Shared checks of the two-call workspace protocol. Returns LF_OK and sets *query_only when the
// call only asks for the size.
int workspace_check(void *workspace, size_t *workspace_bytes, uint64_t blocks, bool *query_only) {
  if (workspace_bytes == nullptr) return LF_E_INVALID_ARGUMENT;
  const size_t needed = static_cast<size_t>(blocks) * sizeof(uint64_t);
  *query_only = workspace == nullptr;
  if (*query_only) {
    *workspace_bytes = needed;
    return LF_OK;
  }
  if (*workspace_bytes < needed || !aligned(workspace, alignof(uint64_t))) {
    return LF_E_INVALID_ARGUMENT;
  }
  return LF_OK;
}

}  // namespace

int lf_cuda_first_non_finite(const void *device_data, uint64_t count, int dtype,
                             int64_t *device_result, void *workspace, size_t *workspace_bytes,
                             void *stream) {
  size_t elem = 0;
  switch (dtype) {
    case LF_DTYPE_F32: elem = 4; break;
    case LF_DTYPE_F64: elem = 8; break;
    case LF_DTYPE_F16:
    case LF_DTYPE_BF16: elem = 2; break;
    case LF_DTYPE_I8:
    case LF_DTYPE_U8:
    case LF_DTYPE_I32:
    case LF_DTYPE_I64: elem = 0; break;  // always finite: nothing to read
    default: return LF_E_INVALID_ARGUMENT;
  }
  const uint64_t blocks = blocks_for(count);
  bool query_only = false;
  if (int rc = workspace_check(workspace, workspace_bytes, blocks, &query_only); rc != LF_OK) {
    return rc;
  }
  if (query_only) return LF_OK;
  if (device_result == nullptr || !aligned(device_result, alignof(int64_t))) {
    return LF_E_INVALID_ARGUMENT;
  }
  if (elem != 0 && count != 0 && (device_data == nullptr || !aligned(device_data, elem))) {
    return LF_E_INVALID_ARGUMENT;
  }
  auto s = static_cast<cudaStream_t>(stream);
  auto *partials = static_cast<uint64_t *>(workspace);
  uint64_t n = 0;  // partials written; 0 when there is nothing to scan
  if (elem != 0 && count != 0) {
    n = blocks;
    switch (dtype) {
      case LF_DTYPE_F32:
        launch_first_non_finite<uint32_t, 0x7F800000u>(device_data, count, n, partials, s);
        break;
      case LF_DTYPE_F64:
        launch_first_non_finite<uint64_t, 0x7FF0000000000000ull>(device_data, count, n,
                                                                 partials, s);
        break;
      case LF_DTYPE_F16:
        launch_first_non_finite<uint16_t, 0x7C00u>(device_data, count, n, partials, s);
        break;
      case LF_DTYPE_BF16:
        launch_first_non_finite<uint16_t, 0x7F80u>(device_data, count, n, partials, s);
        break;
    }
    if (int rc = launch_status(); rc != LF_OK) return rc;
  }
  first_non_finite_final<<<1, kMaxBlocks, 0, s>>>(partials, n, device_result);
  return launch_status();
}

int lf_cuda_first_non_finite_tensors(const void *device_base, const CudaScanTensor *tensors,
                                     size_t n_tensors, int64_t *device_results, void *workspace,
                                     size_t *workspace_bytes, void *stream) {
  try {
    if (workspace_bytes == nullptr || n_tensors > UINT32_MAX ||
        (n_tensors != 0 && tensors == nullptr)) {
      return LF_E_INVALID_ARGUMENT;
    }
    const bool query_only = workspace == nullptr;
    // The table as the kernel reads it; the dtypes are checked in the size query too, as the
    // single-tensor launcher does.
    std::vector<ScanEntry> entries;
    uint64_t chunks = 0;
    for (size_t t = 0; t < n_tensors; ++t) {
      const CudaScanTensor &in = tensors[t];
      uint32_t kind = 0;
      const int elem = scan_kind(in.dtype, &kind);
      if (elem < 0 || (elem > 0 && in.count > UINT64_MAX / static_cast<unsigned>(elem))) {
        return LF_E_INVALID_ARGUMENT;
      }
      if (elem == 0 || in.count == 0 || query_only) continue;
      if (device_base == nullptr ||
          (reinterpret_cast<uintptr_t>(device_base) + in.offset) % static_cast<unsigned>(elem) !=
              0) {
        return LF_E_INVALID_ARGUMENT;
      }
      const uint64_t own = in.count / kChunkElements + (in.count % kChunkElements != 0 ? 1 : 0);
      if (own > UINT64_MAX - chunks) return LF_E_INVALID_ARGUMENT;  // not a real slot
      entries.push_back({in.offset, in.count, chunks, static_cast<uint32_t>(t), kind});
      chunks += own;
    }
    const size_t needed = n_tensors * sizeof(ScanEntry);
    if (query_only) {
      *workspace_bytes = needed;
      return LF_OK;
    }
    if (n_tensors == 0) return LF_OK;
    if (*workspace_bytes < needed || !aligned(workspace, alignof(ScanEntry)) ||
        device_results == nullptr || !aligned(device_results, alignof(int64_t))) {
      return LF_E_INVALID_ARGUMENT;
    }
    auto s = static_cast<cudaStream_t>(stream);
    if (int rc = status_of(cudaMemsetAsync(device_results, 0xFF, n_tensors * sizeof(int64_t), s));
        rc != LF_OK) {
      return rc;
    }
    if (entries.empty()) return LF_OK;  // only integer or empty tensors: all -1
    // Pageable host memory: CUDA copies it to a staging buffer before returning, so `entries`
    // may go when this function returns.
    if (int rc = status_of(cudaMemcpyAsync(workspace, entries.data(),
                                           entries.size() * sizeof(ScanEntry),
                                           cudaMemcpyHostToDevice, s));
        rc != LF_OK) {
      return rc;
    }
    const auto blocks = static_cast<unsigned>(chunks < kMaxBlocks ? chunks : kMaxBlocks);
    first_non_finite_tensors_kernel<<<blocks, kThreads, 0, s>>>(
        static_cast<const unsigned char *>(device_base), static_cast<const ScanEntry *>(workspace),
        static_cast<uint32_t>(entries.size()), chunks,
        reinterpret_cast<unsigned long long *>(device_results));
    return launch_status();
  } catch (...) {  // std::bad_alloc from the table
    return LF_E_INTERNAL;
  }
}

int lf_cuda_checksum(const void *device_data, uint64_t bytes, uint64_t *device_out,
                     void *workspace, size_t *workspace_bytes, void *stream) {
  const uint64_t words = bytes / 8 + (bytes % 8 != 0 ? 1 : 0);
  const uint64_t blocks = blocks_for(words);
  bool query_only = false;
  if (int rc = workspace_check(workspace, workspace_bytes, blocks, &query_only); rc != LF_OK) {
    return rc;
  }
  if (query_only) return LF_OK;
  if (device_out == nullptr || !aligned(device_out, alignof(uint64_t))) {
    return LF_E_INVALID_ARGUMENT;
  }
  if (bytes != 0 && device_data == nullptr) return LF_E_INVALID_ARGUMENT;
  auto s = static_cast<cudaStream_t>(stream);
  auto *partials = static_cast<uint64_t *>(workspace);
  uint64_t n = 0;
  if (bytes != 0) {
    n = blocks;
    const auto *p = static_cast<const unsigned char *>(device_data);
    if (aligned(device_data, 8)) {
      checksum_kernel<true><<<static_cast<unsigned>(n), kThreads, 0, s>>>(p, bytes, partials);
    } else {
      checksum_kernel<false><<<static_cast<unsigned>(n), kThreads, 0, s>>>(p, bytes, partials);
    }
    if (int rc = launch_status(); rc != LF_OK) return rc;
  }
  checksum_final<<<1, kMaxBlocks, 0, s>>>(partials, n, bytes, device_out);
  return launch_status();
}

int lf_cuda_cast_f32(const float *device_src, void *device_dst, uint64_t count, int dst_dtype,
                     void *stream) {
  if (dst_dtype != LF_DTYPE_F32 && dst_dtype != LF_DTYPE_F16 && dst_dtype != LF_DTYPE_BF16) {
    return LF_E_INVALID_ARGUMENT;
  }
  if (count == 0) return LF_OK;
  const size_t elem = dst_dtype == LF_DTYPE_F32 ? 4 : 2;
  if (device_src == nullptr || device_dst == nullptr || !aligned(device_src, 4) ||
      !aligned(device_dst, elem) || count > UINT64_MAX / sizeof(float)) {
    return LF_E_INVALID_ARGUMENT;
  }
  auto s = static_cast<cudaStream_t>(stream);
  if (dst_dtype == LF_DTYPE_F32) {
    if (device_dst == device_src) return LF_OK;
    return status_of(cudaMemcpyAsync(device_dst, device_src, count * sizeof(float),
                                     cudaMemcpyDefault, s));
  }
  const unsigned blocks = static_cast<unsigned>(blocks_for(count));
  const auto *src = reinterpret_cast<const uint32_t *>(device_src);
  auto *dst = static_cast<uint16_t *>(device_dst);
  if (dst_dtype == LF_DTYPE_F16) {
    cast_kernel<ToF16><<<blocks, kThreads, 0, s>>>(src, dst, count);
  } else {
    cast_kernel<ToBf16><<<blocks, kThreads, 0, s>>>(src, dst, count);
  }
  return launch_status();
}

}  // namespace loraflip::kernels
