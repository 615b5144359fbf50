#include "ipc/text.hpp"

#include <cstdint>
#include <cstdio>

namespace loraflip::ipc {
namespace {

Error not_utf8(const char *why, size_t offset, unsigned char byte) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "is not valid UTF-8 (%s: byte 0x%02x at offset %zu)", why, byte,
                offset);
  return make_error(LF_E_INVALID_ARGUMENT, buf);
}

}  // namespace

Status check_text(std::string_view text) {
  const auto *s = reinterpret_cast<const unsigned char *>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = s[i];
    if (c == 0)
      return make_error(LF_E_INVALID_ARGUMENT,
                        "holds a NUL byte at offset " + std::to_string(i));
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t length = 0;
    uint32_t min = 0, code = 0;
    if ((c & 0xE0) == 0xC0) length = 2, min = 0x80, code = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) length = 3, min = 0x800, code = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) length = 4, min = 0x10000, code = c & 0x07;
    else return not_utf8("a byte that starts no character", i, c);
    if (i + length > n) return not_utf8("a character cut short", i, c);
    for (size_t k = 1; k < length; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return not_utf8("a character cut short", i + k, s[i + k]);
      code = code << 6 | (s[i + k] & 0x3F);
    }
    if (code < min) return not_utf8("an overlong form", i, c);
    if (code >= 0xD800 && code <= 0xDFFF) return not_utf8("a surrogate", i, c);
    if (code > 0x10FFFF) return not_utf8("a code point above U+10FFFF", i, c);
    i += length;
  }
  return {};
}

std::string printable(std::string_view text, size_t max_bytes) {
  std::string out;
  const size_t n = std::min(text.size(), max_bytes);
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7F && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  if (text.size() > max_bytes) out += "...";
  return out;
}

}  // namespace loraflip::ipc
