// extern "C" entry points of the CPU path and the helpers; each one catches everything so that
// no exception crosses the C ABI.
#include <cmath>
#include <new>

#include "lora_internal.h"

using namespace loraflip::lora;

namespace {

// Validates, then runs `op` unless the batch is empty; maps exceptions to statuses.
template <class Op> int guarded(const lf_lora_batch_t *batch, const void *in, const void *out, Op op) {
    try {
        if (const int rc = check_batch_shape(batch); rc != LF_OK) {
            return rc;
        }
        if (batch->n_rows > 0 && (in == nullptr || out == nullptr)) {
            return LF_E_INVALID_ARGUMENT;
        }
        if (const int rc = check_batch_data(*batch); rc != LF_OK) {
            return rc;
        }
        if (batch->n_rows > 0) {
            op(*batch);
        }
        return LF_OK;
    } catch (...) {
        // bad_alloc for scratch or system_error from std::thread. Some rows may already be
        // updated; the header tells callers that y / v are unspecified after this status.
        return LF_E_INTERNAL;
    }
}

} // namespace

extern "C" {

const char *lf_lora_strerror(int status) {
    // The texts of lf_strerror (client/c/src/api.cpp) for the codes this library returns, so a
    // program that links only libloraflip_lora reads the same words (tests/python/test_lora.py
    // checks that the two agree).
    switch (status) {
    case LF_OK:
        return "success";
    case LF_E_INVALID_ARGUMENT:
        return "invalid argument";
    case LF_E_INTERNAL:
        return "internal error";
    case LF_E_UNSUPPORTED:
        return "unsupported";
    default:
        return "unknown error";
    }
}

int lf_lora_scale(float alpha, int32_t rank, int32_t kind, float *out_scale) {
    if (out_scale == nullptr || rank < 1 || !std::isfinite(alpha)) {
        return LF_E_INVALID_ARGUMENT;
    }
    // Computed in double and rounded once, so alpha / sqrt(r) is the correctly rounded float.
    double scale = 0.0;
    switch (kind) {
    case LF_LORA_SCALE_STANDARD:
        scale = static_cast<double>(alpha) / rank;
        break;
    case LF_LORA_SCALE_RSLORA:
        scale = static_cast<double>(alpha) / std::sqrt(static_cast<double>(rank));
        break;
    default:
        return LF_E_INVALID_ARGUMENT;
    }
    *out_scale = static_cast<float>(scale);
    return LF_OK;
}

int lf_lora_cpu_set_threads(int32_t n) {
    if (n < 0) {
        return LF_E_INVALID_ARGUMENT;
    }
    set_cpu_threads(n);
    return LF_OK;
}

const char *lf_lora_cpu_isa(void) {
    try {
        return cpu_isa_name();
    } catch (...) {
        return "baseline"; // unreachable: choosing reads CPUID and an environment variable only
    }
}

int lf_lora_shrink(const lf_lora_batch_t *batch, const void *x, float *v) {
    return guarded(batch, x, v, [&](const lf_lora_batch_t &b) { cpu_shrink(b, x, v); });
}

int lf_lora_expand(const lf_lora_batch_t *batch, const float *v, void *y) {
    return guarded(batch, v, y, [&](const lf_lora_batch_t &b) { cpu_expand(b, v, y); });
}

int lf_lora_apply(const lf_lora_batch_t *batch, const void *x, void *y) {
    return guarded(batch, x, y, [&](const lf_lora_batch_t &b) { cpu_apply(b, x, y); });
}

} // extern "C"
