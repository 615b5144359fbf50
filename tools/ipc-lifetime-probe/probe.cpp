// ipc-lifetime-probe: does the driver keep an exited exporter's memory until importers close
// it? (The review's finding 6: loraflipd frees, or dies holding, device arenas that clients
// still map; whether their mappings stay readable decides what a daemon restart costs.)
//
//   ipc-lifetime-probe [--free]
//
// Runs itself as the exporter ("export"): it cudaMallocs a block, fills a pattern, writes the
// block's cudaIpcMemHandle to its stdout, and exits when its stdin closes (after cudaFree with
// --free, as loraflipd does at shutdown; without, as a killed daemon). This process, the
// importer, opens the handle, checks the pattern, lets the exporter go, waits for its exit,
// reads the block again and prints one line saying whether the memory was kept.
//
// Exit status: 0 with either answer (a probe, not a test); 2 with the reason where no GPU is
// usable; 1 when the probe itself could not run (a failed open, a wrong pattern before exit).
// Device 0 of what CUDA_VISIBLE_DEVICES leaves visible.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

#include <cuda_runtime.h>

namespace {

constexpr size_t kBytes = size_t{16} << 20;  // big enough for its own allocation granule

unsigned char pattern(size_t i) { return static_cast<unsigned char>((i * 131 + i / 4093) & 0xff); }

// The exporter. Its stdout carries one line: "HANDLE <hex>", "NOGPU <why>" or "ERROR <why>".
int export_block(bool free_first) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::printf("NOGPU %s\n", e != cudaSuccess ? cudaGetErrorString(e) : "CUDA sees none");
    return 2;
  }
  void *block = nullptr;
  std::vector<unsigned char> host(kBytes);
  for (size_t i = 0; i < kBytes; ++i) host[i] = pattern(i);
  cudaIpcMemHandle_t handle;
  if ((e = cudaMalloc(&block, kBytes)) != cudaSuccess ||
      (e = cudaMemcpy(block, host.data(), kBytes, cudaMemcpyHostToDevice)) != cudaSuccess ||
      (e = cudaIpcGetMemHandle(&handle, block)) != cudaSuccess) {
    std::printf("ERROR %s\n", cudaGetErrorString(e));
    return 1;
  }
  std::printf("HANDLE ");
  for (size_t i = 0; i < sizeof handle.reserved; ++i)
    std::printf("%02x", static_cast<unsigned char>(handle.reserved[i]));
  std::printf("\n");
  std::fflush(stdout);
  char c;
  while (::read(STDIN_FILENO, &c, 1) > 0) {
  }
  if (free_first) (void)cudaFree(block);
  return 0;  // the process exits: the driver tears its context down
}

// A line from `fd`, without its newline.
std::string read_line(int fd) {
  std::string line;
  char c;
  while (::read(fd, &c, 1) == 1 && c != '\n') line += c;
  return line;
}

bool parse_handle(const std::string &hex, cudaIpcMemHandle_t *h) {
  if (hex.size() != 2 * sizeof h->reserved) return false;
  for (size_t i = 0; i < sizeof h->reserved; ++i) {
    unsigned byte = 0;
    if (std::sscanf(hex.c_str() + 2 * i, "%2x", &byte) != 1) return false;
    h->reserved[i] = static_cast<char>(byte);
  }
  return true;
}

// "" when the block holds the pattern, else what differs.
std::string compare(const std::vector<unsigned char> &got) {
  size_t differ = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i] != pattern(i) && differ++ == 0) first = i;
  if (differ == 0) return "";
  return std::to_string(differ) + " of " + std::to_string(got.size()) +
         " bytes differ, the first at byte " + std::to_string(first);
}

}  // namespace

int main(int argc, char **argv) {
  const bool free_first = argc > 1 && std::strcmp(argv[argc - 1], "--free") == 0;
  if (argc > 1 && std::strcmp(argv[1], "export") == 0) return export_block(free_first);
  if (argc > 2 || (argc == 2 && !free_first)) {
    std::fprintf(stderr, "usage: %s [--free]\n", argv[0]);
    return 1;
  }

  // The exporter is started before this process touches CUDA: CUDA does not survive fork.
  int to_child[2], from_child[2];
  if (::pipe(to_child) != 0 || ::pipe(from_child) != 0) {
    std::perror("ipc-lifetime-probe: pipe");
    return 1;
  }
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return 1;
  self[n] = '\0';
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(to_child[0], STDIN_FILENO);
    ::dup2(from_child[1], STDOUT_FILENO);
    ::close(to_child[0]), ::close(to_child[1]), ::close(from_child[0]), ::close(from_child[1]);
    char export_arg[] = "export", free_arg[] = "--free";
    char *child_argv[] = {self, export_arg, free_first ? free_arg : nullptr, nullptr};
    ::execv(self, child_argv);
    ::_exit(127);
  }
  ::close(to_child[0]);
  ::close(from_child[1]);
  auto finish_child = [&] {  // lets the exporter go (closes its stdin) and waits for its exit
    if (to_child[1] >= 0) ::close(to_child[1]);
    to_child[1] = -1;
    int status = 0;
    return pid > 0 && ::waitpid(pid, &status, 0) == pid && WIFEXITED(status)
               ? WEXITSTATUS(status) : -1;
  };

  const std::string line = read_line(from_child[0]);
  if (line.rfind("NOGPU ", 0) == 0) {
    finish_child();
    std::fprintf(stderr, "ipc-lifetime-probe: no usable GPU: %s\n", line.c_str() + 6);
    return 2;
  }
  cudaIpcMemHandle_t handle;
  if (line.rfind("HANDLE ", 0) != 0 || !parse_handle(line.substr(7), &handle)) {
    finish_child();
    std::fprintf(stderr, "ipc-lifetime-probe: the exporter failed: %s\n",
                 line.empty() ? "(no answer)" : line.c_str());
    return 1;
  }
  void *mapped = nullptr;
  cudaError_t e = cudaIpcOpenMemHandle(&mapped, handle, cudaIpcMemLazyEnablePeerAccess);
  if (e != cudaSuccess) {
    finish_child();
    std::fprintf(stderr, "ipc-lifetime-probe: cudaIpcOpenMemHandle: %s\n", cudaGetErrorString(e));
    return e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice ? 2 : 1;
  }
  std::vector<unsigned char> got(kBytes);
  std::string before = (e = cudaMemcpy(got.data(), mapped, kBytes, cudaMemcpyDeviceToHost)) !=
                               cudaSuccess
                           ? cudaGetErrorString(e)
                           : compare(got);
  const int exported = finish_child();
  if (!before.empty() || exported != 0) {
    const std::string why = !before.empty()
                                ? "the block was wrong while its exporter lived: " + before
                                : "the exporter exited with " + std::to_string(exported);
    std::fprintf(stderr, "ipc-lifetime-probe: %s\n", why.c_str());
    (void)cudaIpcCloseMemHandle(mapped);
    return 1;
  }

  std::fill(got.begin(), got.end(), 0);
  e = cudaMemcpy(got.data(), mapped, kBytes, cudaMemcpyDeviceToHost);
  const std::string after = e != cudaSuccess ? cudaGetErrorString(e) : compare(got);
  const char *how = free_first ? " (it called cudaFree first)" : "";
  if (after.empty())
    std::printf("IPC lifetime: memory kept after the exporter exited%s (pattern intact)\n", how);
  else
    std::printf("IPC lifetime: memory NOT kept after the exporter exited%s (%s)\n", how,
                after.c_str());
  if ((e = cudaIpcCloseMemHandle(mapped)) != cudaSuccess)
    std::fprintf(stderr, "ipc-lifetime-probe: cudaIpcCloseMemHandle: %s\n", cudaGetErrorString(e));
  return 0;
}
