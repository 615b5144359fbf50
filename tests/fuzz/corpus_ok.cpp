// The ok-* seeds of the fuzz corpus: sequences that must be answered ok from the first message
// to the last, so that the fuzzer starts from deep states (see make_corpus.cpp).
#include <string>
#include <utility>

#include "corpus_builders.hpp"

namespace loraflip::fuzz::corpus {

void ok_seeds(Seeds &s) {
  auto add = [&](std::string name) -> Input & {
    return s.emplace_back(std::move(name), Input{}).second;
  };

  add("ok-hello").send(hello());
  add("ok-list-empty").send(msg::List{});
  add("ok-stats-empty").send(msg::Stats{});
  add("ok-create").send(create("policy", {.placement = "host", .slots = 4, .history = 2}));
  {
    // The other wire forms a create may take: dtypes by LF_DTYPE_* number, target modules as one
    // comma-separated string, nil for an optional field, and a 6-dimensional and a scalar tensor.
    Input &in = add("ok-create-codes");
    in.raw(request_by_hand("create_adapter", in.next_id(), [](Encoder &e) {
      e.map(6).key("name").str("ref:v1.0_x-y").key("tensors").array(3);
      e.map(3).key("name").str("w").key("dtype").i64(LF_DTYPE_F32).key("shape").array(1).i64(8);
      e.map(3).key("name").str("h").key("dtype").i64(LF_DTYPE_BF16).key("shape").array(6);
      for (int i = 0; i < 6; ++i) e.i64(2);
      write_tensor(e, "i", "i64", {});
      e.key("lora").map(3).key("rank").u64(4).key("target_modules").str("q_proj,k_proj");
      e.key("use_rslora").boolean(true);
      e.key("history").i64(-1).key("slots").u64(0).key("placement").nil();
    }));
  }
  add("ok-create-info-list-stats").send(create()).send(info()).send(msg::List{}).send(msg::Stats{});
  add("ok-write-commit").send(create()).send(begin()).send(commit(1)).send(info());
  add("ok-write-commit-checksum")
      .send(create())
      .send(begin())
      .send(commit(1, LF_COMMIT_CHECK_FINITE | LF_COMMIT_CHECKSUM, checksum_of_zeros()));
  // A follower's commits: the upstream's numbers, gaps allowed, and its checksum.
  add("ok-commit-explicit-version")
      .send(create())
      .send(begin()).send(commit_as(1, 17))
      .send(begin()).send(commit_as(2, 40, LF_COMMIT_CHECKSUM, checksum_of_zeros()))
      .send(begin()).send(commit(3))
      .send(info());
  add("ok-write-abort")
      .send(create())
      .send(begin()).send(abort_lease(1))
      .send(begin()).send(commit(2, 0));
  add("ok-rollback")
      .send(create())
      .send(begin()).send(commit(1))
      .send(begin()).send(commit(2))
      .send(begin()).send(commit(3))
      .send(rollback("policy", 2))
      .send(info());
  add("ok-drop")
      .send(create()).send(begin()).send(commit(1))
      .send(drop()).send(msg::List{}).send(create());
  add("ok-two-adapters")
      .send(create("a")).send(create("b", {.slots = 3, .history = 1}))
      .send(begin("a")).send(begin("b"))
      .send(commit(2)).send(commit(1))
      .send(msg::List{}).send(msg::Stats{});
  add("ok-everything")
      .send(hello()).send(msg::OpenReader{}).send(create()).send(msg::List{})
      .send(begin()).send(commit(1))
      .send(begin()).send(commit(2))
      .send(commit(2))  // repeated
      .send(rollback("policy", 1))
      .send(begin()).send(abort_lease(3))
      .send(info()).send(msg::Stats{}).send(drop());

  // A reader registers through the daemon: entries for this process (the table holds 4).
  add("ok-open-reader")
      .send(hello()).send(msg::OpenReader{}).send(msg::Stats{}).send(msg::OpenReader{})
      .send(msg::OpenReader{}).send(msg::Stats{});
  // A commit asked again (a client that lost the reply) answers {repeated: true} with the
  // version it made, and flips nothing; so does one asked after later commits.
  add("ok-commit-repeated")
      .send(create())
      .send(begin())
      .send(commit(1, LF_COMMIT_CHECK_FINITE | LF_COMMIT_CHECKSUM, checksum_of_zeros()))
      .send(commit(1, LF_COMMIT_CHECK_FINITE | LF_COMMIT_CHECKSUM, checksum_of_zeros()))
      .send(begin()).send(commit(2))
      .send(commit(1)).send(commit(2, 0))
      .send(info());
  // A begin_write asked again with its token (a client that lost the reply) gets the lease it
  // made, not a second slot: three asks fit an adapter of two slots. After the commit, the same
  // token begins anew.
  add("ok-begin-token")
      .send(create("policy", {.slots = 2, .history = 0}))
      .send(begin("policy", 30000, 7))
      .send(begin("policy", 30000, 7))
      .send(begin("policy", 30000, 7))
      .send(commit(1))
      .send(begin("policy", 30000, 7)).send(commit(2))
      .send(info());
  {
    // Envelopes and optional fields in the forms the encoder never writes: no id, no args, nil
    // args, keys in another order, nil for every optional field.
    Input &in = add("ok-envelope-forms");
    in.raw(encoded([](Encoder &e) { e.map(1).key("op").str("list"); }));
    in.raw(encoded(
        [&](Encoder &e) { e.map(2).key("op").str("stats").key("id").u64(in.next_id()); }));
    in.raw(encoded([&](Encoder &e) {
      e.map(3).key("args").nil().key("id").u64(in.next_id()).key("op").str("list");
    }));
    in.raw(encoded([&](Encoder &e) {
      e.map(3).key("args").map(0).key("op").str("stats").key("id").u64(in.next_id());
    }));
    in.raw(request_by_hand("create_adapter", in.next_id(), [](Encoder &e) {
      e.map(7).key("placement").nil().key("history").nil().key("slots").nil();
      e.key("metadata").nil().key("lora").nil();
      e.key("tensors").array(1);
      write_tensor(e, "w", "f16", {4, 4});
      e.key("name").str("forms");
    }));
    in.raw(request_by_hand("begin_write", in.next_id(), [](Encoder &e) {
      e.map(2).key("lease_ms").nil().key("name").str("forms");
    }));
    in.raw(request_by_hand("commit", in.next_id(), [](Encoder &e) {
      e.map(4).key("event").nil().key("checksum").nil().key("flags").nil().key("lease").u64(1);
    }));
    in.send(info("forms"));
  }
  // Text beyond ASCII where free text is allowed: 2-, 3- and 4-byte characters in metadata.
  add("ok-create-utf8-metadata")
      .send([] {
        msg::CreateAdapter c = create();
        c.metadata = "{\"note\": \"Gr\xc3\xbc\xc3\x9f" "e \xe2\x9c\x93 \xf0\x9d\x9b\xbc\"}";
        return c;
      }())
      .send(info());

  // Device placements, served by the harness's two host stand-in devices (1 MiB each).
  add("ok-device-write-commit")
      .send(create("gpu", {.placement = "cuda:0"}))
      .send(begin("gpu"))
      .send(commit(1, LF_COMMIT_CHECK_FINITE | LF_COMMIT_CHECKSUM, checksum_of_zeros()))
      .send(info("gpu")).send(msg::List{});
  add("ok-device-replicas")
      .send(create("tp", {.placement = "cuda:0,1"}))
      .send(begin("tp")).send(commit(1))
      .send(begin("tp"))
      .send(commit(2, LF_COMMIT_CHECK_FINITE | LF_COMMIT_CHECKSUM, checksum_of_zeros()))
      .send(rollback("tp", 1))
      .send(info("tp")).send(msg::Stats{});
  add("ok-device-second-first")
      .send(create("tp", {.placement = "device:1,0", .slots = 3, .history = 1}))
      .send(begin("tp")).send(commit(1, LF_COMMIT_CHECK_FINITE))
      .send(begin("tp")).send(commit(2))
      .send(begin("tp")).send(commit(3))
      .send(info("tp"));
  add("ok-device-abort-drop")
      .send(create("tp", {.placement = "cuda:0,1"}))
      .send(begin("tp")).send(commit(1))
      .send(begin("tp")).send(abort_lease(2))
      .send(begin("tp")).send(drop("tp")).send(msg::List{})
      .send(create("tp", {.placement = "cuda:1,0"}))
      .send(begin("tp")).send(commit(4))
      .send(info("tp"));
  add("ok-device-and-host")
      .send(create("a"))
      .send(create("b", {.placement = "cuda:0"}))
      .send(create("c", {.placement = "cuda:1"}))
      .send(create("d", {.placement = "cuda:0,1", .slots = 2, .history = 0}))
      .send(begin("a")).send(begin("b")).send(begin("c")).send(begin("d"))
      .send(commit(2, LF_COMMIT_CHECK_FINITE | LF_COMMIT_CHECKSUM)).send(commit(4))
      .send(commit(3, LF_COMMIT_CHECK_FINITE)).send(commit(1))
      .send(msg::List{}).send(msg::Stats{})
      // No lease left: the reclamation pass after the last request gives their device
      // ranges back.
      .send(drop("d")).send(drop("b"));
}

}  // namespace loraflip::fuzz::corpus
