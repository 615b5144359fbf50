// The public checks of validate.hpp over the instruction-set variant chosen at run time (the
// kernels are in validate_isa_*.cpp), and the checksum split over threads.
#include "kernels/validate.hpp"

#include <atomic>
#include <cstring>
#include <vector>

#include "ipc/split_runs.hpp"
#include "kernels/isa.hpp"
#include "kernels/validate_isa.hpp"

namespace loraflip::kernels {
namespace {

bool always_supported() { return true; }

#if defined(LF_VALIDATE_HAVE_AVX2)
// __builtin_cpu_supports also checks that the OS saves the wide registers (XCR0), not only CPUID.
bool avx2_supported() { return __builtin_cpu_supports("avx2"); }
#endif
#if defined(LF_VALIDATE_HAVE_AVX512)
// BW for the 16-bit compares, DQ for the 64-bit multiplies (VPMULLQ) of the checksum.
bool avx512_supported() {
  return avx2_supported() && __builtin_cpu_supports("avx512f") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
}
#endif

// Best first; the baseline runs everywhere.
constexpr IsaVariant<ValidateKernels> kVariants[] = {
#if defined(LF_VALIDATE_HAVE_AVX512)
    {validate_kernels_avx512, avx512_supported},
#endif
#if defined(LF_VALIDATE_HAVE_AVX2)
    {validate_kernels_avx2, avx2_supported},
#endif
    {validate_kernels_baseline, always_supported},
};

// Set only by force_validate_isa (tests, benchmarks); otherwise the choice made at first use.
std::atomic<const ValidateKernels *> g_forced{nullptr};

const ValidateKernels &active_kernels() {
  if (const ValidateKernels *k = g_forced.load(std::memory_order_acquire); k != nullptr) return *k;
  // LORAFLIP_VALIDATE_ISA names a variant to use instead of the best one (to compare them);
  // isa.hpp says what happens to a name that cannot be used. Thread-safe, once.
  static const ValidateKernels &chosen = choose_isa(kVariants, "LORAFLIP_VALIDATE_ISA");
  return chosen;
}

// The checksum's last term: the 1 to 7 bytes after the whole words, zero-padded, at index
// `words`; and the length. Zero-length tails add nothing.
uint64_t checksum_tail(const unsigned char *p, uint64_t bytes) {
  uint64_t sum = bytes;
  const uint64_t words = bytes / 8;
  if (const uint64_t tail = bytes % 8; tail != 0) {
    uint64_t w = 0;
    std::memcpy(&w, p + words * 8, tail);
    sum += checksum_mix(w, words);
  }
  return sum;
}

}  // namespace

int64_t first_non_finite(const void *data, uint64_t count, int dtype) {
  return active_kernels().first_non_finite(data, count, dtype);
}

uint64_t checksum(const void *data, uint64_t bytes) {
  const auto *p = static_cast<const unsigned char *>(data);
  return active_kernels().checksum_words(p, 0, bytes / 8) + checksum_tail(p, bytes);
}

uint64_t checksum_words(const void *data, uint64_t first, uint64_t words) {
  return active_kernels().checksum_words(data, first, words);
}

uint64_t checksum_parallel(const void *data, uint64_t bytes) {
  const auto *p = static_cast<const unsigned char *>(data);
  const uint64_t words = bytes / 8;
  const unsigned runs = ipc::runs_for(bytes, words);
  if (runs < 2) return checksum(data, bytes);
  const ValidateKernels &k = active_kernels();
  // Runs of whole cache lines (8 words), each summing its words under their global indices:
  // the wrapping sum does not care how it is grouped.
  const std::vector<size_t> starts = ipc::even_runs(words, runs, 8);
  std::vector<uint64_t> partial(starts.size() - 1);
  ipc::for_each_run(starts, [&](size_t run, size_t begin, size_t end) {
    partial[run] = k.checksum_words(p + 8 * begin, begin, end - begin);
  });
  uint64_t sum = checksum_tail(p, bytes);
  for (uint64_t s : partial) sum += s;
  return sum;
}

const char *validate_isa() { return active_kernels().name; }

std::vector<ValidateIsaVariant> validate_isa_variants() {
  return list_isa_variants<ValidateIsaVariant>(kVariants);
}

bool force_validate_isa(const char *name) {
  if (name == nullptr) {
    g_forced.store(nullptr, std::memory_order_release);
    return true;
  }
  const ValidateKernels *k = runnable_isa(kVariants, name);
  if (k == nullptr) return false;
  g_forced.store(k, std::memory_order_release);
  return true;
}

}  // namespace loraflip::kernels
