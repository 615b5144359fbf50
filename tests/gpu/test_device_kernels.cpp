// CUDA launchers of kernels/device_kernels.hpp against the CPU functions on the same random
// inputs: checksum, first non-finite index and cast bits must be identical. Built only with
// CUDA; exits 77 (meson: skipped) with the reason printed when no GPU is usable.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cuda_runtime.h>

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
  CUDA_OK(cudaMemcpy(data.get(), host.data(), host.size(), cudaMemcpyHostToDevice));
  // Garbage in the result slot: the launcher must write it in every case.
  CUDA_OK(cudaMemset(result.get(), 0x5A, sizeof(int64_t)));
  REQUIRE(lf_cuda_first_non_finite(data.get(), count, dtype,
                                   reinterpret_cast<int64_t *>(result.get()), ws.get(), &ws_bytes,
                                   stream.get()) == LF_OK);
  stream.sync();
  int64_t out = 0;
  CUDA_OK(cudaMemcpy(&out, result.get(), sizeof out, cudaMemcpyDeviceToHost));
  return out;
}

}  // namespace

TEST_CASE("GPU checksum equals the CPU checksum at every size and alignment") {
  std::mt19937_64 rng(1);
  Stream stream;
  const size_t max_bytes = (size_t{1} << 24) + 64;
  const std::vector<unsigned char> host = random_bytes(max_bytes, rng);
  DeviceBuffer data(max_bytes), out(sizeof(uint64_t));
  DeviceBuffer ws(kCudaWorkspaceMaxBytes);
  CUDA_OK(cudaMemcpy(data.get(), host.data(), max_bytes, cudaMemcpyHostToDevice));
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
      CUDA_OK(cudaMemsetAsync(out.get(), 0x77, 8, static_cast<cudaStream_t>(stream.get())));
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
  CUDA_OK(cudaMemcpy(src.get(), bits.data(), count * 4, cudaMemcpyHostToDevice));
  std::vector<float> host_src(count);
  std::memcpy(host_src.data(), bits.data(), count * 4);

  for (int dtype : {LF_DTYPE_F16, LF_DTYPE_BF16, LF_DTYPE_F32}) {
    CAPTURE(dtype);
    const size_t es = dtype == LF_DTYPE_F32 ? 4 : 2;
    CUDA_OK(cudaMemset(dst.get(), 0xEE, count * 4 + 16));
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
