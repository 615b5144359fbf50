// The CPU kernels compiled for the avx512bf16 variant (flags in meson.build); see lora_cpu_kernels.h.
#define LF_LORA_ISA_LEVEL 3
#define LF_LORA_ISA_NS isa_avx512bf16
#define LF_LORA_ISA_ENTRY cpu_kernels_avx512bf16
#define LF_LORA_ISA_NAME "avx512bf16"
#include "lora_cpu_kernels.h"
