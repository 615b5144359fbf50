// The CPU kernels of the LoRA apply, written once and compiled once per instruction set: each
// lora_cpu_isa_*.cpp defines LF_LORA_ISA_LEVEL (0 baseline, 1 AVX2+FMA+F16C, 2 AVX-512 F/BW/VL,
// 3 the same plus AVX512-BF16), a namespace, an entry-point name and the variant's name, then
// includes this file; meson.build gives each unit its -m flags. Include nowhere else.
//
// Everything below has internal linkage (anonymous namespace) so that no copy compiled with
// wider instructions can stand in for another unit's (see lora_cpu_isa.h); only the unit's entry
// point is external. The AVX units include no project header with inline functions for the same
// reason: their conversions are spelled with intrinsics here.
//
// Per-element summation order, which is what makes results deterministic:
//  - shrink: 16 partial sums (lane p takes k % 16 == p, in increasing k), added in a fixed tree
//    (p and p + 8, then + 4, + 2, + 1). Fused multiply-add where the ISA has it. For f16 and
//    bf16 inputs every product is exact in fp32, so fusing changes nothing and the shrink gives
//    the same bits on every variant except avx512bf16, whose VDPBF16PS adds two products per
//    lane per step (same depth, another order).
//  - expand: acc = sum over j = 0..r-1 in order, then y = round(y + scale * acc); fused
//    multiply-adds on the AVX variants, separate on the baseline, so f32 results and the expand
//    differ in the last bits between variants, never between calls, threads or row groupings.
#include <cstdint>
#include <cstring>

#include "lora_cpu_isa.h"

#if LF_LORA_ISA_LEVEL >= 1
#include <immintrin.h>
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*(), spelled `__m512 __Y = __Y;`,
// which its own -Wuninitialized then reports wherever such an intrinsic is inlined (GCC bug
// 105593, fixed in GCC 13). The warnings are about the compiler's header, not this code.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#else
#include "lora_convert.h"
#endif

namespace loraflip::lora::LF_LORA_ISA_NS {
namespace {

// Storage types of this unit (the bits of one binary16 / bfloat16), distinct from lora_convert.h's
// so that the AVX units need not include it.
struct F16 {
    uint16_t bits;
};
struct BF16 {
    uint16_t bits;
};

#if LF_LORA_ISA_LEVEL >= 2
constexpr int W = 16; // floats per vector
using vf = __m512;
inline vf vload(const float *p) { return _mm512_loadu_ps(p); }
inline void vstore(float *p, vf v) { _mm512_storeu_ps(p, v); }
inline vf vset1(float f) { return _mm512_set1_ps(f); }
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vfmadd(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline vf load_w(const float *p) { return _mm512_loadu_ps(p); }
inline vf load_w(const BF16 *p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline vf load_w(const F16 *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)));
}
inline void store_w(float *p, vf v) { _mm512_storeu_ps(p, v); }
// Round to nearest even as f32_to_bf16 does (lora_convert.h), NaN kept quiet; not VCVTNEPS2BF16,
// which flushes subnormals.
inline void store_w(BF16 *p, vf v) {
    const __m512i x = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    const __m512i rounded =
        _mm512_srli_epi32(_mm512_add_epi32(x, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(
        _mm512_and_si512(x, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(0x40));
    const __m512i bits = _mm512_mask_mov_epi32(rounded, nan, quiet);
    _mm256_storeu_si256(reinterpret_cast<__m256i *>(p), _mm512_cvtepi32_epi16(bits));
}
inline void store_w(F16 *p, vf v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i *>(p),
                        _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#elif LF_LORA_ISA_LEVEL == 1
constexpr int W = 8;
using vf = __m256;
inline vf vload(const float *p) { return _mm256_loadu_ps(p); }
inline void vstore(float *p, vf v) { _mm256_storeu_ps(p, v); }
inline vf vset1(float f) { return _mm256_set1_ps(f); }
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vfmadd(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline vf load_w(const float *p) { return _mm256_loadu_ps(p); }
inline vf load_w(const BF16 *p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline vf load_w(const F16 *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
}
inline void store_w(float *p, vf v) { _mm256_storeu_ps(p, v); }
inline void store_w(BF16 *p, vf v) {
    const __m256i x = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    const __m256i rounded =
        _mm256_srli_epi32(_mm256_add_epi32(x, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    // Signed compare is right: both sides are below 2^31 after masking the sign.
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x7fffffff)),
                                           _mm256_set1_epi32(0x7f800000));
    const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(0x40));
    const __m256i bits = _mm256_blendv_epi8(rounded, quiet, nan);
    // Every lane is <= 0xffff, so the unsigned-saturating pack is exact; it packs within each
    // 128-bit half, and the permute gathers the two halves' low quadwords.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(bits, bits), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i *>(p), _mm256_castsi256_si128(packed));
}
inline void store_w(F16 *p, vf v) {
    _mm_storeu_si128(reinterpret_cast<__m128i *>(p),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#else
// Baseline: GCC/Clang generic vectors (SSE2 on x86-64, NEON on arm64); conversions through the
// scalar, bit-exact functions of lora_convert.h.
constexpr int W = 4;
using vf = float __attribute__((vector_size(16)));
inline vf vload(const float *p) {
    vf v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline void vstore(float *p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf vset1(float f) { return vf{f, f, f, f}; }
inline vf vzero() { return vf{}; }
// Not fused: baseline x86-64 has no FMA, and the ISO C++ mode keeps GCC from contracting.
inline vf vfmadd(vf a, vf b, vf c) { return a * b + c; }
inline float to_f32(float v) { return v; }
inline float to_f32(F16 v) { return f16_to_f32(f16{v.bits}); }
inline float to_f32(BF16 v) { return bf16_to_f32(bf16{v.bits}); }
template <class T> vf load_w(const T *p) {
    return vf{to_f32(p[0]), to_f32(p[1]), to_f32(p[2]), to_f32(p[3])};
}
inline void store_w(float *p, vf v) { vstore(p, v); }
inline void store_w(F16 *p, vf v) {
    for (int l = 0; l < 4; ++l) {
        p[l] = F16{f32_to_f16(v[l]).bits};
    }
}
inline void store_w(BF16 *p, vf v) {
    for (int l = 0; l < 4; ++l) {
        p[l] = BF16{f32_to_bf16(v[l]).bits};
    }
}
#endif

constexpr int U = static_cast<int>(kDotLanes) / W; // vectors per dot-product accumulator

// Register blocks, sized to the register file (32 zmm, 16 ymm, 16 xmm): the shrink's rows x
// ranks of accumulators (each U vectors), the expand's rows x vectors of columns.
#if LF_LORA_ISA_LEVEL >= 2
constexpr int kShrinkR = 4, kShrinkJ = 4, kExpandR = 4, kExpandC = 4;
#elif LF_LORA_ISA_LEVEL == 1
constexpr int kShrinkR = 2, kShrinkJ = 2, kExpandR = 4, kExpandC = 2;
#else
constexpr int kShrinkR = 2, kShrinkJ = 1, kExpandR = 4, kExpandC = 2;
#endif

// Converts the W elements at src (n valid, n a multiple of 8 and <= W; zeros past n) to fp32.
// Only the 16-float vectors ever see a part (8 of 16); narrower ones always get n == W.
template <class T> [[gnu::always_inline]] inline vf load_part(const T *src, int n) {
    if constexpr (W <= 8) {
        return load_w(src);
    } else {
        if (n == W) {
            return load_w(src);
        }
        T tmp[W];
        std::memset(tmp, 0, sizeof tmp);
        std::memcpy(tmp, src, sizeof(T) * static_cast<size_t>(n));
        return load_w(tmp);
    }
}

template <class T> [[gnu::always_inline]] inline void store_part(T *dst, vf v, int n) {
    if constexpr (W <= 8) {
        store_w(dst, v);
    } else {
        if (n == W) {
            store_w(dst, v);
            return;
        }
        T tmp[W];
        store_w(tmp, v);
        std::memcpy(dst, tmp, sizeof(T) * static_cast<size_t>(n));
    }
}

// dst[0:n] = src[0:n] in fp32, dst[n:padded] = 0. n is a multiple of 8, padded of kDotLanes.
template <class T> void convert_row(const T *src, int64_t n, float *dst, int64_t padded) {
    int64_t k = 0;
    for (; k + W <= n; k += W) {
        vstore(dst + k, load_w(src + k));
    }
    if (k < n) {
        vstore(dst + k, load_part(src + k, static_cast<int>(n - k)));
        k += W;
    }
    for (; k < padded; k += W) {
        vstore(dst + k, vzero());
    }
}

// The fixed tree that adds the 16 partial sums of one dot product: lane i and lane i + w for
// w = 8, 4, 2, 1. The AVX variants do the same additions on registers.
[[gnu::always_inline]] inline float sum16(const vf (&acc)[U]) {
#if LF_LORA_ISA_LEVEL >= 1
#if LF_LORA_ISA_LEVEL >= 2
    const __m512d wide = _mm512_castps_pd(acc[0]);
    const __m256 s8 = _mm256_add_ps(_mm256_castpd_ps(_mm512_castpd512_pd256(wide)),
                                    _mm256_castpd_ps(_mm512_extractf64x4_pd(wide, 1)));
#else
    const __m256 s8 = _mm256_add_ps(acc[0], acc[1]);
#endif
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
#else
    float lanes[kDotLanes];
    for (int u = 0; u < U; ++u) {
        vstore(lanes + u * W, acc[u]);
    }
    for (int w = 8; w >= 1; w /= 2) {
        for (int i = 0; i < w; ++i) {
            lanes[i] += lanes[i + w];
        }
    }
    return lanes[0];
#endif
}

// out[i * ldo + j] = dot(x row i, a row j) over n (padded) floats, for R rows and J ranks.
// Loops with constant bounds and the unroll pragmas keep the accumulator arrays in registers.
template <int R, int J>
void dot_block(const float *x, int64_t x_stride, const float *a, int64_t a_stride, int64_t n,
               float *const *out) {
    vf acc[R][J][U];
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 16
        for (int j = 0; j < J; ++j) {
#pragma GCC unroll 4
            for (int u = 0; u < U; ++u) {
                acc[i][j][u] = vzero();
            }
        }
    }
    for (int64_t k = 0; k < n; k += kDotLanes) {
        vf xv[R][U], av[J][U];
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) {
#pragma GCC unroll 4
            for (int u = 0; u < U; ++u) {
                xv[i][u] = vload(x + i * x_stride + k + u * W);
            }
        }
#pragma GCC unroll 16
        for (int j = 0; j < J; ++j) {
#pragma GCC unroll 4
            for (int u = 0; u < U; ++u) {
                av[j][u] = vload(a + j * a_stride + k + u * W);
            }
        }
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) {
#pragma GCC unroll 16
            for (int j = 0; j < J; ++j) {
#pragma GCC unroll 4
                for (int u = 0; u < U; ++u) {
                    acc[i][j][u] = vfmadd(av[j][u], xv[i][u], acc[i][j][u]);
                }
            }
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 16
        for (int j = 0; j < J; ++j) {
            out[i][j] = sum16(acc[i][j]);
        }
    }
}

int64_t padded(int64_t n) { return (n + kDotLanes - 1) / kDotLanes * kDotLanes; }

template <int R>
void shrink_rows(const float *x, int64_t stride, const float *a, int32_t rank, int64_t n,
                 float *const *out) {
    int32_t j = 0;
    for (; j + kShrinkJ <= rank; j += kShrinkJ) {
        float *o[R];
        for (int i = 0; i < R; ++i) {
            o[i] = out[i] + j;
        }
        dot_block<R, kShrinkJ>(x, stride, a + j * stride, stride, n, o);
    }
    for (; j < rank; ++j) {
        float *o[R];
        for (int i = 0; i < R; ++i) {
            o[i] = out[i] + j;
        }
        dot_block<R, 1>(x, stride, a + j * stride, stride, n, o);
    }
}

#if LF_LORA_ISA_LEVEL >= 3
// bf16 shrink straight from the caller's bf16 rows with VDPBF16PS (two products per fp32 lane
// per instruction, 32 elements per vector), no conversion pass. Lane p of a 32-element step
// takes elements 2p and 2p+1, so the 16 lanes again are 16 partial sums added by sum16's tree.
// VDPBF16PS treats subnormal inputs and results as zero; that moves a result by less than
// 2^-126 per flushed term, far inside the tests' absolute slack.
template <int R, int J>
void dot_block_bf16(const uint16_t *const *x, const uint16_t *const *a, int64_t n,
                    float *const *out) {
    __m512 acc[R][J];
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 16
        for (int j = 0; j < J; ++j) {
            acc[i][j] = _mm512_setzero_ps();
        }
    }
    // One loop for body and tail (a full mask costs nothing); a lambda for the step would make
    // GCC keep the accumulators in memory.
    for (int64_t k = 0; k < n; k += 32) {
        const __mmask32 mask = n - k >= 32 ? ~__mmask32{0}
                                           : static_cast<__mmask32>((uint64_t{1} << (n - k)) - 1);
        __m512i xv[R], av[J];
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) {
            xv[i] = _mm512_maskz_loadu_epi16(mask, x[i] + k);
        }
#pragma GCC unroll 16
        for (int j = 0; j < J; ++j) {
            av[j] = _mm512_maskz_loadu_epi16(mask, a[j] + k);
        }
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) {
#pragma GCC unroll 16
            for (int j = 0; j < J; ++j) {
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], reinterpret_cast<__m512bh>(av[j]),
                                             reinterpret_cast<__m512bh>(xv[i]));
            }
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 16
        for (int j = 0; j < J; ++j) {
            const vf one[1] = {acc[i][j]};
            out[i][j] = sum16(one);
        }
    }
}

void shrink_bf16_direct(const lf_lora_batch_t &b, const lf_lora_adapter_t &ad, const int32_t *rows,
                        int32_t count, const uint16_t *x, float *v) {
    const int64_t ldx = b.ldx != 0 ? b.ldx : b.h_in;
    const auto *a = static_cast<const uint16_t *>(ad.a);
    int32_t t = 0;
    auto run = [&]<int R>(int32_t t0) {
        const uint16_t *xr[R];
        float *o[R];
        for (int i = 0; i < R; ++i) {
            xr[i] = x + rows[t0 + i] * ldx;
            o[i] = v + static_cast<int64_t>(rows[t0 + i]) * b.max_rank;
        }
        int32_t j = 0;
        for (; j + kShrinkJ <= ad.rank; j += kShrinkJ) {
            const uint16_t *ar[kShrinkJ];
            float *oj[R];
            for (int q = 0; q < kShrinkJ; ++q) {
                ar[q] = a + static_cast<int64_t>(j + q) * b.h_in;
            }
            for (int i = 0; i < R; ++i) {
                oj[i] = o[i] + j;
            }
            dot_block_bf16<R, kShrinkJ>(xr, ar, b.h_in, oj);
        }
        for (; j < ad.rank; ++j) {
            const uint16_t *ar[1] = {a + static_cast<int64_t>(j) * b.h_in};
            float *oj[R];
            for (int i = 0; i < R; ++i) {
                oj[i] = o[i] + j;
            }
            dot_block_bf16<R, 1>(xr, ar, b.h_in, oj);
        }
    };
    for (; t + kShrinkR <= count; t += kShrinkR) {
        run.template operator()<kShrinkR>(t);
    }
    for (; t < count; ++t) {
        run.template operator()<1>(t);
    }
}
#endif

template <class T>
void shrink_typed(const lf_lora_batch_t &b, int32_t adapter, const int32_t *rows, int32_t count,
                  const T *x, float *v, ShrinkBuffers &s) {
    const lf_lora_adapter_t &ad = b.adapters[adapter];
    const int64_t ldx = b.ldx != 0 ? b.ldx : b.h_in;
    const int64_t n = padded(b.h_in);
    if (s.a_adapter != adapter) {
        const T *a = static_cast<const T *>(ad.a);
        for (int32_t j = 0; j < ad.rank; ++j) {
            convert_row(a + static_cast<int64_t>(j) * b.h_in, b.h_in, s.a + j * s.stride, n);
        }
        s.a_adapter = adapter;
    }
    for (int32_t t = 0; t < count; ++t) {
        convert_row(x + rows[t] * ldx, b.h_in, s.x + t * s.stride, n);
    }
    float *out[kShrinkR > 1 ? kShrinkR : 1];
    int32_t t = 0;
    for (; t + kShrinkR <= count; t += kShrinkR) {
        for (int i = 0; i < kShrinkR; ++i) {
            out[i] = v + static_cast<int64_t>(rows[t + i]) * b.max_rank;
        }
        shrink_rows<kShrinkR>(s.x + t * s.stride, s.stride, s.a, ad.rank, n, out);
    }
    for (; t < count; ++t) {
        out[0] = v + static_cast<int64_t>(rows[t]) * b.max_rank;
        shrink_rows<1>(s.x + t * s.stride, s.stride, s.a, ad.rank, n, out);
    }
}

void shrink(const lf_lora_batch_t &b, int32_t adapter, const int32_t *rows, int32_t count,
            const void *x, float *v, ShrinkBuffers &s) {
    switch (b.dtype) {
    case LF_DTYPE_F32:
        shrink_typed(b, adapter, rows, count, static_cast<const float *>(x), v, s);
        break;
    case LF_DTYPE_F16:
        shrink_typed(b, adapter, rows, count, static_cast<const F16 *>(x), v, s);
        break;
    default:
#if LF_LORA_ISA_LEVEL >= 3
        shrink_bf16_direct(b, b.adapters[adapter], rows, count, static_cast<const uint16_t *>(x),
                           v);
#else
        shrink_typed(b, adapter, rows, count, static_cast<const BF16 *>(x), v, s);
#endif
        break;
    }
}

#if LF_LORA_ISA_LEVEL >= 1
// dst row k (k < 8, rows dst_stride apart) = column k of the 8 x 8 tile at src (rows src_stride
// apart): pairs interleaved, then quadruples, then the 128-bit halves exchanged.
void transpose8(const float *src, int64_t src_stride, float *dst, int64_t dst_stride) {
    __m256 r[8];
    for (int i = 0; i < 8; ++i) {
        r[i] = _mm256_loadu_ps(src + i * src_stride);
    }
    __m256 t[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);     // a0 b0 a1 b1 | a4 b4 a5 b5
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]); // a2 b2 a3 b3 | a6 b6 a7 b7
    }
    __m256 q[8];
    for (int h = 0; h < 8; h += 4) { // rows a-d, then e-h
        q[h] = _mm256_shuffle_ps(t[h], t[h + 2], 0x44);     // a0 b0 c0 d0 | a4 b4 c4 d4
        q[h + 1] = _mm256_shuffle_ps(t[h], t[h + 2], 0xee); // a1 b1 c1 d1 | a5 b5 c5 d5
        q[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0x44); // column 2 | column 6
        q[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], 0xee); // column 3 | column 7
    }
    for (int k = 0; k < 4; ++k) {
        _mm256_storeu_ps(dst + k * dst_stride, _mm256_permute2f128_ps(q[k], q[k + 4], 0x20));
        _mm256_storeu_ps(dst + (k + 4) * dst_stride, _mm256_permute2f128_ps(q[k], q[k + 4], 0x31));
    }
}
#endif

// Fills bt[:, c0:c0+cn] (and zeros up to the padded width) with B[c0:c0+cn, :] transposed.
template <class T>
void transpose_chunk(const T *bsrc, int32_t rank, int32_t c0, int32_t cn, int32_t h_out,
                     ExpandBuffers &s) {
    // Converted W rows of B at a time (W * rank values, contiguous), then scattered into columns.
    float block[W * LF_LORA_MAX_RANK];
    for (int32_t c = 0; c < cn; c += W) {
        const int32_t nc = cn - c < W ? cn - c : W;
        const int64_t n = static_cast<int64_t>(nc) * rank;
        const T *src = bsrc + static_cast<int64_t>(c0 + c) * rank;
        int64_t e = 0;
        for (; e + W <= n; e += W) {
            vstore(block + e, load_w(src + e));
        }
        if constexpr (W > 8) {
            for (; e < n; e += 8) { // n is a multiple of 8 (nc is)
                float tmp[W];
                vstore(tmp, load_part(src + e, 8));
                std::memcpy(block + e, tmp, 8 * sizeof(float));
            }
        }
        int32_t j = 0;
#if LF_LORA_ISA_LEVEL >= 1
        // 8 x 8 tiles transposed in registers (measured: the scalar scatter below took a quarter
        // of a decode call); nc is a multiple of 8.
        for (; j + 8 <= rank; j += 8) {
            for (int32_t q0 = 0; q0 < nc; q0 += 8) {
                transpose8(block + q0 * rank + j, rank, s.bt + j * s.stride + c0 + c + q0,
                           s.stride);
            }
        }
#endif
        for (; j < rank; ++j) {
            float *dst = s.bt + j * s.stride + c0 + c;
            for (int32_t q = 0; q < nc; ++q) {
                dst[q] = block[q * rank + j];
            }
        }
    }
    // Columns past h_out up to the padded width stay zero so full vectors can be computed there.
    if (c0 + cn == h_out) {
        for (int32_t j = 0; j < rank; ++j) {
            for (int64_t c = h_out; c < padded(h_out); ++c) {
                s.bt[j * s.stride + c] = 0.0f;
            }
        }
    }
}

// R rows x C vectors of columns starting at column col (absolute): acc = sum_j v_j bt[j],
// then y = round(y + scale * acc). `valid` is the number of real columns in the last vector
// (W, or 8 at the end of a row when h_out % W == 8).
template <class T, int R, int C>
void expand_block(const float *const *vrows, int32_t rank, const float *bt, int64_t bt_stride,
                  T *const *yrows, int32_t col, float scale, int valid) {
    vf acc[R][C];
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 16
        for (int c = 0; c < C; ++c) {
            acc[i][c] = vzero();
        }
    }
    for (int32_t j = 0; j < rank; ++j) {
        vf bv[C];
#pragma GCC unroll 16
        for (int c = 0; c < C; ++c) {
            bv[c] = vload(bt + j * bt_stride + col + c * W);
        }
#pragma GCC unroll 16
        for (int i = 0; i < R; ++i) {
            const vf vi = vset1(vrows[i][j]);
#pragma GCC unroll 16
            for (int c = 0; c < C; ++c) {
                acc[i][c] = vfmadd(vi, bv[c], acc[i][c]);
            }
        }
    }
    const vf sc = vset1(scale);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 16
        for (int c = 0; c < C; ++c) {
            T *y = yrows[i] + col + c * W;
            const int n = c == C - 1 ? valid : W;
            store_part(y, vfmadd(sc, acc[i][c], load_part(y, n)), n);
        }
    }
}

// Cache lines of y that one full block covers in each row.
template <class T> constexpr int kBlockLines = static_cast<int>(kExpandC * W * sizeof(T) / 64);

// `next` (may be null): rows of y the caller handles after these, whose same columns are
// prefetched block by block. y streams from memory once; without this the loads of y wait for
// DRAM in the epilogue (measured: half the expand time at prefill sizes), and the hardware
// prefetcher does not follow these short (one chunk wide) runs.
template <class T, int R>
void expand_rows(const float *const *vrows, int32_t rank, const ExpandBuffers &s, T *const *yrows,
                 T *const *next, int n_next, int32_t c0, int32_t cn, float scale) {
    int32_t c = 0;
    for (; c + kExpandC * W <= cn; c += kExpandC * W) {
        for (int i = 0; i < n_next; ++i) {
            for (int l = 0; l < kBlockLines<T>; ++l) {
                __builtin_prefetch(reinterpret_cast<const char *>(next[i] + c0 + c) + 64 * l, 1);
            }
        }
        expand_block<T, R, kExpandC>(vrows, rank, s.bt, s.stride, yrows, c0 + c, scale, W);
    }
    for (; c < cn; c += W) {
        const int valid = cn - c < W ? cn - c : W;
        expand_block<T, R, 1>(vrows, rank, s.bt, s.stride, yrows, c0 + c, scale, valid);
    }
}

template <class T>
void expand_typed(const lf_lora_batch_t &b, int32_t adapter, const int32_t *rows, int32_t count,
                  int32_t c0, int32_t cn, const float *v, T *y, ExpandBuffers &s) {
    const lf_lora_adapter_t &ad = b.adapters[adapter];
    const int64_t ldy = b.ldy != 0 ? b.ldy : b.h_out;
    int32_t &cached = s.chunk_adapter[c0 / s.chunk];
    if (cached != adapter) {
        transpose_chunk(static_cast<const T *>(ad.b), ad.rank, c0, cn, b.h_out, s);
        cached = adapter;
    }
    int32_t t = 0;
    for (; t + kExpandR <= count; t += kExpandR) {
        const float *vr[kExpandR];
        T *yr[kExpandR];
        T *next[kExpandR];
        int n_next = 0;
        for (int i = 0; i < kExpandR; ++i) {
            vr[i] = v + static_cast<int64_t>(rows[t + i]) * b.max_rank;
            yr[i] = y + rows[t + i] * ldy;
            if (t + kExpandR + i < count) {
                next[n_next++] = y + rows[t + kExpandR + i] * ldy;
            }
        }
        expand_rows<T, kExpandR>(vr, ad.rank, s, yr, next, n_next, c0, cn, ad.scale);
    }
    for (; t < count; ++t) {
        const float *vr[1] = {v + static_cast<int64_t>(rows[t]) * b.max_rank};
        T *yr[1] = {y + rows[t] * ldy};
        expand_rows<T, 1>(vr, ad.rank, s, yr, nullptr, 0, c0, cn, ad.scale);
    }
}

void expand(const lf_lora_batch_t &b, int32_t adapter, const int32_t *rows, int32_t count,
            int32_t c0, int32_t cn, const float *v, void *y, ExpandBuffers &s) {
    switch (b.dtype) {
    case LF_DTYPE_F32:
        expand_typed(b, adapter, rows, count, c0, cn, v, static_cast<float *>(y), s);
        break;
    case LF_DTYPE_F16:
        expand_typed(b, adapter, rows, count, c0, cn, v, static_cast<F16 *>(y), s);
        break;
    default:
        expand_typed(b, adapter, rows, count, c0, cn, v, static_cast<BF16 *>(y), s);
        break;
    }
}

constexpr CpuKernels kKernels{LF_LORA_ISA_NAME, shrink, expand};

} // namespace
} // namespace loraflip::lora::LF_LORA_ISA_NS

namespace loraflip::lora {
const CpuKernels &LF_LORA_ISA_ENTRY() { return LF_LORA_ISA_NS::kKernels; }
} // namespace loraflip::lora
