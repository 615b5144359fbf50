// Test support for the LoRA-apply library: random problems, a straightforward fp64 reference
// and the error bound used to compare with it. The reference shares nothing with the library
// but the bit conversions (tested on their own): it resolves segments by a linear scan and sums
// in double in the plain order.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/lora/lora_convert.h"
#include "loraflip_lora.h"

namespace lora_test {

using loraflip::lora::bf16;
using loraflip::lora::f16;

inline int elem_size(int32_t dtype) { return dtype == LF_DTYPE_F32 ? 4 : 2; }

inline double load(int32_t dtype, const uint8_t *base, int64_t i) {
    switch (dtype) {
    case LF_DTYPE_F32: {
        float f;
        std::memcpy(&f, base + 4 * i, 4);
        return f;
    }
    case LF_DTYPE_F16: {
        f16 h;
        std::memcpy(&h.bits, base + 2 * i, 2);
        return loraflip::lora::f16_to_f32(h);
    }
    default: {
        bf16 h;
        std::memcpy(&h.bits, base + 2 * i, 2);
        return loraflip::lora::bf16_to_f32(h);
    }
    }
}

inline void store(int32_t dtype, uint8_t *base, int64_t i, float v) {
    switch (dtype) {
    case LF_DTYPE_F32:
        std::memcpy(base + 4 * i, &v, 4);
        break;
    case LF_DTYPE_F16: {
        const f16 h = loraflip::lora::f32_to_f16(v);
        std::memcpy(base + 2 * i, &h.bits, 2);
        break;
    }
    default: {
        const bf16 h = loraflip::lora::f32_to_bf16(v);
        std::memcpy(base + 2 * i, &h.bits, 2);
        break;
    }
    }
}

// Unit roundoff of the output type: the one rounding of y costs at most this much relative.
inline double output_roundoff(int32_t dtype) {
    return dtype == LF_DTYPE_F32 ? 0x1p-24 : dtype == LF_DTYPE_F16 ? 0x1p-11 : 0x1p-8;
}

// What a test asks for. Ranks are per adapter; row_adapter or (seg_offsets, seg_adapter) choose.
struct Spec {
    int32_t dtype = LF_DTYPE_F32;
    int32_t n_rows = 0;
    int32_t h_in = 64;
    int32_t h_out = 64;
    int64_t ldx = 0;
    int64_t ldy = 0;
    int32_t max_rank = LF_LORA_MAX_RANK;
    std::vector<int32_t> ranks;
    int32_t select = LF_LORA_SELECT_ROWS;
    std::vector<int32_t> row_adapter;
    std::vector<int32_t> seg_offsets;
    std::vector<int32_t> seg_adapter;
};

// A problem with its own storage; batch() points into it, so keep the Problem alive and unmoved.
struct Problem {
    Spec spec;
    std::vector<uint8_t> x, y;
    std::vector<std::vector<uint8_t>> a, b;
    std::vector<lf_lora_adapter_t> table;
    lf_lora_batch_t batch{};

    int64_t ldx() const { return spec.ldx ? spec.ldx : spec.h_in; }
    int64_t ldy() const { return spec.ldy ? spec.ldy : spec.h_out; }

    Problem(const Spec &s, std::mt19937_64 &rng) : spec(s) {
        std::uniform_real_distribution<float> u(-1.0f, 1.0f);
        const int es = elem_size(s.dtype);
        auto fill = [&](std::vector<uint8_t> &buf, int64_t n, float amp) {
            buf.assign(static_cast<size_t>(n * es), 0);
            for (int64_t i = 0; i < n; ++i) {
                store(s.dtype, buf.data(), i, amp * u(rng));
            }
        };
        // Amplitudes keep |v| and |y| near 1 whatever the sizes, so fp16 never overflows.
        fill(x, s.n_rows * ldx(), 1.0f);
        fill(y, s.n_rows * ldy(), 1.0f);
        std::uniform_real_distribution<float> scale_dist(0.25f, 2.0f);
        for (const int32_t r : s.ranks) {
            a.emplace_back();
            b.emplace_back();
            fill(a.back(), int64_t{r} * s.h_in, 1.0f / std::sqrt(static_cast<float>(s.h_in)));
            fill(b.back(), int64_t{s.h_out} * r, 1.0f / std::sqrt(static_cast<float>(r)));
            table.push_back({a.back().data(), b.back().data(), r, s.dtype, scale_dist(rng), 0});
        }
        batch.dtype = s.dtype;
        batch.n_rows = s.n_rows;
        batch.h_in = s.h_in;
        batch.h_out = s.h_out;
        batch.ldx = s.ldx;
        batch.ldy = s.ldy;
        batch.max_rank = s.max_rank;
        batch.select = s.select;
        batch.adapters = table.data();
        batch.n_adapters = static_cast<int32_t>(table.size());
        batch.row_adapter = spec.row_adapter.data();
        batch.n_segments = static_cast<int32_t>(spec.seg_adapter.size());
        batch.seg_offsets = spec.seg_offsets.data();
        batch.seg_adapter = spec.seg_adapter.data();
    }
    Problem(const Problem &) = delete;
    Problem &operator=(const Problem &) = delete;

    int32_t adapter_of(int32_t row) const {
        if (spec.select == LF_LORA_SELECT_ROWS) {
            return spec.row_adapter[row];
        }
        for (size_t s = 0; s < spec.seg_adapter.size(); ++s) {
            if (row >= spec.seg_offsets[s] && row < spec.seg_offsets[s + 1]) {
                return spec.seg_adapter[s];
            }
        }
        return LF_LORA_NO_ADAPTER;
    }
};

// fp64 result of y += scale * B(Ax) and, per element, the sum of the magnitudes of every term
// (|y0| + |scale| sum_j |B_cj| sum_k |A_jk x_k|), which bounds the error of any fp32 evaluation.
struct Reference {
    std::vector<double> y, y_bound; // [n_rows * ldy]
    std::vector<double> v, v_bound; // [n_rows * max_rank]
};

inline Reference reference(const Problem &p) {
    const Spec &s = p.spec;
    Reference ref;
    ref.y.assign(static_cast<size_t>(s.n_rows * p.ldy()), 0.0);
    ref.y_bound.assign(ref.y.size(), 0.0);
    ref.v.assign(static_cast<size_t>(s.n_rows) * s.max_rank, 0.0);
    ref.v_bound.assign(ref.v.size(), 0.0);
    for (int32_t i = 0; i < s.n_rows; ++i) {
        for (int64_t c = 0; c < p.ldy(); ++c) {
            const double y0 = load(s.dtype, p.y.data(), i * p.ldy() + c);
            ref.y[i * p.ldy() + c] = y0;
            ref.y_bound[i * p.ldy() + c] = std::fabs(y0);
        }
        const int32_t ai = p.adapter_of(i);
        if (ai < 0) {
            continue;
        }
        const lf_lora_adapter_t &ad = p.table[ai];
        const int32_t r = ad.rank;
        std::vector<double> v(r), vb(r);
        for (int32_t j = 0; j < r; ++j) {
            for (int32_t k = 0; k < s.h_in; ++k) {
                const double t = load(s.dtype, p.a[ai].data(), int64_t{j} * s.h_in + k) *
                                 load(s.dtype, p.x.data(), i * p.ldx() + k);
                v[j] += t;
                vb[j] += std::fabs(t);
            }
            ref.v[static_cast<size_t>(i) * s.max_rank + j] = v[j];
            ref.v_bound[static_cast<size_t>(i) * s.max_rank + j] = vb[j];
        }
        for (int32_t c = 0; c < s.h_out; ++c) {
            double acc = 0.0, bound = 0.0;
            for (int32_t j = 0; j < r; ++j) {
                const double bcj = load(s.dtype, p.b[ai].data(), int64_t{c} * r + j);
                acc += bcj * v[j];
                bound += std::fabs(bcj) * vb[j];
            }
            ref.y[i * p.ldy() + c] += ad.scale * acc;
            ref.y_bound[i * p.ldy() + c] += std::fabs(ad.scale) * bound;
        }
    }
    return ref;
}

// Error allowed against the fp64 reference: one rounding of the output plus Higham's gamma_n
// fp32 accumulation bound, n being the longest chain of dependent roundings. The CPU sums a dot
// product in 16 interleaved partial sums (h_in / 16 + 4 deep), then the expand over the rank,
// plus a few roundings for scale and the final add; pass cpu = false for code whose summation
// order is unknown (GPU, cuBLAS), which gets the bound for a plain left-to-right sum.
inline double tolerance(int32_t dtype, int32_t h_in, int32_t rank, double bound, bool cpu = true) {
    const double depth = (cpu ? h_in / 16.0 + 4 : static_cast<double>(h_in)) + rank + 8;
    return (output_roundoff(dtype) + depth * 0x1p-24) * bound + 1e-30;
}

} // namespace lora_test
