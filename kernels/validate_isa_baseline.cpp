// The commit checks built for the baseline variant (flags: meson.build); see validate_isa_kernels.h.
#define LF_VALIDATE_ISA_LEVEL 0
#define LF_VALIDATE_ISA_NS isa_baseline
#define LF_VALIDATE_ISA_ENTRY validate_kernels_baseline
#define LF_VALIDATE_ISA_NAME "baseline"
#include "validate_isa_kernels.h"
