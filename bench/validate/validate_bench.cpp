// Benchmark of the daemon's commit checks (kernels/validate): the finite scan of each float
// dtype and the checksum over a 32 MiB slot, for every instruction-set variant this CPU runs,
// against a floor (one load per cache line: what reading the slot costs at all), and the
// daemon's whole finite check of such a slot cut into 256 bf16 tensors (device::check_slot_cpu,
// threads included: bench/python's adapters). Prints a table; not a test.
//
//   lf-bench-validate [--mib N] [--repeat N]   (default 32 MiB, 15 repetitions; the median shown)
//
// Two states of the slot: "memory", every line flushed from the caches before each repetition
// (as the daemon finds a slot that a writer has just filled with streaming stores), and
// "cache", the same bytes again right after (the slot fits in a large last-level cache).
// Environment: LORAFLIP_VALIDATE_ISA picks the variant the library would choose (the table runs
// every variant anyway; the line above it names the library's choice).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "device/device.hpp"
#include "ipc/split_runs.hpp"
#include "kernels/validate.hpp"
#include "loraflip.h"

namespace {

using Clock = std::chrono::steady_clock;
using loraflip::kernels::ValidateIsaVariant;

// A slot-like buffer: 64-byte aligned, finite values of every dtype (bytes 0x3C: 1.0-ish
// exponents in f16, bf16, f32 and f64 alike; no all-ones exponent anywhere).
struct Slot {
  explicit Slot(uint64_t bytes) : bytes(bytes), storage(bytes / 8 + 8) {
    const auto base = reinterpret_cast<uintptr_t>(storage.data());
    data = reinterpret_cast<unsigned char *>(storage.data()) + (64 - base % 64) % 64;
    std::memset(data, 0x3C, bytes);
  }
  uint64_t bytes;
  std::vector<uint64_t> storage;
  unsigned char *data;
};

// Evicts the slot from every cache level, so that the next pass reads it from memory.
void flush(const Slot &s) {
#if defined(__x86_64__)
  for (uint64_t b = 0; b < s.bytes; b += 64) _mm_clflush(s.data + b);
  _mm_mfence();
#else
  (void)s;
#endif
}

// Median milliseconds of `repeat` runs of `work`, each after `prepare` (untimed).
double median_ms(int repeat, const std::function<void()> &prepare,
                 const std::function<void()> &work) {
  std::vector<double> ms;
  for (int r = 0; r < repeat; ++r) {
    prepare();
    const auto t0 = Clock::now();
    work();
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
  return ms[ms.size() / 2];
}

volatile uint64_t g_sink;  // keeps results alive

// One load per cache line: the floor under any pass over the slot.
uint64_t touch_lines(const Slot &s) {
  uint64_t sum = 0;
  for (uint64_t b = 0; b < s.bytes; b += 64) {
    uint64_t w;
    std::memcpy(&w, s.data + b, 8);
    sum += w;
  }
  return sum;
}

std::string cell(double ms, uint64_t bytes) {
  char out[48];
  std::snprintf(out, sizeof out, "%6.2f ms %5.1f GB/s", ms, static_cast<double>(bytes) / ms / 1e6);
  return out;
}

}  // namespace

int main(int argc, char **argv) {
  uint64_t mib = 32;
  int repeat = 15;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--mib" && i + 1 < argc) {
      mib = std::strtoull(argv[++i], nullptr, 10);
    } else if (a == "--repeat" && i + 1 < argc) {
      repeat = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: lf-bench-validate [--mib N] [--repeat N]\n");
      return 2;
    }
  }
  Slot slot(mib << 20);
  const char *chosen = loraflip::kernels::validate_isa();  // before any forcing: the library's choice
  const unsigned runs = loraflip::ipc::runs_for(slot.bytes, slot.bytes / 8);
  std::printf("commit checks over a %llu MiB slot, median of %d; the library's choice here: %s; "
              "%u hardware threads, checksum_parallel uses %u\n\n",
              static_cast<unsigned long long>(mib), repeat, chosen,
              std::thread::hardware_concurrency(), runs);

  const struct {
    const char *name;
    int dtype;
    uint64_t size;
  } scans[] = {{"bf16", LF_DTYPE_BF16, 2}, {"f16", LF_DTYPE_F16, 2}, {"f32", LF_DTYPE_F32, 4},
               {"f64", LF_DTYPE_F64, 8}};
  // The slot as the Python benchmarks' adapters cut it: 256 tensors of equal size, bf16.
  std::vector<loraflip::device::TensorExtent> tensors(256);
  for (size_t t = 0; t < tensors.size(); ++t) {
    const uint64_t each = slot.bytes / tensors.size() / 64 * 64;
    tensors[t].offset = t * each;
    tensors[t].bytes = each;
    tensors[t].dtype = LF_DTYPE_BF16;
  }
  for (const char *state : {"memory", "cache"}) {
    const bool cold = std::strcmp(state, "memory") == 0;
    const std::function<void()> prepare = [&] {
      if (cold) flush(slot);
    };
    std::printf("slot in %s\n", state);
    std::printf("  %-28s %s\n", "floor (a load per line)",
                cell(median_ms(repeat, prepare, [&] { g_sink = touch_lines(slot); }), slot.bytes)
                    .c_str());
    for (const ValidateIsaVariant &v : loraflip::kernels::validate_isa_variants()) {
      if (!v.supported) {
        std::printf("  %-10s (this CPU cannot run it)\n", v.name);
        continue;
      }
      loraflip::kernels::force_validate_isa(v.name);
      for (const auto &s : scans) {
        const double ms = median_ms(repeat, prepare, [&] {
          g_sink = static_cast<uint64_t>(
              loraflip::kernels::first_non_finite(slot.data, slot.bytes / s.size, s.dtype));
        });
        std::printf("  %-10s %-17s %s\n", v.name, (std::string(s.name) + " scan").c_str(),
                    cell(ms, slot.bytes).c_str());
      }
      const double slot_ms = median_ms(repeat, prepare, [&] {
        g_sink = static_cast<uint64_t>(
            loraflip::device::check_slot_cpu(reinterpret_cast<const std::byte *>(slot.data),
                                             slot.bytes, tensors, loraflip::device::kCheckFinite)
                .tensor);
      });
      std::printf("  %-10s %-17s %s\n", v.name, "check_slot_cpu", cell(slot_ms, slot.bytes).c_str());
      const double one = median_ms(repeat, prepare, [&] {
        g_sink = loraflip::kernels::checksum(slot.data, slot.bytes);
      });
      std::printf("  %-10s %-17s %s\n", v.name, "checksum", cell(one, slot.bytes).c_str());
      const double par = median_ms(repeat, prepare, [&] {
        g_sink = loraflip::kernels::checksum_parallel(slot.data, slot.bytes);
      });
      std::printf("  %-10s %-17s %s\n", v.name, "checksum_parallel", cell(par, slot.bytes).c_str());
    }
    loraflip::kernels::force_validate_isa(nullptr);
    std::printf("\n");
  }
  return 0;
}
