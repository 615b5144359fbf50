/* The public header must compile as C11 (with -Wpedantic) and link from a C program. */
#include "loraflip_lora.h"

#include <stdio.h>

int main(void) {
    lf_lora_batch_t batch = {0};
    lf_lora_adapter_t adapter = {0};
    float scale = 0.0f;
    int failures = 0;

    (void)adapter;
    if (lf_lora_strerror(LF_E_INTERNAL) == NULL) {
        ++failures;
    }
    if (lf_lora_scale(8.0f, 4, LF_LORA_SCALE_STANDARD, &scale) != LF_OK || scale != 2.0f) {
        ++failures;
    }
    /* A zeroed batch has h_in == 0, which is not a multiple-of-8 hidden size. */
    if (lf_lora_apply(&batch, NULL, NULL) != LF_E_INVALID_ARGUMENT) {
        ++failures;
    }
    if (failures != 0) {
        fprintf(stderr, "%d C API checks failed\n", failures);
    }
    return failures == 0 ? 0 : 1;
}
