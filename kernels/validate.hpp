// Daemon-side checks of a committed slot: every float is finite, and a checksum of the bytes.
// CPU implementations; the CUDA ones (for device placements) must give the same answers. The
// whole check of a slot (first non-finite value per tensor, then the checksum) is
// device::check_slot_cpu, which the daemon's host placements and the host stand-in share.
#pragma once

#include <cstddef>
#include <cstdint>

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

// The per-word term, shared by the CPU loop and the CUDA kernel.
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
