// The boundary between the CPU driver (lora_cpu.cpp: checks, grouping, threads) and the inner
// kernels, which are compiled once per instruction set in their own translation units
// (lora_cpu_isa_*.cpp, each with its own -m flags) and chosen at run time.
//
// Only plain structs, constants and declarations here, no inline functions: a function that is
// inline (or a template) gets an out-of-line copy in every translation unit that does not inline
// it, the linker keeps one of those copies, and if it kept the AVX-512 one the baseline path
// would run AVX-512 instructions. The kernel units keep everything else in anonymous namespaces.
#pragma once

#include <cstdint>

#include "loraflip_lora.h"

namespace loraflip::lora {

// Every variant sums a dot product in this many interleaved partial sums (lane p takes the
// elements k with k % 16 == p) and adds them in the same fixed tree, so the shrink's summation
// order, and the error bound the tests use (h_in / 16 + 4 dependent roundings), is the same for
// all of them. Converted rows are zero-padded to a multiple of this.
constexpr int64_t kDotLanes = 16;

// The shrink's per-thread buffers (allocated by the driver; contents owned by the kernels).
struct ShrinkBuffers {
    float *x;           // [kShrinkRows][stride]: the item's x rows in fp32, zero-padded
    float *a;           // [max_rank][stride]: A of adapter a_adapter in fp32, zero-padded
    int64_t stride;     // row stride of x and a: h_in padded to kDotLanes, plus one cache line
    int32_t a_adapter;  // adapter whose A is in `a`, or -1; reused while items keep the adapter
};

// The expand's per-thread buffers: B transposed to [rank][stride] fp32 so that the inner loop
// runs along contiguous columns, converted one column chunk at a time on first use.
struct ExpandBuffers {
    float *bt;              // [max_rank][stride], columns past h_out are zero
    int64_t stride;         // h_out padded to kDotLanes, plus one cache line
    int32_t *chunk_adapter; // [ceil(h_out / chunk)]: adapter whose columns are in bt, or -1
    int32_t chunk;          // columns per chunk (the driver's expand item width)
};

// One instruction-set variant of the kernels.
struct CpuKernels {
    const char *name; // what lf_lora_cpu_isa returns while this variant is in use
    // v[rows[t], 0:r] = A_a x_rows[t] for t < count (count <= kShrinkRows of the driver).
    void (*shrink)(const lf_lora_batch_t &b, int32_t adapter, const int32_t *rows, int32_t count,
                   const void *x, float *v, ShrinkBuffers &s);
    // y[rows[t], c0:c0+cn] += scale * B_a[c0:c0+cn, :] v[rows[t]]; c0 is a multiple of
    // s.chunk and cn <= s.chunk.
    void (*expand)(const lf_lora_batch_t &b, int32_t adapter, const int32_t *rows, int32_t count,
                   int32_t c0, int32_t cn, const float *v, void *y, ExpandBuffers &s);
};

// Defined by the kernel units that this build compiles (see meson.build: the x86-64 ones only
// on x86-64, and each only where the compiler takes its flags).
const CpuKernels &cpu_kernels_baseline();
const CpuKernels &cpu_kernels_avx2();
const CpuKernels &cpu_kernels_avx512();
const CpuKernels &cpu_kernels_avx512bf16();

} // namespace loraflip::lora
