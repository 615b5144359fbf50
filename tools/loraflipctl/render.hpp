// What loraflipctl prints, as pure functions of the daemon's JSON replies (so the tests can
// check them without a daemon): aligned tables for people, Prometheus text for node_exporter.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "json.hpp"

namespace loraflip::ctl {

// Columns padded to their widest cell; numeric columns right-aligned.
class Table {
 public:
  explicit Table(std::vector<std::string> header, std::vector<bool> right_aligned = {});
  void add(std::vector<std::string> row);
  std::string str() const;

 private:
  std::vector<std::vector<std::string>> rows_;
  std::vector<bool> right_;
};

// "512 B", "64.0 KiB", "1.00 GiB".
std::string human_bytes(uint64_t bytes);
// "42s", "3m 07s", "2h 03m", "4d 02h".
std::string human_duration(double seconds);
// "2024-05-01T12:00:00.123Z" from Unix nanoseconds; "-" for 0.
std::string utc_time(uint64_t unix_ns);

std::string render_status(const Json &stats);
std::string render_list(const Json &list);
std::string render_info(const Json &info);

// Prometheus text exposition format (version 0.0.4), for node_exporter's textfile collector.
// `stats` is the stats reply, `infos` one info reply per adapter. With up == false only
// loraflip_up 0 is written (the daemon could not be read), labelled with `instance`.
std::string render_metrics(bool up, const std::string &instance, const Json &stats,
                           const std::vector<Json> &infos);

// A following relay's status file (loraflip-relay follow writes RUNTIME_DIR/relay-follow.json;
// docs/operations.md, "Following another node"): per followed adapter the upstream, the last
// version received, the lag in versions and ms, bytes, retries and checksum failures. `now_ms`
// (unix ms) turns the time the follower fell behind into the lag as of now, so a file written
// a while ago still tells the lag it implies; a file that stopped changing is shown as stale.
std::string render_follower(const Json &follower, int64_t now_ms);
// The same as Prometheus families (loraflip_follower_*), labelled with `instance`.
std::string render_follower_metrics(const std::string &instance, const Json &follower,
                                    int64_t now_ms);

// A label value as Prometheus wants it: backslash, double quote and newline escaped.
std::string escape_label(const std::string &value);

}  // namespace loraflip::ctl
