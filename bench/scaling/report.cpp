#include "report.hpp"

#include <cstdio>
#include <fstream>
#include <memory>
#include <thread>
#include <unistd.h>

namespace lfbench::scaling {

namespace {

double us(double ns) { return ns / 1e3; }

// Bytes per second of `mib` MiB in `ns`, in GiB/s.
double gib_per_s(uint64_t mib, double ns) { return double(mib) / 1024.0 / (ns / 1e9); }

// Growth per item from the first row (0 items) to `row`, in KiB.
double kib_per_item(const MemoryRow &first, const MemoryRow &row, uint64_t DaemonMemory::*field) {
  return row.count == 0 ? 0.0
                        : (double(row.memory.*field) - double(first.memory.*field)) / double(row.count);
}

void print_memory_table(const char *title, const char *what, const std::vector<MemoryRow> &rows) {
  std::printf("%s", title);
  std::printf("   %9s %6s | %9s %9s %9s | %14s %14s\n", what, "daemon", "VmRSS", "RssAnon",
              "RssShmem", "RSS growth", "anon growth");
  std::printf("   %9s %6s | %9s %9s %9s | %14s %14s\n", "", "counts", "KiB", "KiB", "KiB",
              "KiB per item", "KiB per item");
  for (const MemoryRow &r : rows)
    std::printf("   %9zu %6llu | %9llu %9llu %9llu | %14.1f %14.1f\n", r.count,
                (unsigned long long)r.memory.held, (unsigned long long)r.memory.rss_kib,
                (unsigned long long)r.memory.anon_kib, (unsigned long long)r.memory.shmem_kib,
                kib_per_item(rows.front(), r, &DaemonMemory::rss_kib),
                kib_per_item(rows.front(), r, &DaemonMemory::anon_kib));
}

// JSON writing: just what these figures need (numbers, and strings without quotes or
// backslashes, which /proc's texts do not have; anything else is replaced).
std::string quoted(const std::string &s) {
  std::string out = "\"";
  for (char c : s) out += (c == '"' || c == '\\' || static_cast<unsigned char>(c) < 0x20) ? '?' : c;
  return out + "\"";
}

}  // namespace

std::string machine() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  unsigned long long kib = 0;
  while (in >> key && key != "MemTotal:") in.ignore(1 << 12, '\n');
  in >> kib;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s, %u online CPUs, %.1f GiB memory", cpu_model().c_str(),
                unsigned(std::thread::hardware_concurrency()), double(kib) / (1024.0 * 1024.0));
  return buf;
}

void print_header(const Options &opt) {
  std::printf("lf-bench-scaling: how loraflip's costs grow with the work%s\n",
              opt.quick ? " (--quick: smoke test, not figures to report)" : "");
  std::printf("machine: %s\n", machine().c_str());
  std::printf("load average at start: %s\n", loadavg().c_str());
  std::printf("daemon: %s (a fresh instance per figure, lfscale-%d-<figure>)\n\n", opt.daemon.c_str(),
              int(::getpid()));
  std::fflush(stdout);
}

void print_tables(const Figures &f) {
  std::printf(
      "\n1. Publish against adapter size: begin_write + lf_writer_copy_in of every tensor +\n"
      "   commit + new version seen by a reader process (blocked in lf_reader_wait); PEFT-like\n"
      "   f16 adapters (hidden 4096), 8 untimed publishes first. memcpy: one memcpy of the same\n"
      "   bytes between two pre-touched buffers, interleaved. marginal: (this median - the\n"
      "   previous size's) / (this size - the previous size): constant when time is a line.\n");
  std::printf("   %-9s %7s %4s | %10s %10s | %8s %8s %10s | %10s %8s\n", "size", "tensors", "reps",
              "publish", "p90", "GiB/s", "us/MiB", "marginal", "memcpy", "GiB/s");
  std::printf("   %-9s %7s %4s | %10s %10s | %8s %8s %10s | %10s %8s\n", "", "", "", "med us", "us",
              "", "", "us/MiB", "med us", "");
  for (size_t i = 0; i < f.publish.size(); ++i) {
    const PublishFigures &r = f.publish[i];
    char marginal[32] = "-";
    if (i > 0) {
      const PublishFigures &q = f.publish[i - 1];
      std::snprintf(marginal, sizeof marginal, "%.1f",
                    us(r.total.median - q.total.median) / double(r.mib - q.mib));
    }
    std::printf("   %-9s %7zu %4zu | %10.1f %10.1f | %8.2f %8.1f %10s | %10.1f %8.2f\n",
                (std::to_string(r.mib) + " MiB").c_str(), r.tensors, r.reps, us(r.total.median),
                us(r.total.p90), gib_per_s(r.mib, r.total.median),
                us(r.total.median) / double(r.mib), marginal, us(r.memcpy_.median),
                gib_per_s(r.mib, r.memcpy_.median));
  }

  std::printf(
      "\n2. Acquire + release against reader processes: lf_reader_acquire + lf_pin_release of one\n"
      "   4 KiB adapter in a tight loop, all processes at once. cpu ns/op: the reader's own\n"
      "   thread CPU time / iterations, per chunk; median and p99 over readers x chunks. wall:\n"
      "   the same chunks in wall time. per process: all operations / wall time of the run /\n"
      "   readers.\n");
  std::printf("   %7s %7s %9s | %9s %9s | %10s | %12s %10s\n", "readers", "samples", "ops each",
              "cpu ns/op", "p99", "wall ns/op", "per process", "all");
  std::printf("   %7s %7s %9s | %9s %9s | %10s | %12s %10s\n", "", "", "", "median", "", "median",
              "Mops/s", "Mops/s");
  for (const AcquireRow &r : f.readers.acquire)
    std::printf("   %7zu %7zu %9llu | %9.1f %9.1f | %10.1f | %12.2f %10.1f\n", r.readers,
                r.figures.cpu_ns_per_op.n,
                (unsigned long long)(r.figures.total_ops / r.readers),
                r.figures.cpu_ns_per_op.median, r.figures.cpu_ns_per_op.p99,
                r.figures.wall_ns_per_op.median, r.figures.aggregate_mops / double(r.readers),
                r.figures.aggregate_mops);

  std::printf(
      "\n3a. Flip against adapters that exist: commit request of a 4 KiB adapter (the newest)\n"
      "    -> new version seen by a reader process (blocked in lf_reader_wait).\n");
  std::printf("   %8s %5s | %9s %9s %9s\n", "adapters", "reps", "median us", "p90 us", "p99 us");
  for (const FlipRow &r : f.adapters.flip)
    std::printf("   %8zu %5zu | %9.1f %9.1f %9.1f\n", r.count, r.reps, us(r.visible.median),
                us(r.visible.p90), us(r.visible.p99));

  std::printf(
      "\n3b. Flip against event subscribers (lf_events_open on the adapter, one process each,\n"
      "    blocked in lf_events_next_event): the same flip, and from the same commit request to\n"
      "    the event received, pooled over subscribers and reps (event) and for the last\n"
      "    subscriber of each rep (last).\n");
  std::printf("   %11s %5s | %9s %9s | %9s %9s | %9s %9s\n", "subscribers", "reps", "flip med",
              "p99", "event med", "p99", "last med", "p99");
  std::printf("   %11s %5s | %9s %9s | %9s %9s | %9s %9s\n", "", "", "us", "us", "us", "us", "us",
              "us");
  for (const FlipRow &r : f.subscribers) {
    std::printf("   %11zu %5zu | %9.1f %9.1f |", r.count, r.reps, us(r.visible.median),
                us(r.visible.p99));
    if (r.event.n == 0)
      std::printf(" %9s %9s | %9s %9s\n", "-", "-", "-", "-");
    else
      std::printf(" %9.1f %9.1f | %9.1f %9.1f\n", us(r.event.median), us(r.event.p99),
                  us(r.event_last.median), us(r.event_last.p99));
  }

  print_memory_table(
      "\n4a. Daemon memory against adapters (4 KiB each, one version written; /proc/<pid>/status\n"
      "    of loraflipd after 250 ms and a stats request; the observing reader and one client\n"
      "    connected). daemon counts: the adapters its stats report. growth: from 0 adapters.\n",
      "adapters", f.adapters.memory);
  print_memory_table(
      "\n4b. Daemon memory against open readers (one process each, holding one pin of a 4 KiB\n"
      "    adapter; one client connected). daemon counts: the readers its stats report.\n",
      "readers", f.readers.memory);
  std::printf("\nload average at end: %s\nrun time: %.1f s\n", f.load_end.c_str(), f.run_s);
}

void write_json(const Options &opt, const Figures &f, const std::string &path) {
  std::unique_ptr<FILE, int (*)(FILE *)> out(std::fopen(path.c_str(), "w"), &std::fclose);
  if (!out) fail("cannot write " + path);
  FILE *o = out.get();
  std::fprintf(o, "{\n  \"benchmark\": \"lf-bench-scaling\",\n  \"quick\": %s,\n",
               opt.quick ? "true" : "false");
  std::fprintf(o, "  \"machine\": %s,\n  \"load_start\": %s,\n  \"load_end\": %s,\n",
               quoted(machine()).c_str(), quoted(f.load_start).c_str(), quoted(f.load_end).c_str());
  std::fprintf(o, "  \"run_s\": %.1f,\n", f.run_s);

  std::fprintf(o, "  \"publish\": [\n");
  for (size_t i = 0; i < f.publish.size(); ++i) {
    const PublishFigures &r = f.publish[i];
    std::fprintf(o,
                 "    {\"mib\": %llu, \"tensors\": %zu, \"reps\": %zu, \"median_us\": %.1f, "
                 "\"p90_us\": %.1f, \"gib_per_s\": %.3f, \"memcpy_median_us\": %.1f, "
                 "\"memcpy_gib_per_s\": %.3f}%s\n",
                 (unsigned long long)r.mib, r.tensors, r.reps, us(r.total.median), us(r.total.p90),
                 gib_per_s(r.mib, r.total.median), us(r.memcpy_.median),
                 gib_per_s(r.mib, r.memcpy_.median), i + 1 < f.publish.size() ? "," : "");
  }
  std::fprintf(o, "  ],\n  \"acquire\": [\n");
  for (size_t i = 0; i < f.readers.acquire.size(); ++i) {
    const AcquireRow &r = f.readers.acquire[i];
    std::fprintf(o,
                 "    {\"readers\": %zu, \"samples\": %zu, \"cpu_ns_median\": %.2f, "
                 "\"cpu_ns_p99\": %.2f, \"wall_ns_median\": %.1f, \"per_process_mops\": %.3f, "
                 "\"aggregate_mops\": %.2f}%s\n",
                 r.readers, r.figures.cpu_ns_per_op.n, r.figures.cpu_ns_per_op.median,
                 r.figures.cpu_ns_per_op.p99, r.figures.wall_ns_per_op.median,
                 r.figures.aggregate_mops / double(r.readers), r.figures.aggregate_mops,
                 i + 1 < f.readers.acquire.size() ? "," : "");
  }
  std::fprintf(o, "  ],\n  \"flip_adapters\": [\n");
  for (size_t i = 0; i < f.adapters.flip.size(); ++i) {
    const FlipRow &r = f.adapters.flip[i];
    std::fprintf(o,
                 "    {\"adapters\": %zu, \"reps\": %zu, \"median_us\": %.1f, \"p90_us\": %.1f, "
                 "\"p99_us\": %.1f}%s\n",
                 r.count, r.reps, us(r.visible.median), us(r.visible.p90), us(r.visible.p99),
                 i + 1 < f.adapters.flip.size() ? "," : "");
  }
  std::fprintf(o, "  ],\n  \"flip_subscribers\": [\n");
  for (size_t i = 0; i < f.subscribers.size(); ++i) {
    const FlipRow &r = f.subscribers[i];
    // No subscriber, no event figures: null.
    auto event = [&](double ns) {
      char buf[32] = "null";
      if (r.event.n != 0) std::snprintf(buf, sizeof buf, "%.1f", us(ns));
      return std::string(buf);
    };
    std::fprintf(o,
                 "    {\"subscribers\": %zu, \"reps\": %zu, \"median_us\": %.1f, \"p99_us\": %.1f, "
                 "\"event_median_us\": %s, \"event_p99_us\": %s, "
                 "\"event_last_median_us\": %s, \"event_last_p99_us\": %s}%s\n",
                 r.count, r.reps, us(r.visible.median), us(r.visible.p99),
                 event(r.event.median).c_str(), event(r.event.p99).c_str(),
                 event(r.event_last.median).c_str(), event(r.event_last.p99).c_str(),
                 i + 1 < f.subscribers.size() ? "," : "");
  }
  auto memory = [&](const char *key, const char *what, const std::vector<MemoryRow> &rows,
                    bool last) {
    std::fprintf(o, "  \"%s\": [\n", key);
    for (size_t i = 0; i < rows.size(); ++i) {
      const MemoryRow &r = rows[i];
      std::fprintf(o,
                   "    {\"%s\": %zu, \"daemon_count\": %llu, \"rss_kib\": %llu, "
                   "\"anon_kib\": %llu, \"shmem_kib\": %llu}%s\n",
                   what, r.count, (unsigned long long)r.memory.held,
                   (unsigned long long)r.memory.rss_kib, (unsigned long long)r.memory.anon_kib,
                   (unsigned long long)r.memory.shmem_kib, i + 1 < rows.size() ? "," : "");
    }
    std::fprintf(o, "  ]%s\n", last ? "" : ",");
  };
  std::fprintf(o, "  ],\n");
  memory("memory_adapters", "adapters", f.adapters.memory, false);
  memory("memory_readers", "readers", f.readers.memory, true);
  std::fprintf(o, "}\n");
  if (std::ferror(o)) fail("cannot write " + path);
}

}  // namespace lfbench::scaling
