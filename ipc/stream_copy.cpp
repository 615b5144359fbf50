#include "ipc/stream_copy.hpp"

#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace loraflip::ipc {

void stream_copy(void *dst, const void *src, size_t bytes) {
#if defined(__SSE2__)
  if (bytes >= kStreamCopyMinBytes) {
    auto *d = static_cast<unsigned char *>(dst);
    const auto *s = static_cast<const unsigned char *>(src);
    // Streaming stores need a 16-byte aligned destination: plain copy up to the boundary.
    const size_t head = (16 - (reinterpret_cast<uintptr_t>(d) & 15)) & 15;
    std::memcpy(d, s, head);
    d += head;
    s += head;
    bytes -= head;
    const size_t lines = bytes / 64;
    for (size_t i = 0; i < lines; ++i, d += 64, s += 64) {
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i *>(s));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i *>(s + 16));
      const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i *>(s + 32));
      const __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i *>(s + 48));
      _mm_stream_si128(reinterpret_cast<__m128i *>(d), a);
      _mm_stream_si128(reinterpret_cast<__m128i *>(d + 16), b);
      _mm_stream_si128(reinterpret_cast<__m128i *>(d + 32), c);
      _mm_stream_si128(reinterpret_cast<__m128i *>(d + 48), e);
    }
    std::memcpy(d, s, bytes - lines * 64);
    // Streaming stores are weakly ordered: fence them before anything the caller does next.
    _mm_sfence();
    return;
  }
#endif
  std::memcpy(dst, src, bytes);
}

}  // namespace loraflip::ipc
