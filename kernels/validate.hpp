// Daemon-side checks of a committed slot: every float is finite, and a checksum of the bytes.
// CPU implementations; the CUDA ones (for device placements) must give the same answers. The
// whole check of a slot (first non-finite value per tensor, then the checksum) is
// device::check_slot_cpu, which the daemon's host placements and the host stand-in share.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace loraflip::kernels {

// Index of the first element that is NaN or infinite, or -1 when all are finite. dtype is an
// LF_DTYPE_* code; integer dtypes are always finite. Reads only the exponent bits, so it is
// exact for f16 and bf16 without converting them.
int64_t first_non_finite(const void *data, uint64_t count, int dtype);

// A 64-bit checksum of `bytes` bytes. Defined as the wrapping sum, over 8-byte little-endian
// words w_i (the tail zero-padded), of mix(w_i, i), plus the length. A sum of independent terms
// so that a GPU can compute it in any order and get the same value; mix() makes every bit of
// every word, and its position, matter.
uint64_t checksum(const void *data, uint64_t bytes);

// The part of checksum()'s sum that `words` whole 8-byte words at `data` add when they are the
// words first, first + 1, ... of the checksummed buffer: the wrapping sum of
// checksum_mix(w_k, first + k). Sums over disjoint runs add up, so that
//   checksum(d, n) == n + checksum_words(d, 0, n / 8) + (n % 8 ? checksum_mix(tail, n / 8) : 0)
// (tail: the last n % 8 bytes, zero-padded) for whichever way the words are cut into runs: for
// callers that sum runs on threads of their own, or chunks of a buffer as they arrive.
uint64_t checksum_words(const void *data, uint64_t first, uint64_t words);

// checksum(data, bytes), computed on several threads when the buffer is large enough for that
// to pay (ipc::runs_for: 8 MiB or more, one run per core up to 4): the sum is split into runs of
// words, each summed with its words' own indices, and the partial sums added. For callers that
// checksum whole slots or images (the daemon's commit check, a relay's transfers); the same
// value as checksum(), bit for bit.
uint64_t checksum_parallel(const void *data, uint64_t bytes);

// The checks above run one of several instruction-set variants (validate_isa.hpp): the best
// one this CPU runs, chosen once at the first call, or the one the environment variable
// LORAFLIP_VALIDATE_ISA names ("avx512", "avx2", "baseline"; read at that moment, ignored when
// this build lacks it or the CPU cannot run it). All give the same answers; they differ only in
// speed. validate_isa() names the variant in use.
const char *validate_isa();

// Every variant this build has, best first (the baseline, which runs everywhere, last), and
// whether this CPU runs it.
struct ValidateIsaVariant {
  const char *name;
  bool supported;
};
std::vector<ValidateIsaVariant> validate_isa_variants();

// For tests and benchmarks: makes the checks use the variant `name` from now on (nullptr: the
// one chosen at the first call again). False, and nothing changes, when this build lacks it or
// this CPU cannot run it. A check already running finishes with the variant it started with.
bool force_validate_isa(const char *name);

// The per-word term: the definition, used by the CUDA kernel, the CPU's tail word and the tests.
// The CPU variants spell it again for their vectors (validate_isa_kernels.h says why), and
// tests/kernels holds each of them to this one.
#if defined(__CUDACC__)
__host__ __device__
#endif
inline uint64_t checksum_mix(uint64_t word, uint64_t index) {
  // Constants of splitmix64 (Steele, Lea, Flood: "Fast splittable pseudorandom number
  // generators", 2014): a full-avalanche finalizer.
  uint64_t z = word + (index + 1) * 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace loraflip::kernels
