// The CPU kernels compiled for the avx2 variant (flags in meson.build); see lora_cpu_kernels.h.
#define LF_LORA_ISA_LEVEL 1
#define LF_LORA_ISA_NS isa_avx2
#define LF_LORA_ISA_ENTRY cpu_kernels_avx2
#define LF_LORA_ISA_NAME "avx2"
#include "lora_cpu_kernels.h"
