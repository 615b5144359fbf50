// CUDA entry points for builds without CUDA: they exist so that callers link the same way
// everywhere, and say at run time that this build cannot do it.
#include "loraflip_lora.h"

extern "C" {

int lf_lora_cuda_shrink(const lf_lora_batch_t *, const void *, float *, int32_t *,
                        lf_lora_stream_t) {
    return LF_E_UNSUPPORTED;
}

int lf_lora_cuda_expand(const lf_lora_batch_t *, const float *, void *, int32_t *,
                        lf_lora_stream_t) {
    return LF_E_UNSUPPORTED;
}

int lf_lora_cuda_apply(const lf_lora_batch_t *, const void *, void *, void *, size_t *, int32_t *,
                       lf_lora_stream_t) {
    return LF_E_UNSUPPORTED;
}

int lf_lora_cuda_apply_single(int32_t, int32_t, int32_t, int32_t, const void *, int64_t, void *,
                              int64_t, const lf_lora_adapter_t *, void *, size_t *,
                              lf_lora_cublas_t, lf_lora_stream_t) {
    return LF_E_UNSUPPORTED;
}

} // extern "C"
