// C++ side of the LoRA-apply library, behind the C API in loraflip_lora.h. Nothing here crosses
// the C ABI; these functions may throw (std::bad_alloc, std::system_error) and the extern "C"
// wrappers turn that into a status.
#pragma once

#include <cstdint>
#include <vector>

#include "loraflip_lora.h"

namespace loraflip::lora {

// Checks the fields of the batch that the host can see without dereferencing its arrays, so the
// CPU and CUDA entry points agree on what a well-formed call looks like.
int check_batch_shape(const lf_lora_batch_t *batch);

// Checks what the CPU path reads from the batch's host arrays: every used index, table entry and
// the segment offsets. Call only after check_batch_shape succeeded.
int check_batch_data(const lf_lora_batch_t &batch);

// The CPU operations. Preconditions: both checks above succeeded and x/y/v are non-null when
// batch.n_rows > 0.
void cpu_shrink(const lf_lora_batch_t &batch, const void *x, float *v);
void cpu_expand(const lf_lora_batch_t &batch, const float *v, void *y);
void cpu_apply(const lf_lora_batch_t &batch, const void *x, void *y);

void set_cpu_threads(int32_t n);

// Name of the instruction-set variant of the CPU kernels in use (lf_lora_cpu_isa).
const char *cpu_isa_name();

// The variants this build has, best first, and whether this CPU runs each (for the tests, which
// run every one the CPU supports against the reference).
struct CpuIsaVariant {
    const char *name;
    bool supported;
};
std::vector<CpuIsaVariant> cpu_isa_variants();

// Makes later calls in this process use the named variant, or the one chosen at first use again
// when name is null. Returns false, changing nothing, for a variant this build lacks or this CPU
// cannot run. Calls already running keep the variant they started with.
bool force_cpu_isa(const char *name);

} // namespace loraflip::lora
