// The CPU kernels compiled for the baseline variant (flags in meson.build); see lora_cpu_kernels.h.
#define LF_LORA_ISA_LEVEL 0
#define LF_LORA_ISA_NS isa_baseline
#define LF_LORA_ISA_ENTRY cpu_kernels_baseline
#define LF_LORA_ISA_NAME "baseline"
#include "lora_cpu_kernels.h"
