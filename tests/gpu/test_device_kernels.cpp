// CUDA launchers of kernels/device_kernels.hpp against the CPU functions on the same random
// inputs: checksum, first non-finite index and cast bits must be identical. Built only with
// CUDA; exits 77 (meson: skipped) with the reason printed when no GPU is usable.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "kernels/cast.hpp"
#include "kernels/device_kernels.hpp"
#include "kernels/validate.hpp"
#include "loraflip.h"

using namespace loraflip::kernels;

namespace {

#define CUDA_OK(expr) REQUIRE((expr) == cudaSuccess)

// Owns one device allocation.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) {
    if (bytes > 0) REQUIRE(cudaMalloc(&p_, bytes) == cudaSuccess);
  }
  DeviceBuffer(const DeviceBuffer &) = delete;
  DeviceBuffer &operator=(const DeviceBuffer &) = delete;
  ~DeviceBuffer() { cudaFree(p_); }
  unsigned char *get() const { return static_cast<unsigned char *>(p_); }

 private:
  void *p_ = nullptr;
};

// Owns one stream, so the launchers run on a stream other than the default one.
class Stream {
 public:
  Stream() { REQUIRE(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking) == cudaSuccess); }
  Stream(const Stream &) = delete;
  Stream &operator=(const Stream &) = delete;
  ~Stream() { cudaStreamDestroy(s_); }
  void *get() const { return s_; }
  cudaStream_t cuda() const { return s_; }
  void sync() const { REQUIRE(cudaStreamSynchronize(s_) == cudaSuccess); }

 private:
  cudaStream_t s_ = nullptr;
};

std::vector<unsigned char> random_bytes(size_t n, std::mt19937_64 &rng) {
  std::vector<unsigned char> v(n);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint64_t r = rng();
    std::memcpy(v.data() + i, &r, 8);
  }
  for (; i < n; ++i) v[i] = static_cast<unsigned char>(rng());
  return v;
}

size_t elem_size(int dtype) {
  switch (dtype) {
    case LF_DTYPE_F32: case LF_DTYPE_I32: return 4;
    case LF_DTYPE_F64: case LF_DTYPE_I64: return 8;
    case LF_DTYPE_F16: case LF_DTYPE_BF16: return 2;
    default: return 1;
  }
}

bool is_float(int dtype) {
  return dtype == LF_DTYPE_F32 || dtype == LF_DTYPE_F64 || dtype == LF_DTYPE_F16 ||
         dtype == LF_DTYPE_BF16;
}

// Sets the exponent of element i to a finite value (clears its top exponent bit).
void make_finite(std::vector<unsigned char> &buf, size_t i, size_t es) {
  buf[i * es + es - 1] &= 0xBF;
}
// Sets element i to an infinity or a NaN of its dtype (exponent all ones).
void make_non_finite(std::vector<unsigned char> &buf, size_t i, int dtype, bool nan) {
  const size_t es = elem_size(dtype);
  unsigned char *p = buf.data() + i * es;
  const uint64_t bits = [&]() -> uint64_t {
    switch (dtype) {
      case LF_DTYPE_F32: return nan ? 0x7FC00001u : 0x7F800000u;
      case LF_DTYPE_F64: return nan ? 0xFFF8000000000001ull : 0xFFF0000000000000ull;
      case LF_DTYPE_F16: return nan ? 0x7C01u : 0xFC00u;
      case LF_DTYPE_BF16: return nan ? 0xFF81u : 0x7F80u;
      default: return 0;
    }
  }();
  std::memcpy(p, &bits, es);  // little-endian: the low es bytes
}

int64_t gpu_first_non_finite(const std::vector<unsigned char> &host, uint64_t count, int dtype,
                             const Stream &stream) {
  size_t ws_bytes = 0;
  REQUIRE(lf_cuda_first_non_finite(nullptr, count, dtype, nullptr, nullptr, &ws_bytes,
                                   stream.get()) == LF_OK);
  DeviceBuffer data(host.size()), ws(ws_bytes), result(sizeof(int64_t));
  // On the launch's stream: the setup is ordered before the launch without a device-wide sync
  // (the stream is non-blocking, so the legacy default stream would not order it).
  CUDA_OK(cudaMemcpyAsync(data.get(), host.data(), host.size(), cudaMemcpyHostToDevice,
                          stream.cuda()));
  // Garbage in the result slot: the launcher must write it in every case.
  CUDA_OK(cudaMemsetAsync(result.get(), 0x5A, sizeof(int64_t), stream.cuda()));
  REQUIRE(lf_cuda_first_non_finite(data.get(), count, dtype,
                                   reinterpret_cast<int64_t *>(result.get()), ws.get(), &ws_bytes,
                                   stream.get()) == LF_OK);
  stream.sync();
  int64_t out = 0;
  CUDA_OK(cudaMemcpy(&out, result.get(), sizeof out, cudaMemcpyDeviceToHost));
  return out;
}

// A slot of many tensors laid out one after the other, each at a random multiple of its element
// size past the previous one, filled with random bytes and every float element made finite.
struct ManyTensors {
  std::vector<unsigned char> slot;
  std::vector<CudaScanTensor> tensors;

  ManyTensors(const std::vector<std::pair<int, uint64_t>> &dtype_counts, std::mt19937_64 &rng) {
    uint64_t at = 0;
    for (const auto &[dtype, count] : dtype_counts) {
      const uint64_t es = elem_size(dtype);
      at = (at + es - 1) / es * es + es * (rng() % 4);
      tensors.push_back({at, count, dtype, 0});
      at += count * es;
    }
    slot = random_bytes(at + rng() % 16, rng);
    for (const CudaScanTensor &t : tensors) {
      if (is_float(t.dtype)) {
        const size_t es = elem_size(t.dtype);
        for (uint64_t i = 0; i < t.count; ++i) slot[t.offset + i * es + es - 1] &= 0xBF;
      }
    }
  }
  // Makes element i of tensor t an infinity or a NaN.
  void plant(size_t t, uint64_t i, bool nan) {
    const CudaScanTensor &e = tensors.at(t);
    REQUIRE(i < e.count);
    const size_t es = elem_size(e.dtype);
    std::vector<unsigned char> one(es);
    make_non_finite(one, 0, e.dtype, nan);
    std::memcpy(slot.data() + e.offset + i * es, one.data(), es);
  }
  std::vector<int64_t> cpu() const {
    std::vector<int64_t> out;
    for (const CudaScanTensor &t : tensors)
      out.push_back(first_non_finite(slot.data() + t.offset, t.count, t.dtype));
    return out;
  }
};

// lf_cuda_first_non_finite_tensors over a copy of the slot, with garbage in the results first.
std::vector<int64_t> gpu_first_non_finite_tensors(const ManyTensors &m, const Stream &stream) {
  const size_t n = m.tensors.size();
  size_t ws_bytes = 0;
  REQUIRE(lf_cuda_first_non_finite_tensors(nullptr, m.tensors.data(), n, nullptr, nullptr,
                                           &ws_bytes, stream.get()) == LF_OK);
  REQUIRE(ws_bytes == n * 32);
  DeviceBuffer data(m.slot.size()), ws(ws_bytes), results(n * sizeof(int64_t));
  if (!m.slot.empty())
    CUDA_OK(cudaMemcpyAsync(data.get(), m.slot.data(), m.slot.size(), cudaMemcpyHostToDevice,
                            stream.cuda()));
  if (n != 0) CUDA_OK(cudaMemsetAsync(results.get(), 0x5A, n * sizeof(int64_t), stream.cuda()));
  REQUIRE(lf_cuda_first_non_finite_tensors(data.get(), m.tensors.data(), n,
                                           reinterpret_cast<int64_t *>(results.get()), ws.get(),
                                           &ws_bytes, stream.get()) == LF_OK);
  stream.sync();
  std::vector<int64_t> out(n);
  if (n != 0)
    CUDA_OK(cudaMemcpy(out.data(), results.get(), n * sizeof(int64_t), cudaMemcpyDeviceToHost));
  return out;
}

}  // namespace

TEST_CASE("GPU first non-finite over many tensors gives every tensor the CPU's index") {
  std::mt19937_64 rng(4);
  Stream stream;
  const int dtypes[] = {LF_DTYPE_F32, LF_DTYPE_F16, LF_DTYPE_BF16, LF_DTYPE_F64,
                        LF_DTYPE_I8,  LF_DTYPE_U8,  LF_DTYPE_I32,  LF_DTYPE_I64};
  // Two huge tensors among ~300 tiny and middling ones (0 and 1 element included, and sizes
  // around the kernel's 4096-element chunks), so that chunks of one tensor span the grid while
  // most tensors have one chunk; a float tensor last.
  std::vector<std::pair<int, uint64_t>> layout = {{LF_DTYPE_F16, 3'000'001}};
  const uint64_t middling[] = {2047, 4095, 4096, 4097, 8193, 70001};
  for (int i = 0; i < 300; ++i) {
    const int dtype = dtypes[rng() % 8];
    const uint64_t count = i % 25 == 0 ? middling[rng() % 6] : rng() % 40;
    layout.push_back({dtype, count});
    if (i == 150) layout.push_back({LF_DTYPE_F32, 1'500'000});
    if (i == 200) layout.push_back({LF_DTYPE_BF16, 70001});
  }
  layout.push_back({LF_DTYPE_BF16, 1});
  layout.push_back({LF_DTYPE_F32, 5000});
  ManyTensors m(layout, rng);
  const size_t last = m.tensors.size() - 1;
  std::vector<size_t> floats;
  for (size_t t = 0; t < m.tensors.size(); ++t)
    if (m.tensors[t].count != 0 && is_float(m.tensors[t].dtype)) floats.push_back(t);

  std::vector<int64_t> want = m.cpu();
  REQUIRE(std::all_of(want.begin(), want.end(), [](int64_t v) { return v == -1; }));
  CHECK(gpu_first_non_finite_tensors(m, stream) == want);

  // The last element of the last tensor, then the one-element tensor before it.
  m.plant(last, m.tensors[last].count - 1, true);
  m.plant(last - 1, 0, false);
  want = m.cpu();
  REQUIRE(want[last] == static_cast<int64_t>(m.tensors[last].count - 1));
  CHECK(gpu_first_non_finite_tensors(m, stream) == want);

  // Hits in both huge tensors on either side of a chunk boundary and far in; then in many
  // tensors at random places, several per tensor; then a tensor entirely NaN (its later chunks
  // can stop early) and integer tensors of all ones, which stay finite.
  m.plant(0, 2'999'999, true);
  m.plant(0, 8192, false);
  m.plant(0, 8191, true);
  want = m.cpu();
  REQUIRE(want[0] == 8191);
  CHECK(gpu_first_non_finite_tensors(m, stream) == want);
  for (int round = 0; round < 4; ++round) {
    CAPTURE(round);
    for (int h = 0; h < 40; ++h) {
      const size_t t = floats[rng() % floats.size()];
      m.plant(t, rng() % m.tensors[t].count, rng() % 2 == 0);
    }
    CHECK(gpu_first_non_finite_tensors(m, stream) == m.cpu());
  }
  for (size_t t = 0; t < m.tensors.size(); ++t) {
    const CudaScanTensor &e = m.tensors[t];
    if (e.count == 70001 && is_float(e.dtype))
      for (uint64_t i = 0; i < e.count; ++i) m.plant(t, i, i % 3 == 0);
    if (e.dtype == LF_DTYPE_I32 || e.dtype == LF_DTYPE_I64)
      std::memset(m.slot.data() + e.offset, 0xFF, e.count * elem_size(e.dtype));
  }
  CHECK(gpu_first_non_finite_tensors(m, stream) == m.cpu());
}

TEST_CASE("GPU first non-finite over no tensors, or integer tensors only, does nothing wrong") {
  std::mt19937_64 rng(5);
  Stream stream;
  CHECK(gpu_first_non_finite_tensors(ManyTensors({}, rng), stream).empty());
  ManyTensors ints({{LF_DTYPE_I32, 100}, {LF_DTYPE_U8, 0}, {LF_DTYPE_I64, 3}, {LF_DTYPE_F16, 0}},
                   rng);
  std::fill(ints.slot.begin(), ints.slot.end(), 0xFF);
  CHECK(gpu_first_non_finite_tensors(ints, stream) == std::vector<int64_t>(4, -1));
}

TEST_CASE("GPU checksum equals the CPU checksum at every size and alignment") {
  std::mt19937_64 rng(1);
  Stream stream;
  const size_t max_bytes = (size_t{1} << 24) + 64;
  const std::vector<unsigned char> host = random_bytes(max_bytes, rng);
  DeviceBuffer data(max_bytes), out(sizeof(uint64_t));
  DeviceBuffer ws(kCudaWorkspaceMaxBytes);
  CUDA_OK(cudaMemcpyAsync(data.get(), host.data(), max_bytes, cudaMemcpyHostToDevice,
                          stream.cuda()));
  std::vector<uint64_t> lengths = {0, 1, 7, 8, 9, 15, 16, 17, 1000, 4096, 65535, 2048 * 8 + 3,
                                   (1u << 20) + 5, size_t{1} << 24};
  for (int i = 0; i < 20; ++i) lengths.push_back(rng() % (size_t{1} << 24));
  for (uint64_t offset = 0; offset < 8; ++offset) {
    for (uint64_t len : lengths) {
      CAPTURE(offset);
      CAPTURE(len);
      size_t ws_bytes = 0;
      REQUIRE(lf_cuda_checksum(nullptr, len, nullptr, nullptr, &ws_bytes, stream.get()) == LF_OK);
      REQUIRE(ws_bytes <= kCudaWorkspaceMaxBytes);
      CUDA_OK(cudaMemsetAsync(out.get(), 0x77, 8, stream.cuda()));
      REQUIRE(lf_cuda_checksum(data.get() + offset, len, reinterpret_cast<uint64_t *>(out.get()),
                               ws.get(), &ws_bytes, stream.get()) == LF_OK);
      stream.sync();
      uint64_t got = 0;
      CUDA_OK(cudaMemcpy(&got, out.get(), 8, cudaMemcpyDeviceToHost));
      REQUIRE(got == checksum(host.data() + offset, len));
    }
  }
}

TEST_CASE("GPU checksum refuses a workspace smaller than it asked for") {
  Stream stream;
  DeviceBuffer data(1 << 20), out(8), ws(kCudaWorkspaceMaxBytes);
  size_t ws_bytes = 0;
  REQUIRE(lf_cuda_checksum(nullptr, 1 << 20, nullptr, nullptr, &ws_bytes, stream.get()) == LF_OK);
  REQUIRE(ws_bytes > 8);
  size_t small = ws_bytes - 8;
  CHECK(lf_cuda_checksum(data.get(), 1 << 20, reinterpret_cast<uint64_t *>(out.get()), ws.get(),
                         &small, stream.get()) == LF_E_INVALID_ARGUMENT);
}

TEST_CASE("GPU first non-finite index equals the CPU one for every dtype") {
  std::mt19937_64 rng(2);
  Stream stream;
  for (int dtype : {LF_DTYPE_F32, LF_DTYPE_F64, LF_DTYPE_F16, LF_DTYPE_BF16}) {
    CAPTURE(dtype);
    const size_t es = elem_size(dtype);
    // Sizes around one block's share (256 threads x 8) and past the 1024-block grid.
    for (uint64_t count : {uint64_t{0}, uint64_t{1}, uint64_t{2047}, uint64_t{2049},
                           uint64_t{3'000'001}}) {
      CAPTURE(count);
      std::vector<unsigned char> buf = random_bytes(count * es, rng);
      for (size_t i = 0; i < count; ++i) make_finite(buf, i, es);
      REQUIRE(first_non_finite(buf.data(), count, dtype) == -1);
      CHECK(gpu_first_non_finite(buf, count, dtype, stream) == -1);
      if (count == 0) continue;
      // One bad element at the end, then several at random places (the first must win, even
      // when a later block or a later grid-stride step also finds one).
      make_non_finite(buf, count - 1, dtype, true);
      REQUIRE(first_non_finite(buf.data(), count, dtype) == static_cast<int64_t>(count - 1));
      CHECK(gpu_first_non_finite(buf, count, dtype, stream) == static_cast<int64_t>(count - 1));
      for (int round = 0; round < 4; ++round) {
        const int hits = 1 + static_cast<int>(rng() % 5);
        for (int h = 0; h < hits; ++h) make_non_finite(buf, rng() % count, dtype, rng() % 2 == 0);
        const int64_t want = first_non_finite(buf.data(), count, dtype);
        CHECK(gpu_first_non_finite(buf, count, dtype, stream) == want);
      }
      // Only the first `count - k` elements are looked at.
      const uint64_t shorter = count / 2;
      const int64_t want = first_non_finite(buf.data(), shorter, dtype);
      CHECK(gpu_first_non_finite(buf, shorter, dtype, stream) == want);
    }
  }
}

TEST_CASE("GPU first non-finite says -1 for integer dtypes whatever the bytes") {
  Stream stream;
  const std::vector<unsigned char> ones(4096, 0xFF);
  for (int dtype : {LF_DTYPE_I8, LF_DTYPE_U8, LF_DTYPE_I32, LF_DTYPE_I64}) {
    CHECK(gpu_first_non_finite(ones, ones.size() / elem_size(dtype), dtype, stream) == -1);
  }
}

TEST_CASE("GPU cast gives the CPU cast's bits, rounding boundaries and specials included") {
  std::mt19937_64 rng(3);
  Stream stream;
  // Every high half with low halves at the rounding boundaries of bf16 (bit 16) and fp16
  // (bit 13, and the subnormal shifts), then random patterns: NaN payloads, infinities and
  // subnormals all occur.
  std::vector<uint32_t> bits;
  const uint32_t lows[] = {0x0000, 0x0001, 0x0FFF, 0x1000, 0x1001, 0x2000, 0x3000, 0x7FFF,
                           0x8000, 0x8001, 0x9000, 0xC000, 0xFFFF, 0x6000, 0xA000, 0xE000};
  for (uint32_t hi = 0; hi <= 0xFFFFu; ++hi) {
    for (uint32_t lo : lows) bits.push_back((hi << 16) | lo);
  }
  for (int i = 0; i < (1 << 22); ++i) bits.push_back(static_cast<uint32_t>(rng()));
  const uint64_t count = bits.size();

  DeviceBuffer src(count * 4), dst(count * 4 + 16);
  CUDA_OK(cudaMemcpyAsync(src.get(), bits.data(), count * 4, cudaMemcpyHostToDevice,
                          stream.cuda()));
  std::vector<float> host_src(count);
  std::memcpy(host_src.data(), bits.data(), count * 4);

  for (int dtype : {LF_DTYPE_F16, LF_DTYPE_BF16, LF_DTYPE_F32}) {
    CAPTURE(dtype);
    const size_t es = dtype == LF_DTYPE_F32 ? 4 : 2;
    CUDA_OK(cudaMemsetAsync(dst.get(), 0xEE, count * 4 + 16, stream.cuda()));
    REQUIRE(lf_cuda_cast_f32(reinterpret_cast<const float *>(src.get()), dst.get(), count, dtype,
                             stream.get()) == LF_OK);
    stream.sync();
    std::vector<unsigned char> got(count * es + 16), want(count * es);
    CUDA_OK(cudaMemcpy(got.data(), dst.get(), got.size(), cudaMemcpyDeviceToHost));
    REQUIRE(cast_f32(host_src.data(), want.data(), count, dtype) == LF_OK);
    size_t mismatches = 0, first = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      if (got[i] != want[i] && mismatches++ == 0) first = i / es;
    }
    CAPTURE(first);
    CHECK(mismatches == 0);
    // Nothing written past the end.
    for (size_t i = want.size(); i < got.size(); ++i) REQUIRE(got[i] == 0xEE);
  }
}

TEST_CASE("GPU cast refuses misaligned pointers and other dtypes") {
  Stream stream;
  DeviceBuffer src(64), dst(64);
  const auto *s = reinterpret_cast<const float *>(src.get());
  CHECK(lf_cuda_cast_f32(s, dst.get() + 1, 4, LF_DTYPE_BF16, stream.get()) ==
        LF_E_INVALID_ARGUMENT);
  CHECK(lf_cuda_cast_f32(reinterpret_cast<const float *>(src.get() + 2), dst.get(), 4,
                         LF_DTYPE_F16, stream.get()) == LF_E_INVALID_ARGUMENT);
  CHECK(lf_cuda_cast_f32(s, dst.get(), 4, LF_DTYPE_I32, stream.get()) == LF_E_INVALID_ARGUMENT);
  CHECK(lf_cuda_cast_f32(s, dst.get(), 0, LF_DTYPE_F16, stream.get()) == LF_OK);
}

int main(int argc, char **argv) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    std::printf("SKIP: no usable CUDA GPU (%s)\n",
                err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    return 77;  // meson's exit code for a skipped test
  }
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
