// The shared-memory arena: two POSIX segments (control and data), created by the daemon and
// attached by clients. Creation, attachment and the header check that refuses an arena made
// by a build with another layout.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "ipc/layout.hpp"
#include "ipc/result.hpp"

namespace loraflip::ipc {

// One mapped POSIX shared-memory object. Move-only; unmaps on destruction (the object itself
// stays until remove()).
class Segment {
 public:
  enum class Access { kReadOnly, kReadWrite };

  // Creates `name` (which must not exist) with exactly `mode` (not masked by the umask) and,
  // when gid >= 0, that group; sizes it to `bytes` and maps it read-write.
  static Result<Segment> create(const std::string &name, uint64_t bytes, unsigned mode, int gid);
  static Result<Segment> open(const std::string &name, Access access);
  // Removes the name; processes that mapped it keep their mapping.
  static void remove(const std::string &name);
  static bool exists(const std::string &name);

  Segment(Segment &&) noexcept;
  Segment &operator=(Segment &&) noexcept;
  ~Segment();

  std::byte *base() const { return base_; }
  uint64_t size() const { return size_; }
  const std::string &name() const { return name_; }

 private:
  struct Impl;
  Segment(std::unique_ptr<Impl> impl, std::string name);
  std::unique_ptr<Impl> impl_;
  std::byte *base_ = nullptr;
  uint64_t size_ = 0;
  std::string name_;
};

struct ArenaConfig {
  std::string instance = "default";
  uint64_t data_bytes = uint64_t{1} << 30;
  uint64_t pool_bytes = uint64_t{16} << 20;
  uint32_t max_adapters = 64;
  uint32_t max_readers = 256;
  uint32_t default_history = 2;
  unsigned mode = 0660;
  int gid = -1;  // -1: the creator's group
};

// Shared-memory names of an instance's segments (Boost adds the leading '/').
std::string control_segment_name(const std::string &instance);
std::string data_segment_name(const std::string &instance);

// Checks the header of a mapped control segment: magic, format version, layout hash, and that
// every region it names fits in `size`. The message says what differs and what to do.
Status check_header(const std::byte *base, uint64_t size);

class Arena {
 public:
  // Daemon side. Attaches to an existing, ready arena of `config.instance` (after a restart,
  // even after kill -9) or creates a new one. A mismatched arena is refused, never overwritten.
  // *created says which happened.
  static Result<Arena> open_or_create(const ArenaConfig &config, bool *created);
  // Client side: maps the control segment read-write (pin cells) and the data segment
  // read-only or read-write (writers).
  static Result<Arena> attach(const std::string &control_name, Segment::Access data_access);
  // Removes both segments of an instance.
  static void remove(const std::string &instance);

  ArenaHeader &header() const { return *reinterpret_cast<ArenaHeader *>(control_.base()); }
  uint32_t max_adapters() const { return header().max_adapters; }
  uint32_t max_readers() const { return header().max_readers; }
  AdapterRecord &adapter(uint32_t index) const {
    return reinterpret_cast<AdapterRecord *>(control_.base() + header().adapters_offset)[index];
  }
  ReaderEntry &reader(uint32_t index) const {
    return reinterpret_cast<ReaderEntry *>(control_.base() + header().readers_offset)[index];
  }
  std::byte *pool_at(uint64_t offset) const {
    return control_.base() + header().pool_offset + offset;
  }
  std::byte *data_at(uint64_t offset) const { return data_.base() + offset; }
  const TensorDesc *tensors(const AdapterRecord &record) const {
    return reinterpret_cast<const TensorDesc *>(pool_at(record.tensors_offset));
  }
  const char *pool_string(uint64_t offset) const {
    return offset == 0 ? "" : reinterpret_cast<const char *>(pool_at(offset));
  }
  uint64_t data_bytes() const { return data_.size(); }
  const Segment &control() const { return control_; }
  const Segment &data() const { return data_; }

 private:
  Arena(Segment control, Segment data) : control_(std::move(control)), data_(std::move(data)) {}
  static Result<Arena> create(const ArenaConfig &config);
  Segment control_;
  Segment data_;
};

}  // namespace loraflip::ipc
