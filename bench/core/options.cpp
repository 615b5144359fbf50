#include "options.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "bench_support.hpp"

namespace lfbench::core {

namespace {

void usage() {
  std::printf(
      "usage: lf-bench-core [--daemon PATH] [--quick] [--sizes 1,32,256] [--readers 64] [--spin]\n"
      "  --daemon PATH   loraflipd to start (default: %s)\n"
      "  --quick         few repetitions: a smoke test, not figures to report\n"
      "  --sizes LIST    publish sizes in MiB, comma-separated (default: 1,32,256)\n"
      "  --readers N     reader processes of the contended acquire run (default: 64)\n"
      "  --spin          the observing reader spins on lf_reader_active_version instead of\n"
      "                  blocking in lf_reader_wait (use on a machine with idle CPUs)\n",
      LF_BENCH_DAEMON_PATH);
}

std::vector<uint64_t> parse_sizes(const std::string &list) {
  std::vector<uint64_t> sizes;
  size_t pos = 0;
  while (pos <= list.size()) {
    const size_t comma = std::min(list.find(',', pos), list.size());
    const std::string item = list.substr(pos, comma - pos);
    char *end = nullptr;
    const unsigned long long v = std::strtoull(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || v == 0 || v > 16384)
      fail("--sizes wants MiB counts from 1 to 16384, e.g. 1,32,256 (not '" + item + "')");
    sizes.push_back(v);
    pos = comma + 1;
  }
  return sizes;
}

}  // namespace

Options parse(int argc, char **argv) {
  Options o;
  Args args(argc, argv, usage);
  while (args.next()) {
    if (args.is("--spin")) {
      o.spin = true;
    } else if (args.is("--quick")) {
      o.quick = true;
    } else if (args.is("--daemon")) {
      o.daemon = args.value();
    } else if (args.is("--sizes")) {
      o.sizes_mib = parse_sizes(args.value());
    } else if (args.is("--readers")) {
      const long v = std::strtol(args.value().c_str(), nullptr, 10);
      if (v < 1 || v > 4096) fail("--readers wants 1 to 4096");
      o.readers = size_t(v);
    } else {
      args.unknown();
    }
  }
  return o;
}

Repetitions repetitions(const Options &opt) {
  Repetitions r;
  r.publish_small = opt.quick ? 3 : 30;
  r.publish_large = opt.quick ? 3 : 15;
  r.flip = opt.quick ? 30 : 1000;
  r.acquire = opt.quick ? 3 : 5;
  r.acquire_iters = opt.quick ? 1'000'000 : 10'000'000;
  r.contended_chunks = opt.quick ? 2 : 3;
  r.contended_iters = opt.quick ? 100'000 : 1'000'000;
  return r;
}

}  // namespace lfbench::core
