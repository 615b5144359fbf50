// Element sizes and names of the LF_DTYPE_* codes, usable everywhere (the C API forwards here).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "loraflip.h"

namespace loraflip::ipc {

constexpr size_t dtype_size(int dtype) {
  switch (dtype) {
    case LF_DTYPE_F32: return 4;
    case LF_DTYPE_F16: return 2;
    case LF_DTYPE_BF16: return 2;
    case LF_DTYPE_F64: return 8;
    case LF_DTYPE_I8: return 1;
    case LF_DTYPE_U8: return 1;
    case LF_DTYPE_I32: return 4;
    case LF_DTYPE_I64: return 8;
    default: return 0;
  }
}

constexpr const char *dtype_name(int dtype) {
  switch (dtype) {
    case LF_DTYPE_F32: return "f32";
    case LF_DTYPE_F16: return "f16";
    case LF_DTYPE_BF16: return "bf16";
    case LF_DTYPE_F64: return "f64";
    case LF_DTYPE_I8: return "i8";
    case LF_DTYPE_U8: return "u8";
    case LF_DTYPE_I32: return "i32";
    case LF_DTYPE_I64: return "i64";
    default: return "unknown";
  }
}

// Inverse of dtype_name, also accepting the names numpy, torch and safetensors use.
int dtype_from_name(std::string_view name);

}  // namespace loraflip::ipc
