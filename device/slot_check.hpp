// What the implementations of Backend::check_slot share. Internal to device/.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "device/device.hpp"
#include "kernels/device_kernels.hpp"

namespace loraflip::device::detail {

// The checks of check_slot's arguments that need no runtime: known check bits, and every
// tensor of a known dtype, holding whole elements, inside the slot, aligned to its element size
// (the CUDA launchers need the alignment; the host implementation asks for it too, so that the
// two accept the same calls).
Status check_slot_arguments(const std::byte *slot, uint64_t bytes,
                            std::span<const TensorExtent> tensors, unsigned checks);

// The check launchers of kernels/device_kernels.hpp, as the cuda implementation calls them.
// A table of pointers rather than calls, so that the library holding the cuda implementation
// links without the kernels (see install_cuda_check_kernels in device.hpp).
struct CudaCheckKernels {
  // lf_cuda_first_non_finite_tensors: one launch for every tensor of a slot.
  int (*first_non_finite_tensors)(const void *device_base, const kernels::CudaScanTensor *tensors,
                                  size_t n_tensors, int64_t *device_results, void *workspace,
                                  size_t *workspace_bytes, void *stream);
  int (*checksum)(const void *device_data, uint64_t bytes, uint64_t *device_out, void *workspace,
                  size_t *workspace_bytes, void *stream);
};

// Makes `kernels` the table of every cuda backend of this process. `kernels` must outlive them
// (a static table). Defined by the cuda implementation (device_cuda.cpp), in CUDA builds only.
void set_cuda_check_kernels(const CudaCheckKernels *kernels);

}  // namespace loraflip::device::detail
