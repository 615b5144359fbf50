// The commit checks built for the avx512 variant (flags: meson.build); see validate_isa_kernels.h.
#define LF_VALIDATE_ISA_LEVEL 2
#define LF_VALIDATE_ISA_NS isa_avx512
#define LF_VALIDATE_ISA_ENTRY validate_kernels_avx512
#define LF_VALIDATE_ISA_NAME "avx512"
#include "validate_isa_kernels.h"
