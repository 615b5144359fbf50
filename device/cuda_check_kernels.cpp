// install_cuda_check_kernels in CUDA builds: the one place that names the check kernels for the
// cuda implementation, in a library (lf_device_checks) that device_dep links and libloraflip
// does not. Plain C++: the launchers are host functions.
#include "device/device.hpp"
#include "device/slot_check.hpp"
#include "kernels/device_kernels.hpp"

namespace loraflip::device {

void install_cuda_check_kernels() {
  // The pointers' types are the table's: a launcher whose signature changes fails to compile here.
  static constexpr detail::CudaCheckKernels kKernels{&kernels::lf_cuda_first_non_finite_tensors,
                                                     &kernels::lf_cuda_checksum};
  detail::set_cuda_check_kernels(&kKernels);
}

}  // namespace loraflip::device
