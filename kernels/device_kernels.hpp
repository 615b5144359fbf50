// CUDA versions of the daemon-side slot checks and the dtype cast (kernels/validate.hpp,
// kernels/cast.hpp). Each gives exactly the CPU function's answer, bit for bit.
//
// Launchers, in the style of CUB: host functions that return an LF_OK / LF_E_* status, take the
// stream last (a cudaStream_t passed as void *, so this header needs no CUDA include; nullptr is
// the legacy default stream), enqueue work and return without synchronizing. Results land in
// device memory, readable once the stream reaches that point. Pointers named device_* must be
// usable by kernels on the current device. Errors of the launch itself come back as a status;
// errors of the kernels (a bad device pointer) surface at the next synchronization, as with any
// CUDA call. Thread-safe: they touch no state of their own.
//
// Reductions ask for temporary storage in two calls: first with workspace == nullptr, which only
// stores the size needed in *workspace_bytes and returns LF_OK (no CUDA call, no GPU needed);
// then with a device workspace of at least that many bytes, 8-byte aligned. The size depends on
// the element or byte count only, never grows with a smaller count, and is at most
// kCudaWorkspaceMaxBytes, so one workspace of that size serves every call (except
// lf_cuda_first_non_finite_tensors, whose workspace grows with its number of tensors). A
// workspace must not be used by two launches that may run at the same time.
//
// In builds without CUDA (kernels/device_kernels_stub.cpp) every launcher returns
// LF_E_UNSUPPORTED, as does a CUDA build on a machine without a usable GPU (when the launch
// finds no device or no kernel image for it).
#pragma once

#include <cstddef>
#include <cstdint>

namespace loraflip::kernels {

// The largest workspace any launcher here asks for: 1024 per-block partial results of 8 bytes.
inline constexpr size_t kCudaWorkspaceMaxBytes = 1024 * 8;

// Writes to *device_result the index of the first NaN or infinite element among `count`
// elements of LF_DTYPE_* `dtype` at device_data, or -1 when all are finite (always -1 for the
// integer dtypes): the same as first_non_finite(). device_data must be aligned to the element
// size. LF_E_INVALID_ARGUMENT for an unknown dtype, a null pointer (device_data may be null when
// count is 0), a misaligned pointer or a workspace smaller than asked for.
int lf_cuda_first_non_finite(const void *device_data, uint64_t count, int dtype,
                             int64_t *device_result, void *workspace, size_t *workspace_bytes,
                             void *stream);

// One tensor for lf_cuda_first_non_finite_tensors: `count` elements of LF_DTYPE_* `dtype`,
// `offset` bytes from the slot's base. A host struct: the launcher reads it during the call.
struct CudaScanTensor {
  uint64_t offset = 0;
  uint64_t count = 0;
  int32_t dtype = 0;
  uint32_t reserved = 0;  // 0
};

// The first-non-finite search of many tensors of one slot in one kernel launch (a daemon's
// check_slot has hundreds of tensors; a launch pair each cost more than the scans). Writes to
// device_results[t] what lf_cuda_first_non_finite gives for tensors[t] (-1: all finite, always
// for the integer dtypes), for t < n_tensors.
// Workspace: n_tensors * 32 bytes (0 for no tensors), by the two-call protocol above; the
// launcher copies its own table of the tensors there (one cudaMemcpyAsync from pageable host
// memory, which CUDA stages before returning, so `tensors` may go as soon as the call returns).
// Not for graph capture (it copies from host memory). Each float tensor with elements must be
// aligned to its element size at device_base + offset. LF_E_INVALID_ARGUMENT for an unknown
// dtype, a misaligned tensor, a null pointer (device_base may be null when no float tensor has
// elements; device_results when n_tensors is 0), more than UINT32_MAX tensors, or a workspace
// smaller than asked for.
int lf_cuda_first_non_finite_tensors(const void *device_base, const CudaScanTensor *tensors,
                                     size_t n_tensors, int64_t *device_results, void *workspace,
                                     size_t *workspace_bytes, void *stream);

// Writes to *device_out the checksum of `bytes` bytes at device_data: the same value as
// checksum(), for any alignment of device_data (8-byte aligned data reads faster).
// LF_E_INVALID_ARGUMENT for a null pointer (device_data may be null when bytes is 0) or a
// workspace smaller than asked for.
int lf_cuda_checksum(const void *device_data, uint64_t bytes, uint64_t *device_out,
                     void *workspace, size_t *workspace_bytes, void *stream);

// Converts `count` fp32 values at device_src into device_dst as cast_f32() does (same bits):
// LF_DTYPE_BF16, LF_DTYPE_F16 or LF_DTYPE_F32 (a device-to-device copy). No workspace.
// device_src must be 4-byte aligned and device_dst aligned to its element size; the two must
// not overlap (except device_dst == device_src for F32, which does nothing).
// LF_E_INVALID_ARGUMENT for another dtype, a null or misaligned pointer.
int lf_cuda_cast_f32(const float *device_src, void *device_dst, uint64_t count, int dst_dtype,
                     void *stream);

}  // namespace loraflip::kernels
