// The commit checks built for the avx2 variant (flags: meson.build); see validate_isa_kernels.h.
#define LF_VALIDATE_ISA_LEVEL 1
#define LF_VALIDATE_ISA_NS isa_avx2
#define LF_VALIDATE_ISA_ENTRY validate_kernels_avx2
#define LF_VALIDATE_ISA_NAME "avx2"
#include "validate_isa_kernels.h"
