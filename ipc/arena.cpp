#include "ipc/arena.hpp"

#include <cerrno>
#include <cstring>
#include <new>
#include <unistd.h>

#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>

#include "ipc/proc.hpp"

namespace bip = boost::interprocess;

namespace loraflip::ipc {

struct Segment::Impl {
  bip::shared_memory_object object;
  bip::mapped_region region;
};

namespace {

Error os_error(const std::string &what, const std::string &name, int native) {
  int code = LF_E_SYSTEM;
  if (native == ENOENT) code = LF_E_NOT_FOUND;
  if (native == EACCES || native == EPERM) code = LF_E_PERMISSION;
  return make_error(code, what + " shared memory '/" + name + "': " + std::strerror(native));
}

}  // namespace

Segment::Segment(std::unique_ptr<Impl> impl, std::string name)
    : impl_(std::move(impl)),
      base_(static_cast<std::byte *>(impl_->region.get_address())),
      size_(impl_->region.get_size()),
      name_(std::move(name)) {}

Segment::Segment(Segment &&) noexcept = default;
Segment &Segment::operator=(Segment &&) noexcept = default;
Segment::~Segment() = default;

Result<Segment> Segment::create(const std::string &name, uint64_t bytes, unsigned mode, int gid) {
  try {
    bip::permissions perm(mode);
    auto impl = std::make_unique<Impl>();
    impl->object = bip::shared_memory_object(bip::create_only, name.c_str(), bip::read_write, perm);
    if (gid >= 0 && ::fchown(impl->object.get_mapping_handle().handle, static_cast<uid_t>(-1),
                             static_cast<gid_t>(gid)) != 0) {
      int err = errno;
      bip::shared_memory_object::remove(name.c_str());
      return os_error("cannot give the group to", name, err);
    }
    impl->object.truncate(static_cast<bip::offset_t>(bytes));
    impl->region = bip::mapped_region(impl->object, bip::read_write);
    return Segment(std::move(impl), name);
  } catch (const bip::interprocess_exception &e) {
    return os_error("cannot create", name, e.get_native_error());
  } catch (const std::bad_alloc &) {
    return make_error(LF_E_SYSTEM, "out of memory creating '" + name + "'");
  }
}

Result<Segment> Segment::open(const std::string &name, Access access) {
  try {
    const bip::mode_t mode = access == Access::kReadWrite ? bip::read_write : bip::read_only;
    auto impl = std::make_unique<Impl>();
    impl->object = bip::shared_memory_object(bip::open_only, name.c_str(), mode);
    bip::offset_t size = 0;
    if (!impl->object.get_size(size) || size <= 0)
      return make_error(LF_E_LAYOUT_MISMATCH, "shared memory '/" + name + "' is empty");
    impl->region = bip::mapped_region(impl->object, mode);
    return Segment(std::move(impl), name);
  } catch (const bip::interprocess_exception &e) {
    return os_error("cannot open", name, e.get_native_error());
  } catch (const std::bad_alloc &) {
    return make_error(LF_E_SYSTEM, "out of memory mapping '" + name + "'");
  }
}

void Segment::remove(const std::string &name) { bip::shared_memory_object::remove(name.c_str()); }

bool Segment::exists(const std::string &name) {
  try {
    bip::shared_memory_object probe(bip::open_only, name.c_str(), bip::read_only);
    return true;
  } catch (const bip::interprocess_exception &) {
    return false;
  }
}

std::string control_segment_name(const std::string &instance) {
  return "loraflip." + instance + ".control";
}
std::string data_segment_name(const std::string &instance) {
  return "loraflip." + instance + ".data";
}

Status check_header(const std::byte *base, uint64_t size) {
  if (size < sizeof(ArenaHeader))
    return make_error(LF_E_LAYOUT_MISMATCH, "the control segment is smaller than a header");
  const auto &h = *reinterpret_cast<const ArenaHeader *>(base);
  if (h.magic != kArenaMagic)
    return make_error(LF_E_LAYOUT_MISMATCH, "the control segment is not a loraflip arena "
                                            "(bad magic number)");
  if (h.format_version != kFormatVersion)
    return make_error(LF_E_LAYOUT_MISMATCH,
                      "the arena has format " + std::to_string(h.format_version) +
                          " but this build reads format " + std::to_string(kFormatVersion) +
                          "; stop every client, remove the arena (loraflipd --remove-arena) and "
                          "restart the daemon");
  if (h.layout_hash != layout_hash() || h.header_bytes != sizeof(ArenaHeader))
    return make_error(LF_E_LAYOUT_MISMATCH,
                      "the arena was made by a build with another memory layout (layout hash " +
                          std::to_string(h.layout_hash) + ", this build " +
                          std::to_string(layout_hash()) +
                          "); use matching builds, or remove the arena and restart the daemon");
  auto fits = [size](uint64_t offset, uint64_t bytes) {
    return offset <= size && bytes <= size - offset;
  };
  if (h.control_bytes != size ||
      !fits(h.adapters_offset, uint64_t{h.max_adapters} * sizeof(AdapterRecord)) ||
      !fits(h.readers_offset, uint64_t{h.max_readers} * sizeof(ReaderEntry)) ||
      !fits(h.pool_offset, h.pool_bytes) || h.max_adapters > kMaxAdapters ||
      std::memchr(h.data_segment, '\0', sizeof h.data_segment) == nullptr)
    return make_error(LF_E_LAYOUT_MISMATCH, "the arena header names regions outside the segment");
  return {};
}

namespace {

struct ControlPlan {
  uint64_t adapters_offset, readers_offset, pool_offset, total;
};

ControlPlan plan_control(const ArenaConfig &c) {
  ControlPlan p{};
  p.adapters_offset = align_up(sizeof(ArenaHeader), 128);
  p.readers_offset =
      align_up(p.adapters_offset + uint64_t{c.max_adapters} * sizeof(AdapterRecord), 128);
  p.pool_offset = align_up(p.readers_offset + uint64_t{c.max_readers} * sizeof(ReaderEntry), 128);
  p.total = align_up(p.pool_offset + c.pool_bytes, kSlotAlign);
  return p;
}

}  // namespace

Result<Arena> Arena::create(const ArenaConfig &config) {
  if (config.max_adapters == 0 || config.max_adapters > kMaxAdapters)
    return make_error(LF_E_INVALID_ARGUMENT, "max adapters must be 1..65535");
  if (config.max_readers == 0)
    return make_error(LF_E_INVALID_ARGUMENT, "max readers must be at least 1");
  if (config.data_bytes < kSlotAlign)
    return make_error(LF_E_INVALID_ARGUMENT, "the data arena must hold at least one page");
  const std::string cname = control_segment_name(config.instance);
  const std::string dname = data_segment_name(config.instance);
  if (dname.size() >= sizeof(ArenaHeader::data_segment))
    return make_error(LF_E_TOO_LARGE, "instance name too long");
  const ControlPlan plan = plan_control(config);

  // Data first: the control segment is the one clients look for, so it appears last.
  Segment::remove(dname);
  Result<Segment> data = Segment::create(dname, align_up(config.data_bytes, kSlotAlign),
                                         config.mode, config.gid);
  if (!data) return data.error();
  Result<Segment> control = Segment::create(cname, plan.total, config.mode, config.gid);
  if (!control) {
    Segment::remove(dname);
    return control.error();
  }
  // ftruncate gives zero-filled pages, so every atomic starts at 0 and every record is kFree.
  auto *h = new (control->base()) ArenaHeader{};
  h->magic = kArenaMagic;
  h->format_version = kFormatVersion;
  h->header_bytes = sizeof(ArenaHeader);
  h->layout_hash = layout_hash();
  h->control_bytes = control->size();
  h->data_bytes = data->size();
  h->max_adapters = config.max_adapters;
  h->max_readers = config.max_readers;
  h->adapters_offset = plan.adapters_offset;
  h->readers_offset = plan.readers_offset;
  h->pool_offset = plan.pool_offset;
  h->pool_bytes = control->size() - plan.pool_offset;
  h->default_history = config.default_history;
  std::strncpy(h->data_segment, dname.c_str(), sizeof h->data_segment - 1);
  h->created_unix_ns = unix_now_ns();
  for (uint32_t i = 0; i < config.max_adapters; ++i)
    new (control->base() + plan.adapters_offset + i * sizeof(AdapterRecord)) AdapterRecord{};
  for (uint32_t i = 0; i < config.max_readers; ++i)
    new (control->base() + plan.readers_offset + i * sizeof(ReaderEntry)) ReaderEntry{};
  h->ready.store(1, std::memory_order_seq_cst);
  return Arena(std::move(control).value(), std::move(data).value());
}

Result<Arena> Arena::open_or_create(const ArenaConfig &config, bool *created) {
  const std::string cname = control_segment_name(config.instance);
  Result<Segment> control = Segment::open(cname, Segment::Access::kReadWrite);
  if (!control && control.error().code == LF_E_LAYOUT_MISMATCH) {
    // Empty: the previous daemon died between creating the segment and sizing it.
    Segment::remove(cname);
  } else if (!control && control.error().code != LF_E_NOT_FOUND) {
    return control.error();
  }
  if (control) {
    const auto *h = reinterpret_cast<const ArenaHeader *>(control->base());
    // A daemon killed while creating the arena leaves a segment that is empty, all zeros, or
    // complete but not marked ready. No client can have attached to any of those.
    const bool half_made = control->size() < sizeof(ArenaHeader) ||
                           ((h->magic == kArenaMagic || h->magic == 0) &&
                            h->ready.load(std::memory_order_seq_cst) == 0);
    if (!half_made) {
      if (Status s = check_header(control->base(), control->size()); !s) return s.error();
      Result<Segment> data =
          Segment::open(h->data_segment, Segment::Access::kReadWrite);
      if (!data) return data.error();
      if (data->size() != h->data_bytes)
        return make_error(LF_E_LAYOUT_MISMATCH, "the data segment has " +
                                                    std::to_string(data->size()) +
                                                    " bytes, the header says " +
                                                    std::to_string(h->data_bytes));
      *created = false;
      return Arena(std::move(control).value(), std::move(data).value());
    }
    // The previous daemon died while creating the arena: nobody can have used it.
    Segment::remove(cname);
  }
  Result<Arena> arena = create(config);
  if (arena) *created = true;
  return arena;
}

Result<Arena> Arena::attach(const std::string &control_name, Segment::Access data_access) {
  Result<Segment> control = Segment::open(control_name, Segment::Access::kReadWrite);
  if (!control) return control.error();
  if (Status s = check_header(control->base(), control->size()); !s) return s.error();
  const auto *h = reinterpret_cast<const ArenaHeader *>(control->base());
  if (h->ready.load(std::memory_order_seq_cst) == 0)
    return make_error(LF_E_CONNECTION, "the arena is still being created");
  Result<Segment> data = Segment::open(h->data_segment, data_access);
  if (!data) return data.error();
  if (data->size() != h->data_bytes)
    return make_error(LF_E_LAYOUT_MISMATCH, "the data segment size does not match the header");
  return Arena(std::move(control).value(), std::move(data).value());
}

void Arena::remove(const std::string &instance) {
  Segment::remove(control_segment_name(instance));
  Segment::remove(data_segment_name(instance));
}

}  // namespace loraflip::ipc
