// A client for the pid-namespace test (crash_test.cpp): run inside `unshare --pid --fork`, it
// pins the active version of an adapter, begins a write of it, says "ready" on stdout, and
// waits to be killed. Inside its namespace its pid is small (often 1), and may name another
// process in the daemon's view: the daemon must know it by what the kernel tells it.
//   lf_ns_client RUNTIME_DIR ADAPTER
#include <cstdio>
#include <unistd.h>

#include "loraflip.h"

int main(int argc, char **argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s RUNTIME_DIR ADAPTER\n", argv[0]);
    return 2;
  }
  lf_reader_t *reader = nullptr;
  lf_adapter_ref_t ref = 0;
  lf_pin_t *pin = nullptr;
  if (int rc = lf_reader_open(argv[1], &reader); rc != LF_OK) {
    std::fprintf(stderr, "reader: %s: %s\n", lf_strerror(rc), lf_last_error_message());
    return 3;
  }
  if (lf_reader_find(reader, argv[2], &ref) != LF_OK ||
      lf_reader_acquire(reader, ref, 0, &pin) != LF_OK) {
    std::fprintf(stderr, "acquire: %s\n", lf_reader_last_error(reader));
    return 4;
  }
  lf_client_t *client = nullptr;
  lf_writer_t *writer = nullptr;
  if (lf_client_open(argv[1], 5000, &client) != LF_OK ||
      lf_client_begin_write(client, argv[2], 0, &writer) != LF_OK) {
    std::fprintf(stderr, "begin_write: %s\n",
                 client != nullptr ? lf_client_last_error(client) : lf_last_error_message());
    return 5;
  }
  std::printf("ready pid %d\n", static_cast<int>(::getpid()));
  std::fflush(stdout);
  for (;;) ::pause();
}
