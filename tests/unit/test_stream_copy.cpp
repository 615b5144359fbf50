// ipc::stream_copy copies like memcpy for every size and alignment, on both sides of the size
// where it switches to streaming stores.
#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "ipc/stream_copy.hpp"

TEST_CASE("stream_copy gives memcpy's bytes at every alignment and around every size edge") {
  using loraflip::ipc::kStreamCopyMinBytes;
  std::mt19937_64 rng(3);
  const size_t sizes[] = {0, 1, 15, 63, 64, kStreamCopyMinBytes - 1, kStreamCopyMinBytes,
                          kStreamCopyMinBytes + 1, kStreamCopyMinBytes + 63,
                          kStreamCopyMinBytes + 64 + 17, 3 * kStreamCopyMinBytes + 5};
  for (size_t size : sizes) {
    for (size_t dst_skew : {0, 1, 8, 15}) {
      for (size_t src_skew : {0, 3, 16}) {
        CAPTURE(size);
        CAPTURE(dst_skew);
        CAPTURE(src_skew);
        std::vector<unsigned char> src(size + 32), dst(size + 64, 0xA5);
        for (auto &b : src) b = static_cast<unsigned char>(rng());
        loraflip::ipc::stream_copy(dst.data() + dst_skew, src.data() + src_skew, size);
        // The copied range holds the source; not one byte around it is touched.
        for (size_t i = 0; i < dst_skew; ++i) REQUIRE(dst[i] == 0xA5);
        REQUIRE(std::equal(src.begin() + static_cast<std::ptrdiff_t>(src_skew),
                           src.begin() + static_cast<std::ptrdiff_t>(src_skew + size),
                           dst.begin() + static_cast<std::ptrdiff_t>(dst_skew)));
        for (size_t i = dst_skew + size; i < dst.size(); ++i) REQUIRE(dst[i] == 0xA5);
      }
    }
  }
}
