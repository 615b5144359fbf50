// The launchers of device_kernels.hpp in builds without CUDA: each says so.
#include "kernels/device_kernels.hpp"

#include "loraflip.h"

namespace loraflip::kernels {

int lf_cuda_first_non_finite(const void *, uint64_t, int, int64_t *, void *, size_t *, void *) {
  return LF_E_UNSUPPORTED;
}

int lf_cuda_first_non_finite_tensors(const void *, const CudaScanTensor *, size_t, int64_t *,
                                     void *, size_t *, void *) {
  return LF_E_UNSUPPORTED;
}

int lf_cuda_checksum(const void *, uint64_t, uint64_t *, void *, size_t *, void *) {
  return LF_E_UNSUPPORTED;
}

int lf_cuda_cast_f32(const float *, void *, uint64_t, int, void *) { return LF_E_UNSUPPORTED; }

}  // namespace loraflip::kernels
