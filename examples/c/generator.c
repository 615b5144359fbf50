#define _POSIX_C_SOURCE 200809L
/* A generation loop that applies whatever adapter version is active at each step.
 *
 * usage: generator RUNTIME_DIR ADAPTER UNTIL_VERSION [TIMEOUT_MS]
 *
 * Each step pins the active version (shared memory only: no message to the daemon), checks
 * that every element belongs to that one version, runs y = x + scale * B (A x) for layer 0's
 * q_proj, and releases the pin. It stops once it has seen UNTIL_VERSION, waiting for flips on
 * the daemon's futex in between. Exits 1 on any torn read. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "loraflip.h"

/* Every element i of a tensor of step s holds s + (i % 7) / 4 (see trainer.c). */
static long check_tensor(const lf_tensor_view_t *view, float step) {
  const float *values = (const float *)view->data;
  long torn = 0;
  for (uint64_t i = 0; i < view->nbytes / sizeof(float); ++i)
    if (values[i] != step + (float)(i % 7) * 0.25f) ++torn;
  return torn;
}

/* y = x + scale * B (A x); A is [r, h], B is [h, r]. Returns y[0], to print. */
static float lora_forward(const lf_tensor_view_t *a, const lf_tensor_view_t *b, float scale) {
  const int64_t r = a->shape[0], h = a->shape[1];
  float *x = malloc(sizeof(float) * (size_t)h), *y = malloc(sizeof(float) * (size_t)h);
  float ax[128] = {0};
  for (int64_t j = 0; j < h; ++j) x[j] = 1.0f / (float)(j + 1);
  for (int64_t k = 0; k < r && k < 128; ++k)
    for (int64_t j = 0; j < h; ++j) ax[k] += ((const float *)a->data)[k * h + j] * x[j];
  for (int64_t i = 0; i < h; ++i) {
    float acc = 0;
    for (int64_t k = 0; k < r && k < 128; ++k) acc += ((const float *)b->data)[i * r + k] * ax[k];
    y[i] = x[i] + scale * acc;
  }
  const float y0 = y[0];
  free(x);
  free(y);
  return y0;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s RUNTIME_DIR ADAPTER UNTIL_VERSION [TIMEOUT_MS]\n", argv[0]);
    return 2;
  }
  const uint64_t until = strtoull(argv[3], NULL, 10);
  const int timeout_ms = argc > 4 ? atoi(argv[4]) : 10000;
  lf_reader_t *reader = NULL;
  int rc = lf_reader_open(argv[1], &reader);
  if (rc != LF_OK) {
    fprintf(stderr, "generator: %s (%s)\n", lf_strerror(rc), lf_last_error_message());
    return 1;
  }
  lf_adapter_ref_t ref = 0;
  /* The trainer may not have created the adapter yet. */
  for (int tries = 0; (rc = lf_reader_find(reader, argv[2], &ref)) == LF_E_NOT_FOUND && tries < 500; ++tries) {
    struct timespec pause = {0, 20 * 1000000L};
    nanosleep(&pause, NULL);
  }
  uint64_t seen = 0, steps = 0, versions_seen = 0;
  long torn = 0;
  while (rc == LF_OK && seen < until) {
    uint64_t newest = 0;
    rc = lf_reader_wait(reader, ref, seen, timeout_ms, &newest);
    if (rc != LF_OK) break;
    lf_pin_t *pin = NULL;
    rc = lf_reader_acquire(reader, ref, 0, &pin);
    if (rc != LF_OK) break;
    lf_tensor_view_t a, b;
    lf_pin_tensor_by_name(pin, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", &a);
    lf_pin_tensor_by_name(pin, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", &b);
    /* The step this version holds is its first element (i % 7 == 0). */
    const float step = ((const float *)a.data)[0];
    for (size_t t = 0; t < lf_pin_tensor_count(pin); ++t) {
      lf_tensor_view_t view;
      lf_pin_tensor(pin, t, &view);
      torn += check_tensor(&view, step);
    }
    const float y0 = lora_forward(&a, &b, 16.0f / 8.0f);
    if (lf_pin_version(pin) > seen) ++versions_seen;
    seen = lf_pin_version(pin);
    ++steps;
    if (steps % 10 == 0 || seen >= until)
      printf("generator: step %llu used version %llu (trainer step %.0f), y[0] = %.4g\n",
             (unsigned long long)steps, (unsigned long long)seen, step, y0);
    lf_pin_release(pin);
  }
  if (rc != LF_OK) fprintf(stderr, "generator: %s: %s\n", lf_strerror(rc), lf_reader_last_error(reader));
  printf("generator: %llu steps, %llu versions seen, newest %llu, torn elements: %ld\n",
         (unsigned long long)steps, (unsigned long long)versions_seen, (unsigned long long)seen, torn);
  lf_reader_close(reader);
  return rc == LF_OK && torn == 0 ? 0 : 1;
}
