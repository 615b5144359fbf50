#include "render.hpp"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <functional>

namespace loraflip::ctl {

Table::Table(std::vector<std::string> header, std::vector<bool> right_aligned)
    : right_(std::move(right_aligned)) {
  right_.resize(header.size(), false);
  rows_.push_back(std::move(header));
}

void Table::add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }

std::string Table::str() const {
  std::vector<size_t> width(right_.size(), 0);
  for (const auto &row : rows_)
    for (size_t c = 0; c < row.size() && c < width.size(); ++c)
      width[c] = std::max(width[c], row[c].size());
  std::string out;
  for (const auto &row : rows_) {
    std::string line;
    for (size_t c = 0; c < row.size() && c < width.size(); ++c) {
      const std::string pad(width[c] - row[c].size(), ' ');
      if (c > 0) line += "  ";
      line += right_[c] ? pad + row[c] : row[c] + pad;
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  return out;
}

std::string human_bytes(uint64_t bytes) {
  static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 6) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, v < 10 ? "%.2f %s" : v < 100 ? "%.1f %s" : "%.0f %s", v, units[u]);
  return buf;
}

std::string human_duration(double seconds) {
  if (!(seconds >= 0)) seconds = 0;
  const auto s = static_cast<uint64_t>(seconds);
  char buf[48];
  if (s < 60) std::snprintf(buf, sizeof buf, "%" PRIu64 "s", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%" PRIu64 "m %02" PRIu64 "s", s / 60, s % 60);
  else if (s < 86400) std::snprintf(buf, sizeof buf, "%" PRIu64 "h %02" PRIu64 "m", s / 3600, s / 60 % 60);
  else std::snprintf(buf, sizeof buf, "%" PRIu64 "d %02" PRIu64 "h", s / 86400, s / 3600 % 24);
  return buf;
}

std::string utc_time(uint64_t unix_ns) {
  if (unix_ns == 0) return "-";
  const time_t secs = static_cast<time_t>(unix_ns / 1000000000ULL);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  const size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof buf - n, ".%03uZ",
                static_cast<unsigned>(unix_ns / 1000000ULL % 1000ULL));
  return buf;
}

namespace {

std::string num(const Json &v) {
  const std::string &t = v.number_text();
  return t.empty() ? "-" : t;
}

std::string percent(uint64_t part, uint64_t whole) {
  if (whole == 0) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%%", 100.0 * static_cast<double>(part) / static_cast<double>(whole));
  return buf;
}

std::string shape_text(const Json &shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.items().size(); ++i) {
    if (i) s += ", ";
    s += num(shape.items()[i]);
  }
  return s + "]";
}

// A Prometheus sample value: the daemon's integers go through exactly as written.
std::string sample(const Json &v) {
  const std::string &t = v.number_text();
  return t.empty() ? "0" : t;
}

std::string seconds_from_ns(uint64_t ns) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%" PRIu64 ".%09" PRIu64, ns / uint64_t{1000000000}, ns % uint64_t{1000000000});
  return buf;
}

}  // namespace

std::string render_status(const Json &st) {
  Table t({"", ""});
  t.add({"instance", st["instance"].str()});
  t.add({"uptime", human_duration(st["uptime_s"].f64())});
  t.add({"adapters", num(st["adapters"]) + " of " + num(st["max_adapters"])});
  t.add({"readers", num(st["readers"]) + " of " + num(st["max_readers"])});
  t.add({"pins", num(st["pins"])});
  t.add({"flips", num(st["flips"]) + " (" + num(st["events"]) + " events sent since start)"});
  t.add({"requests", num(st["requests"]) + " (" + num(st["errors"]) + " errors)"});
  const Json &rc = st["reclaimed"];
  t.add({"reaped", num(rc["dead_readers"]) + " dead readers (" + num(rc["pins_cleared"]) +
                          " pins), " + num(rc["dead_writers"]) + " dead writers, " +
                          num(rc["expired_leases"]) + " expired leases"});
  const uint64_t used = st["data_used"].u64(), total = st["data_bytes"].u64();
  t.add({"arena", human_bytes(used) + " used of " + human_bytes(total) + " (" +
                      percent(used, total) + ")"});
  // The header row is empty for a key/value table: drop it.
  std::string out = t.str();
  return out.substr(out.find('\n') + 1);
}

std::string render_list(const Json &list) {
  Table t({"NAME", "VERSION", "TENSORS", "SLOT SIZE", "SLOTS", "HISTORY"},
          {false, true, true, true, true, true});
  for (const Json &a : list["adapters"].items())
    t.add({a["name"].str(), num(a["version"]), num(a["tensors"]),
           human_bytes(a["slot_bytes"].u64()), num(a["slots"]), num(a["history"])});
  return t.str();
}

std::string render_info(const Json &in) {
  std::string out;
  Table kv({"", ""});
  kv.add({"name", in["name"].str()});
  kv.add({"version", num(in["version"]) + " (last assigned " + num(in["last_version"]) + ")"});
  kv.add({"placement", in["placement"].str()});
  if (in["placement"].str() != "host") {
    // What a restarted daemon would serve from: device memory dies with the daemon.
    const Json &copy = in["restart_copy"];
    kv.add({"restart copy", copy["bytes"].u64() == 0
                                ? std::string("none (no room in the data arena): a restart drops it")
                                : "version " + num(copy["version"]) + " in host memory"});
  }
  kv.add({"slot size", human_bytes(in["slot_bytes"].u64())});
  kv.add({"history", num(in["history"])});
  const Json &lora = in["lora"];
  std::string modules;
  for (const Json &m : lora["target_modules"].items()) modules += (modules.empty() ? "" : ",") + m.str();
  char alpha[32];
  std::snprintf(alpha, sizeof alpha, "%g", lora["alpha"].f64());
  kv.add({"lora", "rank " + num(lora["rank"]) + ", alpha " + alpha +
                      (lora["use_rslora"].boolean() ? ", rsLoRA" : "") +
                      (modules.empty() ? "" : ", targets " + modules)});
  const Json &c = in["counters"];
  kv.add({"counters", num(c["commits"]) + " commits, " + num(c["aborts"]) + " aborts, " +
                          num(c["rollbacks"]) + " rollbacks"});
  const Json &cs = in["census"];
  kv.add({"slots", num(cs["free"]) + " free, " + num(cs["writing"]) + " writing, " +
                       num(cs["committed"]) + " committed, " + num(cs["abandoned"]) +
                       " abandoned, " + num(cs["pinned"]) + " pinned"});
  std::string metadata = in["metadata"].str();
  if (metadata.size() > 200) metadata = metadata.substr(0, 200) + "...";
  for (char &ch : metadata)
    if (ch == '\n' || ch == '\r' || ch == '\t') ch = ' ';
  if (!metadata.empty()) kv.add({"metadata", metadata});
  out = kv.str();
  out = out.substr(out.find('\n') + 1);

  Table slots({"SLOT", "STATE", "VERSION", "ACTIVE", "COMMITTED (UTC)", "CHECKSUM"},
              {true, false, true, false, false, false});
  size_t i = 0;
  for (const Json &s : in["slots"].items()) {
    char sum[24];
    std::snprintf(sum, sizeof sum, "%016" PRIx64, s["checksum"].u64());
    const bool has_version = s["version"].u64() != 0;
    slots.add({std::to_string(i++), s["state"].str(), has_version ? num(s["version"]) : "-",
               s["active"].boolean() ? "*" : "",
               has_version ? utc_time(s["committed_unix_ns"].u64()) : "-",
               has_version ? sum : "-"});
  }
  out += "\n" + slots.str();

  Table tensors({"TENSOR", "DTYPE", "SHAPE", "BYTES"}, {false, false, false, true});
  for (const Json &t : in["tensors"].items())
    tensors.add({t["name"].str(), t["dtype"].str(), shape_text(t["shape"]), num(t["nbytes"])});
  out += "\n" + tensors.str();
  return out;
}

std::string escape_label(const std::string &value) {
  std::string out;
  for (char c : value) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string render_metrics(bool up, const std::string &instance, const Json &st,
                           const std::vector<Json> &infos) {
  std::string out;
  const std::string inst = "loraflip_instance=\"" +
                           escape_label(up ? st["instance"].str() : instance) + "\"";
  auto family = [&](const char *name, const char *type, const char *help) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
  };
  auto daemon_sample = [&](const char *name, const std::string &value) {
    out += std::string(name) + "{" + inst + "} " + value + "\n";
  };

  family("loraflip_up", "gauge", "Whether the daemon answered (1) or not (0).");
  daemon_sample("loraflip_up", up ? "1" : "0");
  if (!up) return out;

  struct Simple {
    const char *name, *type, *help, *key;
  };
  static const Simple daemon_metrics[] = {
      {"loraflip_adapters", "gauge", "Live adapters.", "adapters"},
      {"loraflip_adapters_max", "gauge", "Size of the adapter table.", "max_adapters"},
      {"loraflip_readers", "gauge", "Reader-table entries held by live processes.", "readers"},
      {"loraflip_readers_max", "gauge", "Size of the reader table.", "max_readers"},
      {"loraflip_pins", "gauge", "Pins held by readers now.", "pins"},
      {"loraflip_oldest_pin_age_seconds", "gauge", "How long the oldest pin now held has been held (sampled at each reaper pass).", "oldest_pin_age_s"},
      {"loraflip_flips_total", "counter", "Active-version flips (commits, rollbacks, drops) since the arena was made.", "flips"},
      {"loraflip_requests_total", "counter", "Control requests answered since the daemon started.", "requests"},
      {"loraflip_request_errors_total", "counter", "Control requests answered with an error since the daemon started.", "errors"},
      {"loraflip_arena_bytes", "gauge", "Bytes of tensor data in the arena.", "data_bytes"},
      {"loraflip_arena_used_bytes", "gauge", "Bytes of tensor data allocated to adapters.", "data_used"},
      {"loraflip_events_total", "counter", "Flip events sent on the events socket since the daemon started (a lagging subscriber may miss some: see lf_event_t.missed).", "events"},
  };
  family("loraflip_uptime_seconds", "gauge", "Seconds since the daemon started.");
  char uptime[32];
  std::snprintf(uptime, sizeof uptime, "%.3f", st["uptime_s"].f64());
  daemon_sample("loraflip_uptime_seconds", uptime);
  for (const Simple &m : daemon_metrics) {
    family(m.name, m.type, m.help);
    daemon_sample(m.name, sample(st[m.key]));
  }

  family("loraflip_reclaimed_total", "counter",
         "What the reaper took back from dead or late clients since the daemon started.");
  for (const char *what : {"dead_readers", "pins_cleared", "dead_writers", "expired_leases",
                           "adapters_freed"})
    out += std::string("loraflip_reclaimed_total{") + inst + ",what=\"" + what + "\"} " +
           sample(st["reclaimed"][what]) + "\n";

  // Per adapter: one family at a time, every adapter inside it (the format wants a family's
  // samples together).
  auto per_adapter = [&](const char *name, const char *type, const char *help,
                         const std::function<std::string(const Json &)> &value) {
    if (infos.empty()) return;
    family(name, type, help);
    for (const Json &in : infos)
      out += std::string(name) + "{" + inst + ",adapter=\"" + escape_label(in["name"].str()) +
             "\"} " + value(in) + "\n";
  };
  per_adapter("loraflip_adapter_version", "gauge", "Active version (0: none).",
              [](const Json &in) { return sample(in["version"]); });
  per_adapter("loraflip_adapter_last_version", "gauge", "Highest version ever assigned.",
              [](const Json &in) { return sample(in["last_version"]); });
  per_adapter("loraflip_adapter_commits_total", "counter", "Commits that flipped a new version.",
              [](const Json &in) { return sample(in["counters"]["commits"]); });
  per_adapter("loraflip_adapter_aborts_total", "counter", "Writes aborted or refused at commit.",
              [](const Json &in) { return sample(in["counters"]["aborts"]); });
  per_adapter("loraflip_adapter_rollbacks_total", "counter", "Rollbacks to a kept version.",
              [](const Json &in) { return sample(in["counters"]["rollbacks"]); });
  per_adapter("loraflip_adapter_write_seconds_total", "counter",
              "Seconds from begin_write to the first commit request, summed over commits (the writer's copies).",
              [](const Json &in) { return seconds_from_ns(in["counters"]["write_ns_total"].u64()); });
  per_adapter("loraflip_adapter_commit_check_seconds_total", "counter",
              "Seconds of the daemon's checks and replication before each flip, summed over commits.",
              [](const Json &in) { return seconds_from_ns(in["counters"]["check_ns_total"].u64()); });
  per_adapter("loraflip_adapter_event_waits_total", "counter",
              "Commits that handed the daemon a device event to wait on (device placements).",
              [](const Json &in) { return sample(in["counters"]["event_waits"]); });
  per_adapter("loraflip_adapter_event_wait_seconds_total", "counter",
              "Seconds commits waited for the writer's device copies after asking, summed.",
              [](const Json &in) { return seconds_from_ns(in["counters"]["event_wait_ns_total"].u64()); });
  per_adapter("loraflip_adapter_pinned_slots", "gauge", "Slots pinned by at least one reader.",
              [](const Json &in) { return sample(in["census"]["pinned"]); });
  per_adapter("loraflip_adapter_slot_bytes", "gauge", "Bytes of one slot (one full version).",
              [](const Json &in) { return sample(in["slot_bytes"]); });
  per_adapter("loraflip_adapter_history", "gauge", "Versions kept readable besides the active one.",
              [](const Json &in) { return sample(in["history"]); });
  per_adapter("loraflip_adapter_active_commit_timestamp_seconds", "gauge",
              "Unix time at which the active version was committed (0: none).",
              [](const Json &in) {
                for (const Json &s : in["slots"].items())
                  if (s["active"].boolean()) return seconds_from_ns(s["committed_unix_ns"].u64());
                return std::string("0");
              });
  if (!infos.empty()) {
    family("loraflip_adapter_slots", "gauge", "Slots by state.");
    for (const Json &in : infos)
      for (const char *state : {"free", "writing", "committed", "abandoned"})
        out += "loraflip_adapter_slots{" + inst + ",adapter=\"" + escape_label(in["name"].str()) +
               "\",state=\"" + state + "\"} " + sample(in["census"][state]) + "\n";
  }
  return out;
}

namespace {

// The lag as of now: the follower wrote when it fell behind, and 0 while caught up.
int64_t lag_ms_now(const Json &a, int64_t now_ms) {
  const int64_t since = static_cast<int64_t>(a["behind_since_unix_ms"].u64());
  return since == 0 ? 0 : std::max<int64_t>(0, now_ms - since);
}

// A follower that has not rewritten its file for this long is not running (it rewrites it at
// least at every long poll, 2 s, and every 500 ms while it transfers): 3 missed polls.
constexpr int64_t kStaleMs = 6000;

}  // namespace

std::string render_follower(const Json &f, int64_t now_ms) {
  const int64_t age = now_ms - static_cast<int64_t>(f["updated_unix_ms"].u64());
  std::string out = "following " + f["upstream"].str() + " (relay pid " + num(f["pid"]) + ", " +
                    (f["connected"].boolean() ? "connected" : "not connected") + ", status " +
                    human_duration(static_cast<double>(std::max<int64_t>(0, age)) / 1000) +
                    " old" + (age > kStaleMs ? ": STALE, is loraflip-relay running?" : "") +
                    ")\n";
  Table t({"ADAPTER", "VERSION", "UPSTREAM", "LAG", "LAG MS", "BYTES", "FLIPS", "RETRIES",
           "CHECKSUM FAILS", "RECEIVING"},
          {false, true, true, true, true, true, true, true, true, false});
  for (const Json &a : f["adapters"].items()) {
    const uint64_t receiving = a["receiving_version"].u64();
    t.add({a["name"].str(), num(a["last_version"]), num(a["upstream_version"]),
           num(a["lag_versions"]), std::to_string(lag_ms_now(a, now_ms)),
           human_bytes(a["bytes"].u64()), num(a["flips"]), num(a["retries"]),
           num(a["checksum_failures"]),
           receiving == 0 ? "-"
                          : "@" + std::to_string(receiving) + " " +
                                human_bytes(a["receiving_bytes"].u64())});
  }
  out += t.str();
  // A rollback upstream this node could not follow (it does not keep that version): the
  // relay's log says what to do; the status says that it happened.
  for (const Json &a : f["adapters"].items())
    if (const uint64_t to = a["upstream_rolled_back_to"].u64(); to != 0)
      out += a["name"].str() + ": the upstream rolled back to " + std::to_string(to) +
             ", which this node does not keep; it stays at " + num(a["active_version"]) +
             " (see the relay's log)\n";
  return out;
}

std::string render_follower_metrics(const std::string &instance, const Json &f, int64_t now_ms) {
  std::string out;
  const std::string base = "loraflip_instance=\"" + escape_label(instance) + "\",upstream=\"" +
                           escape_label(f["upstream"].str()) + "\"";
  out += "# HELP loraflip_follower_status_age_seconds Seconds since loraflip-relay follow last "
         "wrote its status.\n# TYPE loraflip_follower_status_age_seconds gauge\n";
  char age[32];
  std::snprintf(age, sizeof age, "%.3f",
                static_cast<double>(now_ms - static_cast<int64_t>(f["updated_unix_ms"].u64())) /
                    1000);
  out += "loraflip_follower_status_age_seconds{" + base + "} " + age + "\n";
  out += "# HELP loraflip_follower_connected Whether the follower's upstream answered its last "
         "request.\n# TYPE loraflip_follower_connected gauge\n";
  out += "loraflip_follower_connected{" + base + "} " + (f["connected"].boolean() ? "1" : "0") +
         "\n";
  struct Family {
    const char *name, *type, *help, *key;
  };
  static const Family families[] = {
      {"loraflip_follower_version", "gauge", "Newest version flipped here from the upstream.", "last_version"},
      {"loraflip_follower_upstream_version", "gauge", "Newest version the upstream offered.", "upstream_version"},
      {"loraflip_follower_lag_versions", "gauge", "Upstream versions not flipped here yet.", "lag_versions"},
      {"loraflip_follower_lag_seconds", "gauge", "How long this node has been behind the upstream (0: caught up).", nullptr},
      {"loraflip_follower_bytes_total", "counter", "Bytes received since the relay started.", "bytes"},
      {"loraflip_follower_flips_total", "counter", "Versions flipped since the relay started.", "flips"},
      {"loraflip_follower_retries_total", "counter", "Transfers that did not end in a flip and were asked again.", "retries"},
      {"loraflip_follower_checksum_failures_total", "counter", "Transfers whose checksum did not match (never flipped).", "checksum_failures"},
      {"loraflip_follower_rollbacks_total", "counter", "Rollbacks upstream followed here since the relay started.", "rollbacks"},
      {"loraflip_follower_upstream_rolled_back_to", "gauge", "A version the upstream rolled back to that this node does not keep (0: none).", "upstream_rolled_back_to"},
  };
  for (const Family &m : families) {
    out += std::string("# HELP ") + m.name + " " + m.help + "\n# TYPE " + m.name + " " + m.type +
           "\n";
    for (const Json &a : f["adapters"].items()) {
      std::string value;
      if (m.key != nullptr) {
        value = std::to_string(a[m.key].u64());
      } else {
        char lag[32];
        std::snprintf(lag, sizeof lag, "%.3f", static_cast<double>(lag_ms_now(a, now_ms)) / 1000);
        value = lag;
      }
      out += std::string(m.name) + "{" + base + ",adapter=\"" + escape_label(a["name"].str()) +
             "\"} " + value + "\n";
    }
  }
  return out;
}

}  // namespace loraflip::ctl
