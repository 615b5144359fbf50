// The CPU kernels compiled for the avx512 variant (flags in meson.build); see lora_cpu_kernels.h.
#define LF_LORA_ISA_LEVEL 2
#define LF_LORA_ISA_NS isa_avx512
#define LF_LORA_ISA_ENTRY cpu_kernels_avx512
#define LF_LORA_ISA_NAME "avx512"
#include "lora_cpu_kernels.h"
