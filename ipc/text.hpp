// Text that crosses the socket: every string a request carries must be valid UTF-8 without NUL
// bytes (it becomes a C string in the arena, a JSON string in the C API, a Python str), and an
// error message shows a client's string only in a printable, bounded form.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "ipc/result.hpp"

namespace loraflip::ipc {

// OK for valid UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF)
// without NUL; otherwise an LF_E_INVALID_ARGUMENT whose message says what is wrong and at
// which byte, without repeating the bytes ("is not valid UTF-8 (byte 0xff at offset 3)").
Status check_text(std::string_view text);

// `text` for an error message or a log line: printable ASCII as it is, every other byte as
// \xNN, cut after `max_bytes` input bytes with "..." appended.
std::string printable(std::string_view text, size_t max_bytes = 128);

}  // namespace loraflip::ipc
