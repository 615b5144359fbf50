#include "tools/relay/relay.hpp"

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <set>
#include <thread>
#include <sys/mman.h>
#include <unistd.h>

#include <spdlog/spdlog.h>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "ipc/dtype.hpp"
#include "ipc/messages.hpp"
#include "ipc/protocol.hpp"
#include "ipc/schema.hpp"
#include "json.hpp"
#include "kernels/validate.hpp"
#include "loraflip.h"
#include "tools/relay/keys.hpp"
#include "tools/relay/wire.hpp"

namespace loraflip::relay {

namespace {

namespace msg = ipc::msg;
using Clock = std::chrono::steady_clock;
using ctl::Json;

// The ZAP endpoint libzmq asks (RFC 27): fixed by the standard.
constexpr const char *kZapEndpoint = "inproc://zeromq.zap.01";
constexpr const char *kWakeEndpoint = "inproc://loraflip-relay-wake";
// A follower's request that got no answer in this long counts as a lost connection.
constexpr auto kReplyTimeout = std::chrono::seconds(5);
// A fetch session (an older version kept for a follower mid-transfer) ends when unused this long.
constexpr auto kSessionIdle = std::chrono::seconds(60);
// Per peer: a follower asks for at most FollowOptions::window chunks at once (and one want), so
// this is never reached by one that keeps the protocol; past it ROUTER drops that peer's
// replies rather than wait (the follower asks again), and the others go on.
constexpr int kRouterHwm = 300;
// How long a follower refused by an upstream of an older relay protocol asks in that protocol
// before it tries its own again.
constexpr auto kLegacyRetry = std::chrono::seconds(60);

// zmq::poll that takes a signal (SIGTERM: the loops then see `stop`) as "nothing happened".
int poll_for(zmq::pollitem_t *items, size_t n, int64_t ms) {
  try {
    return zmq::poll(items, n, std::chrono::milliseconds(ms));
  } catch (const zmq::error_t &e) {
    if (e.num() == EINTR) return 0;
    throw;
  }
}

int64_t ms_until(Clock::time_point t) {
  return std::max<int64_t>(
      0, std::chrono::duration_cast<std::chrono::milliseconds>(t - Clock::now()).count());
}

// What the chunk of `bytes` bytes at `offset` (a multiple of 8) of an image of `total` bytes
// adds to the image's kernels::checksum, the length aside: its whole words under their index in
// the image, and, for the image's last chunk, its zero-padded tail word.
uint64_t chunk_checksum(const void *chunk, uint64_t offset, uint64_t bytes, uint64_t total) {
  const uint64_t words = bytes / 8;
  uint64_t sum = kernels::checksum_words(chunk, offset / 8, words);
  if (const uint64_t tail = bytes % 8; tail != 0 && offset + bytes == total) {
    uint64_t word = 0;
    std::memcpy(&word, static_cast<const std::byte *>(chunk) + words * 8, tail);
    sum += kernels::checksum_mix(word, offset / 8 + words);
  }
  return sum;
}

std::string json_of(int status, char *json) {
  std::string text = status == LF_OK && json != nullptr ? std::string(json) : std::string();
  lf_free(json);
  return text;
}

std::string client_error(lf_client_t *client, int status) {
  return std::string(lf_strerror(status)) + ": " + lf_client_last_error(client);
}

// Opens the local daemon's client, retrying while it is not up yet (started in any order).
lf_client_t *open_client(const std::string &dir, const std::atomic<bool> &stop) {
  bool said = false;
  while (!stop.load()) {
    lf_client_t *client = nullptr;
    if (lf_client_open(dir.c_str(), 5000, &client) == LF_OK) return client;
    if (!said) spdlog::warn("waiting for loraflipd at {}: {}", dir, lf_last_error_message());
    said = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return nullptr;
}

// An offer built from the local daemon's info (JSON of lf_client_info).
std::optional<wire::Offer> offer_from_info(const Json &info, uint64_t version) {
  wire::Offer o;
  o.name = info["name"].str();
  o.incarnation = (info["index"].u64() << 32) | (info["incarnation"].u64() & 0xffffffffu);
  o.version = version;
  o.slot_bytes = info["slot_bytes"].u64();
  o.slots = info["slots"].items().size();
  o.history = info["history"].u64();
  o.metadata = info["metadata"].str();
  const Json &lora = info["lora"];
  o.lora.rank = lora["rank"].u64();
  o.lora.alpha = lora["alpha"].f64();
  o.lora.use_rslora = lora["use_rslora"].boolean();
  for (const Json &m : lora["target_modules"].items()) o.lora.target_modules.names.push_back(m.str());
  for (const Json &t : info["tensors"].items()) {
    msg::InfoTensor d;
    d.name = t["name"].str();
    d.dtype.code = ipc::dtype_from_name(t["dtype"].str());
    for (const Json &dim : t["shape"].items()) d.shape.push_back(dim.i64());
    d.offset = t["offset"].u64();
    d.nbytes = t["nbytes"].u64();
    o.tensors.push_back(std::move(d));
  }
  if (o.tensors.empty() || o.slot_bytes == 0) return std::nullopt;
  return o;
}

// ---------------------------------------------------------------------------------------------
// serve

// A slot image's bytes, left uninitialized when made: every byte is written (copied out of a
// pin, or received) before it is read, and zeroing tens of MiB first would be one more pass
// over them per version. The memory is asked for in transparent huge pages where the kernel
// offers them (madvise mode): a fresh 32 MiB image otherwise takes 8192 page faults as it is
// first written, which cost the serving relay more than the copy itself. A follower keeps its
// buffer across versions, so it faults in once.
class ImageBuffer {
 public:
  ImageBuffer() = default;
  ImageBuffer(const ImageBuffer &) = delete;
  ImageBuffer &operator=(const ImageBuffer &) = delete;
  ~ImageBuffer() { std::free(data_); }

  // Makes room for `bytes`, reusing the memory when there is enough; the contents are lost.
  void resize_for_overwrite(uint64_t bytes) {
    if (bytes > capacity_) {
      std::free(data_);
      const uint64_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
      data_ = static_cast<std::byte *>(std::aligned_alloc(kHugePage, rounded));
      if (data_ == nullptr) throw std::bad_alloc();
      (void)::madvise(data_, rounded, MADV_HUGEPAGE);  // a hint: without it, small pages
      capacity_ = rounded;
    }
    size_ = bytes;
  }
  std::byte *data() { return data_; }
  const std::byte *data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  static constexpr uint64_t kHugePage = uint64_t{2} << 20;
  std::byte *data_ = nullptr;
  uint64_t size_ = 0, capacity_ = 0;
};

// One version as the upstream holds it for followers: the description and the slot image,
// copied out of the arena. A copy, not a pin held for the transfer: a pin kept while a slow
// follower downloads would keep its slot from the trainer's writers, so a slow link could stall
// the upstream; the copy costs one memcpy per version.
struct Snapshot {
  wire::Offer offer;
  ImageBuffer image;
};

// Answers libzmq's ZAP requests (RFC 27) on its own thread: CURVE peers whose public key is in
// the allow file are served, every other peer is refused before any message of it is read.
class ZapHandler {
 public:
  ZapHandler(zmq::context_t &context, std::set<std::string> allowed)
      : socket_(context, zmq::socket_type::rep), allowed_(std::move(allowed)) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.bind(kZapEndpoint);  // before the ROUTER binds: no handshake goes unchecked
    thread_ = std::thread([this] { run(); });
  }
  ~ZapHandler() {
    stop_.store(true);
    thread_.join();
  }

 private:
  void run() {
    while (!stop_.load()) {
      zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
      try {
        if (poll_for(&item, 1, 200) == 0) continue;
        std::vector<zmq::message_t> frames;
        if (!zmq::recv_multipart(socket_, std::back_inserter(frames))) continue;
        reply(frames);
      } catch (const zmq::error_t &e) {
        if (e.num() == ETERM) return;
        spdlog::error("ZAP handler: {}", e.what());
      }
    }
  }
  void reply(const std::vector<zmq::message_t> &f) {
    // version, request id, domain, address, routing id, mechanism, credentials...
    std::string request_id = f.size() > 1 ? f[1].to_string() : std::string();
    const std::string address = f.size() > 3 ? f[3].to_string() : std::string();
    bool ok = false;
    std::string why = "malformed ZAP request";
    if (f.size() >= 7 && f[0].to_string() == "1.0") {
      const std::string mechanism = f[5].to_string();
      if (mechanism != "CURVE") {
        why = "mechanism " + mechanism + " (only CURVE is served)";
      } else if (f[6].size() != 32) {
        why = "no CURVE key";
      } else {
        char z85[kZ85KeyChars + 1];
        zmq_z85_encode(z85, static_cast<const uint8_t *>(f[6].data()), 32);
        ok = allowed_.count(z85) != 0;
        why = std::string("key ") + z85 + " is not in the allow file";
      }
    }
    if (!ok) spdlog::warn("refused a follower at {}: {}", address, why);
    const std::string code = ok ? "200" : "400", text = ok ? "OK" : why, none;
    std::vector<zmq::const_buffer> out{zmq::str_buffer("1.0"), zmq::buffer(request_id),
                                       zmq::buffer(code), zmq::buffer(text), zmq::buffer(none),
                                       zmq::buffer(none)};
    zmq::send_multipart(socket_, out);
  }

  zmq::socket_t socket_;
  std::set<std::string> allowed_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Wakes the serve loop at each flip of the local daemon (its events socket), so that a new
// version is copied out at once rather than at the next periodic scan.
class FlipWatcher {
 public:
  FlipWatcher(zmq::context_t &context, std::string dir) : dir_(std::move(dir)) {
    pull_ = zmq::socket_t(context, zmq::socket_type::pull);
    pull_.set(zmq::sockopt::linger, 0);
    pull_.bind(kWakeEndpoint);
    thread_ = std::thread([this, &context] { run(context); });
  }
  ~FlipWatcher() {
    stop_.store(true);
    thread_.join();
  }
  zmq::socket_t &socket() { return pull_; }
  void drain() {
    zmq::message_t m;
    while (pull_.recv(m, zmq::recv_flags::dontwait)) {
    }
  }

 private:
  void run(zmq::context_t &context) {
    zmq::socket_t push(context, zmq::socket_type::push);
    push.set(zmq::sockopt::linger, 0);
    push.set(zmq::sockopt::sndhwm, 4);  // a wake-up is a wake-up: extra ones may go
    push.connect(kWakeEndpoint);
    lf_events_t *events = nullptr;
    while (!stop_.load()) {
      if (events == nullptr && lf_events_open(dir_.c_str(), nullptr, &events) != LF_OK) {
        events = nullptr;
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        continue;
      }
      lf_event_t e;
      if (lf_events_next_event(events, 200, &e) == LF_OK)
        (void)push.send(zmq::str_buffer("f"), zmq::send_flags::dontwait);
    }
    lf_events_close(events);
  }

  std::string dir_;
  zmq::socket_t pull_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

class Server {
 public:
  // `corrupt_chunk`: the test hook (serve() reads it from the environment), 0 when off.
  Server(const ServeOptions &o, lf_client_t *client, lf_reader_t *reader, uint64_t corrupt_chunk)
      : o_(o), client_(client), reader_(reader), corrupt_at_(corrupt_chunk) {}

  // Copies out every served adapter's newest version that is not held yet.
  void scan(bool list_again) {
    if (list_again || names_.empty()) {
      if (!o_.adapters.empty()) {
        names_ = o_.adapters;
      } else {
        char *json = nullptr;
        const int st = lf_client_list(client_, &json);
        std::string text = json_of(st, json);
        std::string err;
        if (auto list = Json::parse(text, &err)) {
          names_.clear();
          for (const Json &a : (*list)["adapters"].items()) names_.push_back(a["name"].str());
        }
      }
    }
    std::set<std::string> present;
    for (const std::string &name : names_)
      if (refresh(name)) present.insert(name);
    // A dropped adapter is no longer offered; followers that have it are told it is gone.
    for (auto it = snapshots_.begin(); it != snapshots_.end();)
      it = present.count(it->first) ? std::next(it) : snapshots_.erase(it);
    present_ = std::move(present);
  }

  // What a want gets now: every served version newer than what the follower has (or of
  // another creation of the adapter than its copy's), every rolled-back-to version it should
  // flip back to, and the adapters it got from here that are no longer here.
  void candidates(const wire::Want &w, std::vector<wire::Offer> *offers,
                  std::vector<std::string> *gone) const {
    for (const auto &[name, snap] : snapshots_) {
      const wire::Have *have = nullptr;
      for (const wire::Have &h : w.adapters)
        if (h.name == name) have = &h;
      if (have == nullptr && !w.all) continue;
      if (have != nullptr && cannot_take(*have, snap->offer)) continue;
      const bool newer = have == nullptr || snap->offer.version > have->after ||
                         (have->incarnation != 0 && have->incarnation != snap->offer.incarnation);
      if (newer || rolled_back(w, *have, snap->offer)) offers->push_back(snap->offer);
    }
    for (const wire::Have &h : w.adapters)
      if (h.incarnation != 0 && !present_.count(h.name)) gone->push_back(h.name);
  }

  void handle(zmq::socket_t &router, std::vector<zmq::message_t> &frames) {
    if (frames.size() != 2) return;  // not a follower of this protocol: nothing to answer
    const std::string peer = frames[0].to_string();
    const zmq::message_t &body = frames[1];
    const uint64_t id = msg::scan_request_id(body.data(), body.size());
    auto decoded = ipc::decode(body.data(), body.size());
    if (!decoded) return send(router, peer, ipc::encode_error(id, decoded.error()));
    auto env = msg::decode_map<msg::Envelope>(decoded->get(), "request");
    if (!env) return send(router, peer, ipc::encode_error(id, env.error()));
    const msgpack::object &args = env->args_or_empty();
    if (env->op == wire::Want::kOp) {
      auto w = msg::decode_map<wire::Want>(args, "args");
      Status s = w ? wire::check(w.value()) : Status(w.error());
      if (!s) return send(router, peer, ipc::encode_error(id, s.error()));
      std::vector<wire::Offer> offers;
      std::vector<std::string> gone;
      candidates(w.value(), &offers, &gone);
      if (offers.empty() && gone.empty() && w->wait_ms > 0) {
        const auto deadline = Clock::now() + std::chrono::milliseconds(w->wait_ms);
        parked_.push_back({peer, id, std::move(w).value(), deadline});
        return;
      }
      return answer_want(router, peer, id, offers, std::move(gone));
    }
    if (env->op == wire::Fetch::kOp) {
      auto f = msg::decode_map<wire::Fetch>(args, "args");
      Status s = f ? wire::check(f.value()) : Status(f.error());
      if (!s) return send(router, peer, ipc::encode_error(id, s.error()));
      return answer_fetch(router, peer, id, f.value());
    }
    send(router, peer, ipc::encode_error(id, make_error(LF_E_UNKNOWN_OP, "unknown op")));
  }

  // Answers the parked wants that now have offers, or whose wait is over (with none).
  void answer_parked(zmq::socket_t &router) {
    const auto now = Clock::now();
    for (size_t i = 0; i < parked_.size();) {
      std::vector<wire::Offer> offers;
      std::vector<std::string> gone;
      candidates(parked_[i].want, &offers, &gone);
      if (offers.empty() && gone.empty() && now < parked_[i].deadline) {
        ++i;
        continue;
      }
      answer_want(router, parked_[i].peer, parked_[i].id, offers, std::move(gone));
      parked_.erase(parked_.begin() + static_cast<std::ptrdiff_t>(i));
    }
    for (auto it = sessions_.begin(); it != sessions_.end();)
      it = now - it->second.used > kSessionIdle ? sessions_.erase(it) : std::next(it);
  }

 private:
  struct Parked {
    std::string peer;
    uint64_t id;
    wire::Want want;
    Clock::time_point deadline;
  };
  struct Session {
    std::shared_ptr<const Snapshot> snap;
    Clock::time_point used;
  };

  // Whether the follower said it cannot take `served` (Have::stuck): a rollback to a version
  // it does not keep, or any version of an adapter it does not follow here (another schema or
  // placement, incarnation 0). Offered anyway, it would be offered again at every long poll.
  static bool cannot_take(const wire::Have &have, const wire::Offer &served) {
    return have.stuck.value_or(0) == served.version &&
           (have.incarnation == 0 || have.incarnation == served.incarnation);
  }

  // Whether the follower should flip back to `served`, which is not newer than what it has:
  // the upstream rolled back (or forward again, to a kept version). Only for followers that
  // say what is active there (protocol 3; a protocol 2 follower would take the offer for an
  // old one and ask again at once), only for a copy of this creation, and never the version
  // it said it cannot take, so that a follower that cannot flip is not offered it at every
  // long poll.
  static bool rolled_back(const wire::Want &w, const wire::Have &have, const wire::Offer &served) {
    return w.protocol >= 3 && have.active.has_value() && have.incarnation == served.incarnation &&
           served.version != *have.active && served.version != have.stuck.value_or(0);
  }

  void send(zmq::socket_t &router, const std::string &peer, const std::string &body) {
    // dontwait: a peer whose pipe is full (or gone) loses this reply and asks again; the
    // upstream never waits on one follower.
    if (!router.send(zmq::buffer(peer), zmq::send_flags::sndmore | zmq::send_flags::dontwait))
      return;
    (void)router.send(zmq::buffer(body), zmq::send_flags::dontwait);
  }

  void answer_want(zmq::socket_t &router, const std::string &peer, uint64_t id,
                   const std::vector<wire::Offer> &offers, std::vector<std::string> gone) {
    // Adapters in turn: the first offer after the one this follower got last.
    wire::WantResult result;
    result.gone = std::move(gone);
    if (!offers.empty()) {
      std::string &last = last_offered_[peer];
      const wire::Offer *pick = &offers.front();
      for (const wire::Offer &o : offers)
        if (o.name > last) {
          pick = &o;
          break;
        }
      last = pick->name;
      result.offer = *pick;
      // The version offered stays fetchable by this follower while it transfers it, even when
      // newer ones come meanwhile: a follower slower than the trainer still completes one.
      sessions_[peer + '\0' + pick->name] = {snapshots_.at(pick->name), Clock::now()};
    }
    send(router, peer, msg::encode_result(id, result));
  }

  void answer_fetch(zmq::socket_t &router, const std::string &peer, uint64_t id,
                    const wire::Fetch &f) {
    std::shared_ptr<const Snapshot> snap;
    const auto is_asked = [&f](const Snapshot &s) {
      return s.offer.version == f.version && s.offer.incarnation == f.incarnation;
    };
    if (auto it = snapshots_.find(f.name); it != snapshots_.end() && is_asked(*it->second))
      snap = it->second;
    if (auto it = sessions_.find(peer + '\0' + f.name); it != sessions_.end()) {
      it->second.used = Clock::now();
      if (!snap && is_asked(*it->second.snap)) snap = it->second.snap;
    }
    if (!snap)
      return send(router, peer, ipc::encode_error(id, make_error(LF_E_NO_VERSION,
                  f.name + "@" + std::to_string(f.version) + " is no longer served")));
    if (f.offset >= snap->image.size() || f.bytes > snap->image.size() - f.offset)
      return send(router, peer, ipc::encode_error(id, make_error(LF_E_INVALID_ARGUMENT,
                  "fetch past the end of the slot image")));
    const std::string header = msg::encode_result(
        id, wire::FetchResult{f.name, f.version, f.offset, f.bytes});
    if (++chunks_sent_ == corrupt_at_) {
      // The test hook: this one chunk goes as a copy with one bit flipped, so that a follower's
      // checksum must catch it. Never set outside tests (serve() logs it when it is).
      zmq::message_t bad(snap->image.data() + f.offset, f.bytes);
      static_cast<unsigned char *>(bad.data())[f.bytes / 2] ^= 0x10;
      spdlog::warn("test hook: corrupted chunk {} ({}@{}, offset {})", chunks_sent_, f.name,
                   f.version, f.offset);
      if (router.send(zmq::buffer(peer), zmq::send_flags::sndmore | zmq::send_flags::dontwait) &&
          router.send(zmq::buffer(header), zmq::send_flags::sndmore | zmq::send_flags::dontwait))
        (void)router.send(bad, zmq::send_flags::dontwait);
      return;
    }
    // The chunk goes without a copy: the message holds a reference to the snapshot until
    // ZeroMQ has sent it (the free function runs on its I/O thread).
    auto *hold = new std::shared_ptr<const Snapshot>(snap);
    zmq::message_t chunk(const_cast<std::byte *>(snap->image.data() + f.offset), f.bytes,
                         [](void *, void *hint) {
                           delete static_cast<std::shared_ptr<const Snapshot> *>(hint);
                         },
                         hold);
    if (!router.send(zmq::buffer(peer), zmq::send_flags::sndmore | zmq::send_flags::dontwait))
      return;
    if (!router.send(zmq::buffer(header), zmq::send_flags::sndmore | zmq::send_flags::dontwait))
      return;
    (void)router.send(chunk, zmq::send_flags::dontwait);
  }

  // Copies out the adapter's active version when it is not the one held (newer, or older after
  // a rollback); false when the daemon has no adapter of that name (dropped, or never created).
  bool refresh(const std::string &name) {
    // Twice at most: a reference gone stale (dropped, perhaps re-created under the same name)
    // is found again at once, and what was held of the old creation is let go.
    for (int attempt = 0; attempt < 2; ++attempt) {
      auto ref_it = refs_.find(name);
      if (ref_it == refs_.end()) {
        lf_adapter_ref_t ref = 0;
        const int st = lf_reader_find(reader_, name.c_str(), &ref);
        // Only "no such adapter" counts as absent: any other failure says nothing about it,
        // and absence makes followers drop their copies.
        if (st != LF_OK) return st != LF_E_NOT_FOUND;
        ref_it = refs_.emplace(name, ref).first;
      }
      uint64_t active = 0;
      if (lf_reader_active_version(reader_, ref_it->second, &active) != LF_OK) {
        refs_.erase(ref_it);
        snapshots_.erase(name);
        continue;
      }
      auto held = snapshots_.find(name);
      if (active != 0 && (held == snapshots_.end() || held->second->offer.version != active))
        copy_out(name, ref_it->second);
      return true;
    }
    return false;
  }

  void copy_out(const std::string &name, lf_adapter_ref_t ref) {
    lf_pin_t *pin = nullptr;
    if (const int st = lf_reader_acquire(reader_, ref, 0, &pin); st != LF_OK) {
      // Gone or between versions: the next scan sees. Anything else (a device this process
      // does not see, say) is said once.
      if (st != LF_E_NO_VERSION && st != LF_E_STALE && warned_.insert(name).second)
        spdlog::error("not serving '{}': pinning it: {}: {}", name, lf_strerror(st),
                      lf_reader_last_error(reader_));
      return;
    }
    const uint64_t version = lf_pin_version(pin);
    char *json = nullptr;
    const int st = lf_client_info(client_, name.c_str(), &json);
    const std::string text = json_of(st, json);
    std::string err;
    std::optional<Json> info = Json::parse(text, &err);
    std::optional<wire::Offer> offer;
    if (info) offer = offer_from_info(*info, version);
    // The checksum covers the whole slot, padding between tensors included, so the follower
    // gets the slot image byte for byte (the pin keeps it unchanged while it is copied), from
    // host memory or from the adapter's device.
    auto snap = std::make_shared<Snapshot>();
    std::string why;
    if (!offer) {
      why = "its info could not be read";
    } else if (lf_pin_slot_bytes(pin) != offer->slot_bytes) {
      why = "its info and its pin disagree on the slot's size";
    } else {
      snap->image.resize_for_overwrite(offer->slot_bytes);
      if (const int copied = lf_pin_copy_slot(pin, snap->image.data(), snap->image.size());
          copied != LF_OK)
        why = std::string("copying its slot out: ") + lf_strerror(copied) + ": " +
              lf_reader_last_error(reader_);
    }
    lf_pin_release(pin);
    if (!why.empty()) {
      if (warned_.insert(name).second) spdlog::error("not serving '{}': {}", name, why);
      return;
    }
    offer->checksum = kernels::checksum_parallel(snap->image.data(), snap->image.size());
    // The daemon's own checksum of that version, when its writer asked for one: a mismatch
    // means the bytes are not what was committed, and they are not served.
    for (const Json &slot : (*info)["slots"].items()) {
      if (slot["version"].u64() != version || slot["checksum"].u64() == 0) continue;
      if (slot["checksum"].u64() != offer->checksum) {
        spdlog::error("{}@{}: the copy's checksum differs from the daemon's; not served", name,
                      version);
        return;
      }
    }
    if (Status s = wire::check(*offer); !s) {
      spdlog::error("not serving {}@{}: {}", name, version, s.error().message);
      return;
    }
    snap->offer = std::move(offer).value();
    spdlog::info("serving {}@{} ({} bytes)", name, version, snap->image.size());
    snapshots_[name] = std::move(snap);
    warned_.erase(name);
  }

  const ServeOptions &o_;
  lf_client_t *client_;
  lf_reader_t *reader_;
  std::vector<std::string> names_;
  std::map<std::string, lf_adapter_ref_t> refs_;
  std::map<std::string, std::shared_ptr<const Snapshot>> snapshots_;
  std::map<std::string, Session> sessions_;  // peer routing id + '\0' + adapter
  std::vector<Parked> parked_;
  std::map<std::string, std::string> last_offered_;  // peer -> adapter offered last
  std::set<std::string> warned_;
  std::set<std::string> present_;  // the served adapters the daemon has, as of the last scan
  const uint64_t corrupt_at_;      // test hook: the chunk (1-based) to corrupt; 0 = none
  uint64_t chunks_sent_ = 0;
};

// ---------------------------------------------------------------------------------------------
// follow

// The local side of one followed adapter.
struct Local {
  uint64_t last_version = 0;
  // The version active there (0: none): below last_version after a rollback. Read from the
  // daemon with last_version, and kept as this relay flips; sent up as Have::active.
  uint64_t active = 0;
  // A version the upstream rolled back to that this node does not keep, so it stays where it
  // is (0: none); sent up as Have::stuck, shown in the status, cleared by the next flip.
  uint64_t stuck = 0;
  // The upstream creation (wire::Offer::incarnation) the local copy mirrors; 0 until this relay
  // created it or flipped a version of it. Only such copies are dropped or re-created when the
  // upstream drops or re-creates the adapter: a follower's own adapters are left alone.
  uint64_t incarnation = 0;
  bool refused = false;  // its local schema or placement differs from the upstream's: not followed
  // While refused: the newest version the upstream offered, sent up as Have::stuck so that the
  // upstream does not offer it again at every long poll (a newer one is offered once more).
  uint64_t refused_version = 0;
  // For the status file (docs/operations.md, "Following another node"), since this start.
  uint64_t upstream_version = 0;   // the newest version the upstream offered
  int64_t behind_since_ms = 0;     // unix ms when a version above last_version was first
                                   // offered; 0 while caught up
  uint64_t bytes = 0, flips = 0, retries = 0, checksum_failures = 0;
  uint64_t rollbacks = 0;  // the upstream's rollbacks followed here
  uint64_t receiving_version = 0, receiving_bytes = 0;  // the transfer under way, if any
};

int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A JSON string; the endpoint comes from the command line, names are checked adapter names.
std::string quoted(const std::string &text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') out += '\\', out += c;
    else if (static_cast<unsigned char>(c) < 0x20) out += ' ';
    else out += c;
  }
  return out + "\"";
}

enum class Fetched { kOk, kGone, kLost, kStopped };

class Follower {
 public:
  Follower(const FollowOptions &o, zmq::context_t &context, lf_client_t *client,
           const KeyPair *keys, const std::string &server_key)
      : o_(o), context_(context), client_(client), keys_(keys), server_key_(server_key),
        status_path_(o.status_file.empty() ? o.runtime_dir + "/relay-follow.json" : o.status_file) {
    for (const std::string &name : o_.adapters) wanted_.insert(name);
    recall();
  }

  int run(const std::atomic<bool> &stop) {
    auto backoff = std::chrono::milliseconds(100);
    connect();
    write_status(true);
    bool said = false;
    while (!stop.load()) {
      const bool legacy = Clock::now() < legacy_until_;
      wire::Want w{legacy ? wire::kOldestRelayProtocol : wire::kRelayProtocol, {}, wanted_.empty(),
                   2000};
      const auto have = [legacy](const std::string &name, const Local &l) {
        // Protocol 2 has no `active` nor `stuck`: an older upstream refuses unknown fields.
        return legacy ? wire::Have{name, l.last_version, l.incarnation, std::nullopt, std::nullopt}
                      : wire::Have{name, l.last_version, l.incarnation, l.active,
                                   l.refused ? l.refused_version : l.stuck};
      };
      read_stuck_again();
      for (const std::string &name : wanted_) w.adapters.push_back(have(name, local(name)));
      if (wanted_.empty())
        for (const auto &[name, l] : locals_) w.adapters.push_back(have(name, l));
      const uint64_t id = ++next_id_;
      std::vector<zmq::message_t> reply;
      if (!send(msg::encode_request(id, w)) ||
          !receive(id, Clock::now() + std::chrono::milliseconds(w.wait_ms) + kReplyTimeout, stop,
                   &reply)) {
        if (stop.load()) break;
        if (!said)
          spdlog::warn("no answer from {} (down, unreachable, or it refused this node's key: "
                       "see its log); trying again", o_.upstream);
        said = true;
        connected_ = false;
        write_status(true);
        connect();
        std::this_thread::sleep_for(backoff);
        backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
        continue;
      }
      if (said) spdlog::info("upstream {} answers", o_.upstream);
      said = false;
      connected_ = true;
      backoff = std::chrono::milliseconds(100);
      ++wants_answered_;
      auto result = decode_reply<wire::WantResult>(reply);
      if (!result && !legacy && refuses_protocol(result.error())) {
        // An upstream relay older than protocol 3. Asked in protocol 2 for a while (rollbacks
        // upstream are not followed meanwhile), then in 3 again: it may have been upgraded.
        if (!legacy_warned_)
          spdlog::warn("the upstream refused relay protocol {} ({}): its relay is older than "
                       "this one. Asking in protocol {}, which does not follow rollbacks "
                       "upstream, and in {} again every minute, until it is upgraded",
                       wire::kRelayProtocol, result.error().message, wire::kOldestRelayProtocol,
                       wire::kRelayProtocol);
        legacy_warned_ = true;
        legacy_until_ = Clock::now() + kLegacyRetry;
        continue;
      }
      if (!result) {
        spdlog::error("upstream: {}", result.error().message);
        std::this_thread::sleep_for(std::chrono::seconds(1));
        continue;
      }
      for (const std::string &name : result->gone) {
        auto it = locals_.find(name);
        if (it == locals_.end() || it->second.incarnation == 0) continue;  // not ours to drop
        spdlog::info("'{}' was dropped upstream; dropping the local copy", name);
        drop_local(name);
      }
      if (result->offer && mirror(*result->offer, stop) == Fetched::kLost) connect();
      write_status(!result->gone.empty() || result->offer);
    }
    return 0;
  }

 private:
  // An adapter stuck after a rollback upstream may be set right by the operator: dropped here,
  // so that this relay creates it again from the upstream. While stuck, what the daemon has
  // is read again before each want (one info request per stuck adapter per long poll).
  void read_stuck_again() {
    for (auto &[name, l] : locals_) {
      if (l.stuck == 0) continue;
      char *json = nullptr;
      const int st = lf_client_info(client_, name.c_str(), &json);
      const std::string text = json_of(st, json);
      std::string err;
      if (st == LF_E_NOT_FOUND) {
        // Gone here: the next want says after 0, and the upstream's active version is newer.
        spdlog::info("'{}' was dropped on this node; taking the upstream's version again", name);
        l.last_version = l.active = l.stuck = 0;
      } else if (auto info = Json::parse(text, &err)) {
        l.last_version = (*info)["last_version"].u64();
        l.active = (*info)["version"].u64();
      }
    }
  }

  // How an upstream relay older than protocol 3 answers a want of protocol 3: the protocol
  // number refused, or `active` / `stuck` refused as unknown fields.
  static bool refuses_protocol(const Error &e) {
    return e.code == LF_E_PROTOCOL_VERSION ||
           (e.code == LF_E_PROTOCOL && e.message.find("unknown field") != std::string::npos);
  }

  void connect() {
    socket_ = zmq::socket_t(context_, zmq::socket_type::dealer);
    socket_.set(zmq::sockopt::linger, 0);
    // The biggest frame a follower takes: a chunk, or an offer list within the decoder's limit.
    socket_.set(zmq::sockopt::maxmsgsize,
                static_cast<int64_t>(std::max<uint64_t>(wire::kMaxChunkBytes, ipc::kMaxMessageBytes)));
    socket_.set(zmq::sockopt::rcvhwm, static_cast<int>(o_.window) * 2 + 16);
    if (keys_ != nullptr) {
      socket_.set(zmq::sockopt::curve_serverkey, server_key_);
      socket_.set(zmq::sockopt::curve_publickey, keys_->public_z85);
      socket_.set(zmq::sockopt::curve_secretkey, keys_->secret_z85);
    }
    socket_.connect(o_.upstream);
  }

  bool send(const std::string &body) {
    return socket_.send(zmq::buffer(body), zmq::send_flags::dontwait).has_value();
  }

  // Waits for the reply of request `id` (replies of earlier, abandoned requests are skipped).
  bool receive(uint64_t id, Clock::time_point deadline, const std::atomic<bool> &stop,
               std::vector<zmq::message_t> *out) {
    while (!stop.load()) {
      const int64_t left = ms_until(deadline);
      if (left == 0) return false;
      zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
      if (poll_for(&item, 1, std::min<int64_t>(left, 200)) == 0)
        continue;
      std::vector<zmq::message_t> frames;
      if (!zmq::recv_multipart(socket_, std::back_inserter(frames), zmq::recv_flags::dontwait))
        continue;
      if (frames.empty() || msg::scan_request_id(frames[0].data(), frames[0].size()) != id)
        continue;
      *out = std::move(frames);
      return true;
    }
    return false;
  }

  template <class R>
  Result<R> decode_reply(const std::vector<zmq::message_t> &frames) {
    auto decoded = ipc::decode(frames[0].data(), frames[0].size());
    if (!decoded) return decoded.error();
    auto root = ipc::MapView::of(decoded->get(), "reply");
    if (!root) return root.error();
    auto ok = root->boolean("ok");
    if (!ok) return ok.error();
    if (!ok.value()) {
      auto e = root->map("error");
      if (!e) return e.error();
      auto code = e->integer("code");
      auto text = e->str("message");
      return make_error(code ? static_cast<int>(code.value()) : LF_E_PROTOCOL,
                        text ? std::string(text.value()) : "error");
    }
    const msgpack::object *result = root->find("result");
    if (result == nullptr) return make_error(LF_E_PROTOCOL, "reply without a result");
    return msg::decode_map<R>(*result, "result");
  }

  // The local adapter's state, read from the local daemon the first time.
  Local &local(const std::string &name) {
    auto it = locals_.find(name);
    if (it != locals_.end()) return it->second;
    Local l;
    char *json = nullptr;
    const int st = lf_client_info(client_, name.c_str(), &json);
    std::string err;
    if (auto info = Json::parse(json_of(st, json), &err)) {
      l.last_version = (*info)["last_version"].u64();
      l.active = (*info)["version"].u64();
    }
    return locals_.emplace(name, l).first->second;
  }

  // Creates the adapter locally as the upstream has it, or checks that the local one has the
  // same layout: the follower writes the upstream's slot image as it is.
  Status prepare(const wire::Offer &offer) {
    char *json = nullptr;
    int st = lf_client_info(client_, offer.name.c_str(), &json);
    std::string text = json_of(st, json);
    if (st == LF_E_NOT_FOUND) {
      lf_spec_t *spec = nullptr;
      if (lf_spec_new(&spec) != LF_OK) return make_error(LF_E_INTERNAL, "lf_spec_new");
      int r = LF_OK;
      for (const msg::InfoTensor &t : offer.tensors)
        if (r == LF_OK)
          r = lf_spec_add_tensor(spec, t.name.c_str(), t.dtype.code, static_cast<int>(t.shape.size()),
                                 t.shape.data());
      if (r == LF_OK && offer.lora.rank > 0) {
        std::string modules;
        for (const std::string &m : offer.lora.target_modules.names)
          modules += (modules.empty() ? "" : ",") + m;
        r = lf_spec_set_lora(spec, static_cast<int>(offer.lora.rank), offer.lora.alpha,
                             modules.c_str(), offer.lora.use_rslora ? 1 : 0);
      }
      if (r == LF_OK) r = lf_spec_set_metadata(spec, offer.metadata.c_str());
      if (r == LF_OK)
        r = lf_spec_set_slots(spec, static_cast<int>(offer.slots), static_cast<int>(offer.history));
      if (r == LF_OK) r = lf_spec_set_placement(spec, o_.placement.c_str());
      if (r == LF_OK) r = lf_client_create_adapter(client_, offer.name.c_str(), spec);
      lf_spec_free(spec);
      if (r != LF_OK && r != LF_E_EXISTS)
        return make_error(r, "creating it locally: " + client_error(client_, r));
      if (r == LF_OK) locals_[offer.name].incarnation = offer.incarnation;
      spdlog::info("created '{}' locally as the upstream has it, placed on {}", offer.name,
                   o_.placement);
      json = nullptr;
      st = lf_client_info(client_, offer.name.c_str(), &json);
      text = json_of(st, json);
    }
    if (st != LF_OK) return make_error(st, client_error(client_, st));
    std::string err;
    auto info = Json::parse(text, &err);
    if (!info) return make_error(LF_E_PROTOCOL, "local info: " + err);
    const auto &tensors = (*info)["tensors"].items();
    const std::string &placement = (*info)["placement"].str();
    if (!same_placement(placement, o_.placement))
      return make_error(LF_E_INVALID_ARGUMENT, "the local adapter is placed on " + placement +
                                                   ", not on " + o_.placement + " (--placement)");
    bool same = (*info)["slot_bytes"].u64() == offer.slot_bytes &&
                tensors.size() == offer.tensors.size();
    for (size_t i = 0; same && i < tensors.size(); ++i) {
      const msg::InfoTensor &u = offer.tensors[i];
      same = tensors[i]["name"].str() == u.name && tensors[i]["offset"].u64() == u.offset &&
             ipc::dtype_from_name(tensors[i]["dtype"].str()) == u.dtype.code &&
             tensors[i]["shape"].items().size() == u.shape.size();
      for (size_t d = 0; same && d < u.shape.size(); ++d)
        same = tensors[i]["shape"].items()[d].i64() == u.shape[d];
    }
    if (!same)
      return make_error(LF_E_INVALID_ARGUMENT,
                        "the local adapter's schema differs from the upstream's (the same "
                        "tensors, at the same offsets, is what is followed)");
    locals_[offer.name].last_version = (*info)["last_version"].u64();
    locals_[offer.name].active = (*info)["version"].u64();
    return {};
  }

  Fetched mirror(const wire::Offer &offer, const std::atomic<bool> &stop) {
    if (!wanted_.empty() && !wanted_.count(offer.name)) return Fetched::kOk;
    if (Status s = wire::check(offer); !s) {
      spdlog::error("upstream offered a bad version of '{}': {}", offer.name, s.error().message);
      return Fetched::kOk;
    }
    if (const Local &l = local(offer.name); l.incarnation != 0 && l.incarnation != offer.incarnation) {
      // Re-created upstream (perhaps with another schema): its numbers started again, so the
      // old copy goes and the adapter is created again as the upstream has it now.
      spdlog::info("'{}' was re-created upstream; dropping the local copy to follow the new one",
                   offer.name);
      if (!drop_local(offer.name)) return Fetched::kOk;
    }
    if (Local &l = local(offer.name); l.refused) {
      l.refused_version = offer.version;
      return Fetched::kOk;
    }
    if (Status s = prepare(offer); !s) {
      spdlog::error("not following '{}': {}", offer.name, s.error().message);
      locals_[offer.name].refused = true;
      locals_[offer.name].refused_version = offer.version;
      return Fetched::kOk;
    }
    Local &l = locals_[offer.name];
    // Not newer than every version this daemon ever had: the upstream rolled back to it.
    if (offer.version <= l.last_version) return roll_back(offer, &l);
    l.upstream_version = std::max(l.upstream_version, offer.version);
    if (l.behind_since_ms == 0) l.behind_since_ms = unix_ms();
    l.receiving_version = offer.version;
    l.receiving_bytes = 0;
    write_status(true);
    image_.resize_for_overwrite(offer.slot_bytes);
    uint64_t sum = 0;
    const Fetched got = fetch(offer, &image_, &sum, stop, &l);
    l.receiving_version = l.receiving_bytes = 0;
    if (got != Fetched::kOk) {
      if (got != Fetched::kStopped) ++l.retries;
      return got;
    }
    l.bytes += image_.size();
    // The transfer is checked before any slot is taken: a corrupted image is fetched again
    // (the next want offers it again), never written.
    if (sum != offer.checksum) {
      spdlog::error("{}@{}: checksum mismatch after transfer ({} != {}); fetching again",
                    offer.name, offer.version, sum, offer.checksum);
      ++l.checksum_failures;
      ++l.retries;
      return Fetched::kOk;
    }
    commit(offer, image_);
    return Fetched::kOk;
  }

  // Follows a rollback upstream to `offer`, a version not newer than this daemon's newest.
  // Versions never repeat in a daemon, so the only way to that number here is a rollback to a
  // slot that still holds it, with the upstream's bytes (the same checksum). Without one this
  // node stays where it is, says so once per version, and tells the upstream (Have::stuck)
  // so that it is not offered the same version at every long poll.
  Fetched roll_back(const wire::Offer &offer, Local *l) {
    const std::string at = offer.name + "@" + std::to_string(offer.version);
    char *json = nullptr;
    const int st = lf_client_info(client_, offer.name.c_str(), &json);
    std::string err;
    const std::optional<Json> info = Json::parse(json_of(st, json), &err);
    if (!info) {
      spdlog::error("{}: reading the local adapter to roll back: {}", at,
                    st != LF_OK ? client_error(client_, st) : err);
      return pause_after_failure(l);
    }
    l->active = (*info)["version"].u64();
    if (l->active == offer.version) {  // there already (an offer that crossed a flip)
      l->stuck = 0;
      return Fetched::kOk;
    }
    std::string missing = "this node does not keep version " + std::to_string(offer.version);
    for (const Json &slot : (*info)["slots"].items()) {
      if (slot["state"].str() != "committed" || slot["version"].u64() != offer.version) continue;
      missing = slot["checksum"].u64() == offer.checksum
                    ? std::string()
                    : "this node's version " + std::to_string(offer.version) +
                          " holds other bytes than the upstream's (another checksum)";
    }
    if (missing.empty()) {
      const int rolled = lf_client_rollback(client_, offer.name.c_str(), offer.version);
      if (rolled == LF_OK) {
        l->active = offer.version;
        l->incarnation = offer.incarnation;
        l->stuck = 0;
        ++l->rollbacks;
        write_status(true);
        spdlog::info("{}: rolled back to {} as the upstream did", offer.name, offer.version);
        return Fetched::kOk;
      }
      // Evicted since the info: as if it was never kept. Anything else may pass: asked again.
      if (rolled != LF_E_NO_VERSION) {
        spdlog::error("{}: rolling back as the upstream did: {}", at, client_error(client_, rolled));
        return pause_after_failure(l);
      }
      missing = "this node no longer keeps version " + std::to_string(offer.version);
    }
    l->stuck = offer.version;
    if (said_stuck_.insert(at).second)
      spdlog::error("{}: the upstream rolled back to {}, but {}, and a daemon never makes a "
                    "version number again: staying at {} until the upstream publishes a newer "
                    "version or flips to one this node keeps. To take the upstream's version "
                    "now, drop '{}' on this node (loraflipctl drop): this relay then creates it "
                    "again from the upstream, under the upstream's number.",
                    at, offer.version, missing, l->active, offer.name);
    write_status(true);
    return Fetched::kOk;
  }

  // A local failure that the next offer may not repeat: counted, and the next want waits a
  // second, so that a daemon that keeps failing is not asked again in a hot loop.
  Fetched pause_after_failure(Local *l) {
    ++l->retries;
    std::this_thread::sleep_for(std::chrono::seconds(1));
    return Fetched::kOk;
  }

  // Receives `offer`'s image into `image` (sized for it) and its checksum into `*sum`, summed
  // chunk by chunk as they arrive (kernels::checksum_words), while each chunk is still in the
  // cache: no second pass over the whole image.
  Fetched fetch(const wire::Offer &offer, ImageBuffer *image, uint64_t *sum,
                const std::atomic<bool> &stop, Local *progress) {
    // Whole 8-byte words per chunk, so that every chunk but the last starts and ends on a
    // word of the checksum.
    const uint64_t chunk =
        std::clamp(o_.chunk_bytes, wire::kMinChunkBytes, wire::kMaxChunkBytes) & ~uint64_t{7};
    *sum = offer.slot_bytes;
    std::map<uint64_t, uint64_t> in_flight;  // request id -> offset
    uint64_t next = 0, received = 0;
    while (received < offer.slot_bytes) {
      if (stop.load()) return Fetched::kStopped;
      while (in_flight.size() < o_.window && next < offer.slot_bytes) {
        const uint64_t bytes = std::min(chunk, offer.slot_bytes - next);
        const uint64_t id = ++next_id_;
        if (!send(msg::encode_request(
                id, wire::Fetch{offer.name, offer.incarnation, offer.version, next, bytes})))
          return Fetched::kLost;
        in_flight[id] = next;
        next += bytes;
      }
      // One chunk within the reply timeout, or the link is taken as lost.
      const auto deadline = Clock::now() + kReplyTimeout;
      std::vector<zmq::message_t> frames;
      bool got = false;
      while (!got && !stop.load()) {
        const int64_t left = ms_until(deadline);
        if (left == 0) return Fetched::kLost;
        zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
        if (poll_for(&item, 1, std::min<int64_t>(left, 200)) == 0)
          continue;
        frames.clear();
        if (!zmq::recv_multipart(socket_, std::back_inserter(frames), zmq::recv_flags::dontwait))
          continue;
        if (frames.empty()) continue;
        got = in_flight.count(msg::scan_request_id(frames[0].data(), frames[0].size())) != 0;
      }
      if (!got) return Fetched::kStopped;
      const uint64_t id = msg::scan_request_id(frames[0].data(), frames[0].size());
      const uint64_t offset = in_flight[id];
      in_flight.erase(id);
      auto header = decode_reply<wire::FetchResult>(frames);
      if (!header) {
        if (header.error().code == LF_E_NO_VERSION) return Fetched::kGone;
        spdlog::error("fetching {}@{}: {}", offer.name, offer.version, header.error().message);
        return Fetched::kGone;
      }
      const uint64_t expected = std::min(chunk, offer.slot_bytes - offset);
      if (frames.size() != 2 || header->name != offer.name || header->version != offer.version ||
          header->offset != offset || header->bytes != expected || frames[1].size() != expected) {
        spdlog::error("fetching {}@{}: a chunk that does not match its request", offer.name,
                      offer.version);
        return Fetched::kLost;
      }
      *sum += chunk_checksum(frames[1].data(), offset, expected, offer.slot_bytes);
      std::memcpy(image->data() + offset, frames[1].data(), expected);
      received += expected;
      progress->receiving_bytes = received;
      write_status(false);
    }
    return Fetched::kOk;
  }

  void commit(const wire::Offer &offer, const ImageBuffer &image) {
    lf_writer_t *w = nullptr;
    int st = lf_client_begin_write(client_, offer.name.c_str(), 60000, &w);
    if (st != LF_OK) {
      spdlog::error("{}@{}: begin_write: {}", offer.name, offer.version, client_error(client_, st));
      return;
    }
    // The lease lends the whole slot; the image covers it all, padding between tensors
    // included, so that the daemon's checksum of the slot is the upstream's. Host or device
    // (the adapter's first device; the daemon copies to the others before the flip).
    st = lf_writer_copy_in_slot(w, image.data(), image.size());
    if (st != LF_OK) {
      spdlog::error("{}@{}: writing the image: {}", offer.name, offer.version,
                    client_error(client_, st));
      lf_writer_abort(w);
      ++locals_[offer.name].retries;
      return;
    }
    uint64_t made = 0;
    st = lf_writer_commit_as(w, offer.version, LF_COMMIT_CHECKSUM, offer.checksum, &made);
    if (st == LF_E_TIMEOUT || st == LF_E_CONNECTION) {
      // The outcome is unknown: asking again answers the version the first one made.
      st = lf_writer_commit_as(w, offer.version, LF_COMMIT_CHECKSUM, offer.checksum, &made);
      if (st == LF_E_TIMEOUT || st == LF_E_CONNECTION) lf_writer_abort(w);
    }
    if (st != LF_OK) {
      spdlog::error("{}@{}: commit refused: {}", offer.name, offer.version,
                    client_error(client_, st));
      // Read last_version again from the daemon before the next try; the rest stays known.
      Local keep = locals_[offer.name];
      ++keep.retries;
      locals_.erase(offer.name);
      const Local &fresh = local(offer.name);
      keep.last_version = fresh.last_version;
      keep.active = fresh.active;
      locals_[offer.name] = keep;
      return;
    }
    Local &l = locals_[offer.name];
    l.last_version = made;
    l.active = made;
    l.stuck = 0;  // a newer version ends a rollback this node could not follow
    l.incarnation = offer.incarnation;
    ++l.flips;
    if (made >= l.upstream_version) l.behind_since_ms = 0;
    write_status(true);
    spdlog::info("{}@{} flipped ({} bytes)", offer.name, made, image.size());
  }

  // Drops the local copy (gone or re-created upstream); false when the daemon refused, in which
  // case the next want asks again.
  bool drop_local(const std::string &name) {
    const int st = lf_client_drop_adapter(client_, name.c_str());
    if (st != LF_OK && st != LF_E_NOT_FOUND) {
      spdlog::error("dropping '{}' locally: {}", name, client_error(client_, st));
      return false;
    }
    locals_.erase(name);
    write_status(true);
    return true;
  }

  // The status file: what `loraflipctl status` and `metrics` show of this follower. Written
  // whole to a temporary file and renamed over the old one, so a reader never sees half of
  // one; at most every 500 ms during a transfer, and at each flip, drop and lost link.
  void write_status(bool now) {
    const auto t = Clock::now();
    if (!now && t < next_status_) return;
    next_status_ = t + std::chrono::milliseconds(500);
    const int64_t wall = unix_ms();
    std::string j = "{\"upstream\":" + quoted(o_.upstream) + ",\"pid\":" +
                    std::to_string(::getpid()) + ",\"connected\":" +
                    (connected_ ? "true" : "false") + ",\"updated_unix_ms\":" +
                    std::to_string(wall) + ",\"wants_answered\":" +
                    std::to_string(wants_answered_) + ",\"adapters\":[";
    bool first = true;
    for (const auto &[name, l] : locals_) {
      if (l.incarnation == 0 && l.upstream_version == 0) continue;  // nothing of it followed yet
      const uint64_t lag_versions =
          l.upstream_version > l.last_version ? l.upstream_version - l.last_version : 0;
      const int64_t lag_ms = l.behind_since_ms != 0 ? std::max<int64_t>(0, wall - l.behind_since_ms) : 0;
      j += std::string(first ? "" : ",") + "{\"name\":" + quoted(name) +
           ",\"incarnation\":" + std::to_string(l.incarnation) +
           ",\"last_version\":" + std::to_string(l.last_version) +
           ",\"active_version\":" + std::to_string(l.active) +
           ",\"upstream_version\":" + std::to_string(std::max(l.upstream_version, l.last_version)) +
           ",\"lag_versions\":" + std::to_string(lag_versions) +
           ",\"lag_ms\":" + std::to_string(lag_ms) +
           ",\"behind_since_unix_ms\":" + std::to_string(l.behind_since_ms) +
           ",\"bytes\":" + std::to_string(l.bytes) + ",\"flips\":" + std::to_string(l.flips) +
           ",\"retries\":" + std::to_string(l.retries) +
           ",\"checksum_failures\":" + std::to_string(l.checksum_failures) +
           ",\"rollbacks\":" + std::to_string(l.rollbacks) +
           ",\"upstream_rolled_back_to\":" + std::to_string(l.stuck) +
           ",\"receiving_version\":" + std::to_string(l.receiving_version) +
           ",\"receiving_bytes\":" + std::to_string(l.receiving_bytes) + "}";
      first = false;
    }
    j += "]}\n";
    const std::string tmp = status_path_ + ".tmp";
    bool ok = false;
    if (std::FILE *f = std::fopen(tmp.c_str(), "w"); f != nullptr) {
      ok = std::fwrite(j.data(), 1, j.size(), f) == j.size();
      ok = std::fclose(f) == 0 && ok;
      ok = ok && std::rename(tmp.c_str(), status_path_.c_str()) == 0;
    }
    if (!ok && !status_warned_) {
      spdlog::warn("cannot write the status file {}: {} (status and metrics will not show this "
                   "follower)", status_path_, std::strerror(errno));
      status_warned_ = true;
    }
  }

  // Which upstream creation each local copy mirrors, from the status file of the last run
  // against the same upstream: so that an adapter dropped or re-created upstream while this
  // relay was down is still dropped or re-created here.
  void recall() {
    std::FILE *f = std::fopen(status_path_.c_str(), "r");
    if (f == nullptr) return;
    std::string text;
    char buf[4096];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) text.append(buf, n);
    std::fclose(f);
    std::string err;
    auto status = Json::parse(text, &err);
    if (!status || (*status)["upstream"].str() != o_.upstream) return;
    for (const Json &a : (*status)["adapters"].items()) {
      const std::string &name = a["name"].str();
      if (!ipc::check_adapter_name(name) || a["incarnation"].u64() == 0) continue;
      if (!wanted_.empty() && !wanted_.count(name)) continue;
      local(name).incarnation = a["incarnation"].u64();
    }
  }

  const FollowOptions &o_;
  zmq::context_t &context_;
  lf_client_t *client_;
  const KeyPair *keys_;
  std::string server_key_;
  zmq::socket_t socket_;
  uint64_t next_id_ = 0;
  std::set<std::string> wanted_;
  std::map<std::string, Local> locals_;
  ImageBuffer image_;  // the version being received, kept for the next one
  std::string status_path_;
  Clock::time_point next_status_{};
  bool connected_ = false, status_warned_ = false;
  uint64_t wants_answered_ = 0;  // for the status file: shows that long polls do not spin
  std::set<std::string> said_stuck_;  // "name@version" of rollbacks logged as not followed
  // Until then, wants go in kOldestRelayProtocol: the upstream refused kRelayProtocol.
  Clock::time_point legacy_until_{};
  bool legacy_warned_ = false;
};

}  // namespace

namespace {

// The devices of a placement, the first (written to) first and the copies sorted; empty for
// "host"; nullopt when it is neither "host" nor "cuda:N[,M...]".
std::optional<std::vector<int>> placement_devices(const std::string &placement) {
  if (placement == "host") return std::vector<int>{};
  std::string list;
  for (const char *prefix : {"cuda:", "device:"})
    if (placement.rfind(prefix, 0) == 0) list = placement.substr(std::strlen(prefix));
  std::vector<int> devices;
  for (size_t start = 0;;) {  // an empty list or item (no prefix, "cuda:", "cuda:0,") fails
    const size_t comma = list.find(',', start);
    const std::string item = list.substr(start, comma == std::string::npos ? comma : comma - start);
    if (item.empty() || item.size() > 4 || item.find_first_not_of("0123456789") != std::string::npos)
      return std::nullopt;
    devices.push_back(std::stoi(item));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  std::sort(devices.begin() + 1, devices.end());
  return devices;
}

}  // namespace

Status check_placement(const std::string &placement) {
  if (!placement_devices(placement))
    return make_error(LF_E_INVALID_ARGUMENT, "placement must be \"host\" or \"cuda:N[,M...]\", "
                                             "not '" + placement + "'");
  return {};
}

bool same_placement(const std::string &a, const std::string &b) {
  const auto da = placement_devices(a), db = placement_devices(b);
  return da && db && *da == *db;
}

Status check_endpoint(const std::string &endpoint, bool insecure) {
  if (endpoint.rfind("tcp://", 0) != 0)
    return make_error(LF_E_INVALID_ARGUMENT, "'" + endpoint + "' is not a tcp:// endpoint");
  if (!insecure) return {};
  const std::string host = endpoint.substr(6, endpoint.rfind(':') - 6);
  const bool loopback = host.rfind("127.", 0) == 0 || host == "[::1]" || host == "localhost";
  if (!loopback)
    return make_error(LF_E_PERMISSION, "--insecure (plain TCP) is refused on '" + endpoint +
                                           "': loopback addresses only");
  return {};
}

int serve(const ServeOptions &o, const std::atomic<bool> &stop) {
  if (Status s = check_endpoint(o.listen, o.insecure); !s) {
    spdlog::error("{}", s.error().message);
    return 1;
  }
  std::optional<KeyPair> keys;
  std::set<std::string> allowed;
  if (!o.insecure) {
    auto k = load_secret_key(o.secret_key);
    auto a = k ? load_allow_file(o.allow) : Result<std::set<std::string>>(k.error());
    if (!a) {
      spdlog::error("{}", a.error().message);
      return 1;
    }
    if (!zmq_has("curve")) {
      spdlog::error("this libzmq has no CURVE");
      return 1;
    }
    keys = k.value();
    allowed = std::move(a).value();
  } else {
    spdlog::warn("serving plain TCP on {} (--insecure): anyone who reaches it reads the adapters",
                 o.listen);
  }
  // Test only (tests/process/relay_fault_test.cpp): flips one bit of the Nth chunk this relay
  // sends (1-based, counted over all followers), to show that followers catch it. Read once.
  uint64_t corrupt_chunk = 0;
  if (const char *hook = std::getenv("LORAFLIP_RELAY_TEST_CORRUPT_CHUNK"); hook != nullptr) {
    corrupt_chunk = std::strtoull(hook, nullptr, 10);
    spdlog::warn("LORAFLIP_RELAY_TEST_CORRUPT_CHUNK={}: chunk {} will be corrupted (a test hook; "
                 "never set it in service)", hook, corrupt_chunk);
  }
  lf_client_t *client = open_client(o.runtime_dir, stop);
  if (client == nullptr) return 0;
  lf_reader_t *reader = nullptr;
  if (lf_reader_open(o.runtime_dir.c_str(), &reader) != LF_OK) {
    spdlog::error("cannot open a reader: {}", lf_last_error_message());
    lf_client_close(client);
    return 1;
  }
  int code = 0;
  try {
    zmq::context_t context(1);
    std::optional<ZapHandler> zap;
    if (keys) zap.emplace(context, allowed);
    zmq::socket_t router(context, zmq::socket_type::router);
    router.set(zmq::sockopt::linger, 0);
    router.set(zmq::sockopt::sndhwm, kRouterHwm);
    router.set(zmq::sockopt::rcvhwm, kRouterHwm);
    router.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(ipc::kMaxMessageBytes));
    if (keys) {
      router.set(zmq::sockopt::curve_server, true);
      router.set(zmq::sockopt::curve_secretkey, keys->secret_z85);
      router.set(zmq::sockopt::zap_domain, "loraflip");
    }
    router.bind(o.listen);
    spdlog::info("serving {} on {} ({})", o.runtime_dir, o.listen,
                 keys ? "CurveZMQ, " + std::to_string(allowed.size()) + " allowed keys"
                      : std::string("plain TCP"));
    FlipWatcher watcher(context, o.runtime_dir);
    Server server(o, client, reader, corrupt_chunk);
    auto next_list = Clock::now();
    while (!stop.load()) {
      zmq::pollitem_t items[] = {{router.handle(), 0, ZMQ_POLLIN, 0},
                                 {watcher.socket().handle(), 0, ZMQ_POLLIN, 0}};
      poll_for(items, 2, 100);
      watcher.drain();
      // Versions are compared in shared memory (no request to the daemon); the list of
      // adapters is asked again once a second, for adapters created since.
      const bool list_again = Clock::now() >= next_list;
      if (list_again) next_list = Clock::now() + std::chrono::seconds(1);
      server.scan(list_again);
      for (int n = 0; n < 1000; ++n) {
        std::vector<zmq::message_t> frames;
        if (!zmq::recv_multipart(router, std::back_inserter(frames), zmq::recv_flags::dontwait))
          break;
        server.handle(router, frames);
      }
      server.answer_parked(router);
    }
  } catch (const std::exception &e) {
    spdlog::error("serve: {}", e.what());
    code = 1;
  }
  lf_reader_close(reader);
  lf_client_close(client);
  return code;
}

int follow(const FollowOptions &o, const std::atomic<bool> &stop) {
  if (Status s = check_endpoint(o.upstream, o.insecure); !s) {
    spdlog::error("{}", s.error().message);
    return 1;
  }
  std::optional<KeyPair> keys;
  std::string server_key;
  if (!o.insecure) {
    auto k = load_secret_key(o.secret_key);
    auto sk = k ? load_public_key(o.server_key) : Result<std::string>(k.error());
    if (!sk) {
      spdlog::error("{}", sk.error().message);
      return 1;
    }
    keys = k.value();
    server_key = sk.value();
  }
  for (const std::string &name : o.adapters)
    if (Status s = ipc::check_adapter_name(name); !s) {
      spdlog::error("--adapters: {}", s.error().message);
      return 1;
    }
  if (Status s = check_placement(o.placement); !s) {
    spdlog::error("--placement: {}", s.error().message);
    return 1;
  }
  lf_client_t *client = open_client(o.runtime_dir, stop);
  if (client == nullptr) return 0;
  int code = 0;
  try {
    zmq::context_t context(1);
    Follower follower(o, context, client, keys ? &*keys : nullptr, server_key);
    spdlog::info("following {} into {} ({}; adapters it creates placed on {})", o.upstream,
                 o.runtime_dir, keys ? "CurveZMQ" : "plain TCP", o.placement);
    code = follower.run(stop);
  } catch (const std::exception &e) {
    spdlog::error("follow: {}", e.what());
    code = 1;
  }
  lf_client_close(client);
  return code;
}

}  // namespace loraflip::relay
