#include "ipc/dtype.hpp"

namespace loraflip::ipc {

int dtype_from_name(std::string_view n) {
  if (n == "f32" || n == "float32" || n == "F32") return LF_DTYPE_F32;
  if (n == "f16" || n == "float16" || n == "F16") return LF_DTYPE_F16;
  if (n == "bf16" || n == "bfloat16" || n == "BF16") return LF_DTYPE_BF16;
  if (n == "f64" || n == "float64" || n == "F64") return LF_DTYPE_F64;
  if (n == "i8" || n == "int8" || n == "I8") return LF_DTYPE_I8;
  if (n == "u8" || n == "uint8" || n == "U8") return LF_DTYPE_U8;
  if (n == "i32" || n == "int32" || n == "I32") return LF_DTYPE_I32;
  if (n == "i64" || n == "int64" || n == "I64") return LF_DTYPE_I64;
  return 0;
}

}  // namespace loraflip::ipc
