// The boundary between validate.cpp (the public functions, the choice of a variant) and the
// kernels of the commit checks, compiled once per instruction set in their own translation units
// (validate_isa_*.cpp, each with its own -m flags; see meson.build) and chosen at run time.
//
// Only plain structs and declarations here, no inline functions: a function that is inline (or
// a template) gets an out-of-line copy in every translation unit that does not inline it, the
// linker keeps one of those copies, and if it kept the AVX-512 one the baseline path would run
// AVX-512 instructions (the same rule as kernels/lora/lora_cpu_isa.h). The kernel units keep
// everything else in anonymous namespaces and include no project header with inline functions.
#pragma once

#include <cstdint>

namespace loraflip::kernels {

// One instruction-set variant of the checks. Every variant gives the same answers, bit for bit
// (tests/kernels/test_checks.cpp holds each to the scalar references).
struct ValidateKernels {
  const char *name;  // what validate_isa() returns while this variant is in use
  // first_non_finite (validate.hpp): any alignment of `data`, any count.
  int64_t (*first_non_finite)(const void *data, uint64_t count, int dtype);
  // The sum (wrapping) of checksum_mix(w_k, first + k) over the `words` 8-byte little-endian
  // words w_k at data + 8k (any alignment): a run of whole words of checksum()'s sum, which
  // starts at word index `first`.
  uint64_t (*checksum_words)(const void *data, uint64_t first, uint64_t words);
};

// Defined by the kernel units that this build compiles (meson.build: the x86-64 ones only on
// x86-64, and each only where the compiler takes its flags; LF_VALIDATE_HAVE_* says which).
const ValidateKernels &validate_kernels_baseline();
const ValidateKernels &validate_kernels_avx2();
const ValidateKernels &validate_kernels_avx512();

}  // namespace loraflip::kernels
