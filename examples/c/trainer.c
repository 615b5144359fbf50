#define _POSIX_C_SOURCE 200809L
/* A trainer that publishes a LoRA adapter every step.
 *
 * usage: trainer RUNTIME_DIR ADAPTER STEPS [INTERVAL_MS]
 *
 * It creates the adapter on first use: two layers, q_proj and v_proj, PEFT names, rank 8,
 * hidden 256, f32. Each step stands in for an optimizer step: it writes new A and B straight
 * into the daemon's slot and commits, which flips the version that generation loops read.
 * Every element of step s holds s + (i % 7) / 4, so a reader can check that all it reads
 * belongs to one step. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "loraflip.h"

enum { kLayers = 2, kHidden = 256, kRank = 8 };

static int create_adapter(lf_client_t *client, const char *name) {
  lf_spec_t *spec = NULL;
  int rc = lf_spec_new(&spec);
  static const char *modules[] = {"q_proj", "v_proj"};
  char tensor[LF_MAX_TENSOR_NAME + 1];
  for (int layer = 0; layer < kLayers && rc == LF_OK; ++layer) {
    for (int m = 0; m < 2 && rc == LF_OK; ++m) {
      const int64_t a_shape[2] = {kRank, kHidden}; /* lora_A: [r, in] */
      const int64_t b_shape[2] = {kHidden, kRank}; /* lora_B: [out, r] */
      snprintf(tensor, sizeof tensor, "base_model.model.model.layers.%d.self_attn.%s.lora_A.weight",
               layer, modules[m]);
      rc = lf_spec_add_tensor(spec, tensor, LF_DTYPE_F32, 2, a_shape);
      snprintf(tensor, sizeof tensor, "base_model.model.model.layers.%d.self_attn.%s.lora_B.weight",
               layer, modules[m]);
      if (rc == LF_OK) rc = lf_spec_add_tensor(spec, tensor, LF_DTYPE_F32, 2, b_shape);
    }
  }
  if (rc == LF_OK) rc = lf_spec_set_lora(spec, kRank, 16.0, "q_proj,v_proj", 0);
  if (rc == LF_OK) rc = lf_client_create_adapter(client, name, spec);
  lf_spec_free(spec);
  return rc == LF_E_EXISTS ? LF_OK : rc;
}

static int publish_step(lf_client_t *client, const char *name, long step, uint64_t *version) {
  lf_writer_t *writer = NULL;
  int rc = lf_client_begin_write(client, name, 10000, &writer);
  if (rc != LF_OK) return rc;
  const size_t count = lf_writer_tensor_count(writer);
  for (size_t t = 0; t < count; ++t) {
    lf_tensor_view_t view;
    lf_writer_tensor(writer, t, &view);
    float *values = (float *)view.data;
    for (uint64_t i = 0; i < view.nbytes / sizeof(float); ++i)
      values[i] = (float)step + (float)(i % 7) * 0.25f;
  }
  return lf_writer_commit(writer, LF_COMMIT_CHECK_FINITE, version);
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s RUNTIME_DIR ADAPTER STEPS [INTERVAL_MS]\n", argv[0]);
    return 2;
  }
  const long steps = atol(argv[3]);
  const long interval_ms = argc > 4 ? atol(argv[4]) : 20;
  lf_client_t *client = NULL;
  int rc = lf_client_open(argv[1], 5000, &client);
  if (rc != LF_OK) {
    fprintf(stderr, "trainer: cannot connect: %s (%s)\n", lf_strerror(rc), lf_last_error_message());
    return 1;
  }
  rc = create_adapter(client, argv[2]);
  for (long step = 1; step <= steps && rc == LF_OK; ++step) {
    uint64_t version = 0;
    rc = publish_step(client, argv[2], step, &version);
    if (rc == LF_E_NO_FREE_SLOT) { /* every slot pinned or kept: readers are slow, try again */
      rc = LF_OK;
      --step;
    } else if (rc == LF_OK && (step % 10 == 0 || step == steps)) {
      printf("trainer: step %ld published as version %llu\n", step, (unsigned long long)version);
    }
    struct timespec pause = {interval_ms / 1000, (interval_ms % 1000) * 1000000L};
    nanosleep(&pause, NULL);
  }
  if (rc != LF_OK)
    fprintf(stderr, "trainer: %s: %s\n", lf_strerror(rc), lf_client_last_error(client));
  lf_client_close(client);
  return rc == LF_OK ? 0 : 1;
}
