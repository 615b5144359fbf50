/* The public header compiles as C11, and its constants are usable in constant expressions. */
#include "loraflip.h"

_Static_assert(LF_OK == 0, "LF_OK is zero");
_Static_assert(LF_E_UNKNOWN_OP == -22, "codes are fixed forever");
_Static_assert(sizeof(lf_tensor_view_t) == 96, "the view layout is part of the ABI");

int main(void) {
  /* Every code has a message, and an unknown one gets a string too. */
  for (int code = 0; code >= -22; --code)
    if (lf_strerror(code) == 0 || lf_strerror(code)[0] == '\0') return 1;
  return lf_strerror(-1000) != 0 && lf_dtype_size(LF_DTYPE_BF16) == 2 ? 0 : 1;
}
