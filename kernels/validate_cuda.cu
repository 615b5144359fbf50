// CUDA launchers of device_kernels.hpp: first non-finite element, checksum, fp32 cast.
//
// Both reductions run in two kernels on the caller's stream: a grid-stride pass in which every
// block writes one partial result to the workspace, then one block that folds the partials and
// writes the answer. No atomics and no memset, so the answer does not depend on scheduling and
// the result location needs no initialization. Integer min and wrapping integer sum are exact in
// any order, so the answers equal the CPU loops' bit for bit.
#include <cuda_runtime.h>

#include <cstdint>

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
