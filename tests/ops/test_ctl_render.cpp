// loraflipctl's JSON reader and its renderings, without a daemon.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <regex>
#include <sstream>
#include <string>

#include "json.hpp"
#include "render.hpp"

using loraflip::ctl::Json;

namespace {

Json parse(const std::string &text) {
  std::string error;
  auto j = Json::parse(text, &error);
  REQUIRE_MESSAGE(j.has_value(), error);
  return *j;
}

const char *kStats =
    R"({"instance":"node","uptime_s":12.5,"adapters":1,"max_adapters":64,"readers":2,)"
    R"("max_readers":256,"pins":1,"flips":18446744073709551615,"requests":40,"errors":3,)"
    R"("data_bytes":268435456,"data_used":1048576,"events":19,"reclaimed":{"dead_readers":2,)"
    R"("pins_cleared":3,"dead_writers":1,"expired_leases":0,"adapters_freed":0}})";
const char *kInfo =
    R"({"name":"policy","index":0,"incarnation":1,"version":7,"last_version":9,)"
    R"("slot_bytes":65536,"history":2,"placement":"host","lora":{"rank":8,"alpha":16,)"
    R"("use_rslora":false,"target_modules":["q_proj","v_proj"]},"metadata":"{\"step\": 7}",)"
    R"("counters":{"commits":9,"aborts":1,"rollbacks":1,"event_waits":4,)"
    R"("event_wait_ns_total":2500000000},)"
    R"("census":{"free":1,"writing":0,"committed":3,"abandoned":0,"pinned":1},)"
    R"("slots":[{"state":"committed","version":7,"active":true,"checksum":255,)"
    R"("committed_unix_ns":1700000000123456789},{"state":"free","version":0,"active":false,)"
    R"("checksum":0,"committed_unix_ns":0}],)"
    R"("tensors":[{"name":"a.lora_A.weight","dtype":"f32","shape":[8,256],"offset":0,"nbytes":8192}]})";

}  // namespace

TEST_CASE("the JSON reader keeps 64-bit integers exact") {
  const Json j = parse(kStats);
  CHECK(j["flips"].u64() == UINT64_MAX);
  CHECK(j["flips"].number_text() == "18446744073709551615");
  CHECK(j["uptime_s"].f64() == doctest::Approx(12.5));
  CHECK(j["instance"].str() == "node");
  CHECK(j["absent"].is_null());
  CHECK(j["absent"]["deeper"].u64(42) == 42);
}

TEST_CASE("the JSON reader decodes escapes and surrogate pairs") {
  const Json j = parse(R"({"s":"a\"b\\c\n\u00e9\ud83d\ude00\/","arr":[1,-2,3.5e2,true,false,null]})");
  CHECK(j["s"].str() == "a\"b\\c\n\xc3\xa9\xf0\x9f\x98\x80/");
  REQUIRE(j["arr"].items().size() == 6);
  CHECK(j["arr"].items()[1].i64() == -2);
  CHECK(j["arr"].items()[2].f64() == doctest::Approx(350));
  CHECK(j["arr"].items()[3].boolean());
  CHECK(j["arr"].items()[5].is_null());
}

TEST_CASE("the JSON reader refuses malformed text") {
  for (const char *bad : {"", "{", "[1,]", "{\"a\"}", "{\"a\":1,}", "01x", "\"\\x\"", "[1] 2",
                          "nul", "{\"a\":\"\x01\"}", "-", "1.", "1e"}) {
    std::string error;
    CHECK_MESSAGE(!Json::parse(bad, &error).has_value(), bad);
    CHECK(!error.empty());
  }
  std::string deep(100, '[');
  std::string error;
  CHECK(!Json::parse(deep + std::string(100, ']'), &error).has_value());
}

TEST_CASE("status, list and info render as aligned text") {
  const std::string status = loraflip::ctl::render_status(parse(kStats));
  CHECK(status.find("instance  node\n") != std::string::npos);
  CHECK(status.find("1.00 MiB used of 256 MiB (0.4%)") != std::string::npos);
  CHECK(status.find("2 dead readers (3 pins), 1 dead writers, 0 expired leases") != std::string::npos);
  CHECK(status.find("(19 events sent since start)") != std::string::npos);
  const std::string list = loraflip::ctl::render_list(parse(
      R"({"adapters":[{"name":"policy","version":12,"tensors":8,"slot_bytes":65536,"slots":4,"history":2},)"
      R"({"name":"ref","version":1,"tensors":2,"slot_bytes":512,"slots":3,"history":1}]})"));
  std::istringstream lines(list);
  std::string header, first, second;
  std::getline(lines, header);
  std::getline(lines, first);
  std::getline(lines, second);
  CHECK(header.rfind("NAME    VERSION", 0) == 0);
  CHECK(first.rfind("policy       12", 0) == 0);
  CHECK(second.rfind("ref           1", 0) == 0);
  const std::string info = loraflip::ctl::render_info(parse(kInfo));
  CHECK(info.find("version    7 (last assigned 9)") != std::string::npos);
  CHECK(info.find("targets q_proj,v_proj") != std::string::npos);
  CHECK(info.find("2023-11-14T22:13:20.123Z") != std::string::npos);
  CHECK(info.find("a.lora_A.weight") != std::string::npos);
}

TEST_CASE("metrics follow the Prometheus text format") {
  const std::string text =
      loraflip::ctl::render_metrics(true, "ignored", parse(kStats), {parse(kInfo)});
  const std::regex sample(R"(^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*")"
                          R"((,[a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*")*\})? [-+0-9.eE]+(Inf|NaN)?$)");
  const std::regex comment(R"(^# (HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*|TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge))$)");
  std::istringstream in(text);
  std::string line;
  int samples = 0;
  while (std::getline(in, line)) {
    const bool ok = std::regex_match(line, line[0] == '#' ? comment : sample);
    CHECK_MESSAGE(ok, line);
    samples += line[0] != '#';
  }
  CHECK(samples > 20);
  CHECK(text.find("loraflip_up{loraflip_instance=\"node\"} 1\n") != std::string::npos);
  CHECK(text.find("loraflip_flips_total{loraflip_instance=\"node\"} 18446744073709551615\n") !=
        std::string::npos);
  CHECK(text.find("loraflip_adapter_version{loraflip_instance=\"node\",adapter=\"policy\"} 7\n") !=
        std::string::npos);
  CHECK(text.find("loraflip_adapter_slots{loraflip_instance=\"node\",adapter=\"policy\",state=\"committed\"} 3\n") !=
        std::string::npos);
  CHECK(text.find("loraflip_adapter_active_commit_timestamp_seconds{loraflip_instance=\"node\","
                  "adapter=\"policy\"} 1700000000.123456789\n") != std::string::npos);
  CHECK(text.find("loraflip_reclaimed_total{loraflip_instance=\"node\",what=\"dead_readers\"} 2\n") !=
        std::string::npos);
  CHECK(text.find("loraflip_events_total{loraflip_instance=\"node\"} 19\n") != std::string::npos);
  CHECK(text.find("loraflip_adapter_event_wait_seconds_total{loraflip_instance=\"node\","
                  "adapter=\"policy\"} 2.500000000\n") != std::string::npos);
  // One HELP and one TYPE per family.
  CHECK(text.find("# TYPE loraflip_adapter_version gauge") ==
        text.rfind("# TYPE loraflip_adapter_version gauge"));
}

TEST_CASE("metrics of an unreachable daemon say only that it is down") {
  const std::string text = loraflip::ctl::render_metrics(false, "gpu0", Json(), {});
  CHECK(text == "# HELP loraflip_up Whether the daemon answered (1) or not (0).\n"
                "# TYPE loraflip_up gauge\n"
                "loraflip_up{loraflip_instance=\"gpu0\"} 0\n");
}

TEST_CASE("label values are escaped") {
  CHECK(loraflip::ctl::escape_label("a\"b\\c\nd") == "a\\\"b\\\\c\\nd");
}
