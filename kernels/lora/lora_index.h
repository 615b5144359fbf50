// Index math shared by the CPU implementation and the CUDA kernels, so that the two cannot
// disagree on which adapter a row uses or which entries count as valid.
// Compiles as plain C++ (no CUDA headers); under nvcc the helpers are __host__ __device__.
#pragma once

#include <cstdint>

#include "loraflip_lora.h"

#if defined(__CUDACC__)
#define LF_LORA_HD __host__ __device__ __forceinline__
#else
#define LF_LORA_HD inline
#endif

namespace loraflip::lora {

// Bytes of one element of a type the LoRA API takes (LF_DTYPE_F32/F16/BF16), 0 for every other
// LF_DTYPE_* and unknown numbers, which the checks then refuse as invalid arguments.
LF_LORA_HD int dtype_size(int32_t dtype) {
    return dtype == LF_DTYPE_F32 ? 4 : (dtype == LF_DTYPE_F16 || dtype == LF_DTYPE_BF16) ? 2 : 0;
}

LF_LORA_HD bool valid_hidden(int64_t h) {
    return h > 0 && h % LF_LORA_HIDDEN_MULTIPLE == 0;
}

LF_LORA_HD int64_t effective_ld(int64_t ld, int64_t h) { return ld == 0 ? h : ld; }

LF_LORA_HD bool valid_ld(int64_t ld, int64_t h) {
    return ld == 0 || (ld >= h && ld % LF_LORA_HIDDEN_MULTIPLE == 0);
}

// Segment holding `row`: the last s with offsets[s] <= row, found by binary search so a kernel
// thread can resolve its row without a host-built map. Returns -1 when `row` lies in no segment,
// which for well-formed offsets (checked on the CPU, flagged on the GPU) never happens.
LF_LORA_HD int32_t segment_of_row(const int32_t *offsets, int32_t n_segments, int32_t row) {
    int32_t lo = 0;
    int32_t hi = n_segments; // invariant: answer in [lo - 1, hi - 1]
    while (lo < hi) {
        const int32_t mid = lo + (hi - lo) / 2;
        if (offsets[mid] <= row) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    const int32_t s = lo - 1;
    if (s < 0 || row >= offsets[s + 1]) {
        return -1;
    }
    return s;
}

// Adapter index chosen for `row` (possibly out of range: callers check with adapter_index_ok).
LF_LORA_HD int32_t adapter_of_row(int32_t select, const int32_t *row_adapter,
                                  const int32_t *seg_offsets, const int32_t *seg_adapter,
                                  int32_t n_segments, int32_t row) {
    if (select == LF_LORA_SELECT_ROWS) {
        return row_adapter[row];
    }
    const int32_t s = segment_of_row(seg_offsets, n_segments, row);
    return s < 0 ? LF_LORA_NO_ADAPTER : seg_adapter[s];
}

LF_LORA_HD bool adapter_index_ok(int32_t index, int32_t n_adapters) {
    return index >= LF_LORA_NO_ADAPTER && index < n_adapters;
}

// Whether a table entry can be used in a batch of this dtype and max_rank. Alignment is checked
// separately because only the GPU needs it.
LF_LORA_HD bool adapter_entry_ok(const lf_lora_adapter_t &e, int32_t dtype, int32_t max_rank) {
    return e.a != nullptr && e.b != nullptr && e.rank >= 1 && e.rank <= max_rank &&
           e.dtype == dtype;
}

// Offsets form a partition of [0, n_rows) into n_segments possibly empty ranges.
LF_LORA_HD bool segment_offsets_ok(const int32_t *offsets, int32_t n_segments, int32_t n_rows) {
    if (n_segments < 0 || offsets[0] != 0 || offsets[n_segments] != n_rows) {
        return false;
    }
    for (int32_t s = 0; s < n_segments; ++s) {
        if (offsets[s + 1] < offsets[s]) {
            return false;
        }
    }
    return true;
}

// Element offsets of row i of x, y and v. 64-bit so n_rows * ld never overflows.
LF_LORA_HD int64_t row_offset(int32_t row, int64_t ld) { return static_cast<int64_t>(row) * ld; }

} // namespace loraflip::lora
