// make_cuda_backend in a build without CUDA: the host implementation is the only one.
#include "device/device.hpp"

namespace loraflip::device {

Result<std::unique_ptr<Backend>> make_cuda_backend() {
  return make_error(LF_E_UNSUPPORTED,
                    "this build of loraflip has no CUDA implementation (configure with "
                    "-Dcuda=enabled where the CUDA toolkit is installed)");
}

// No cuda backend exists to hand the kernels to.
void install_cuda_check_kernels() {}

}  // namespace loraflip::device
