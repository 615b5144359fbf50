"""ctypes bindings of libloraflip: one binding per function of include/loraflip.h.

Each binding carries its C declaration in the comment above it, and sets argtypes and restype,
so that a wrong argument is a Python TypeError rather than a corrupted call. Nothing here
raises LoraflipError; its callers (_client.py, _reading.py, ...) turn statuses into exceptions.

Library search order (the first that loads wins):
  1. $LORAFLIP_LIBRARY (a file path)
  2. next to the package: the package folder itself, then the libdir that meson recorded in
     _libdir.py when it installed the package beside the library
  3. the meson build folders of a checkout: <repo>/build/client/c, <repo>/builddir/client/c
  4. ctypes.util.find_library("loraflip"), then the bare soname (the system loader's paths)
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

_SONAMES = ("libloraflip.so", "libloraflip.so.0")

# Status codes (loraflip.h, "Status codes"): stable, never renumbered.
LF_OK = 0
LF_E_INVALID_ARGUMENT = -1
LF_E_NOT_FOUND = -2
LF_E_EXISTS = -3
LF_E_ARENA_FULL = -4
LF_E_NO_FREE_SLOT = -5
LF_E_TABLE_FULL = -6
LF_E_PROTOCOL = -7
LF_E_PROTOCOL_VERSION = -8
LF_E_LAYOUT_MISMATCH = -9
LF_E_TIMEOUT = -10
LF_E_CONNECTION = -11
LF_E_LEASE = -12
LF_E_VALIDATION = -13
LF_E_NO_VERSION = -14
LF_E_TOO_LARGE = -15
LF_E_SYSTEM = -16
LF_E_INTERNAL = -17
LF_E_PINS_FULL = -18
LF_E_STALE = -19
LF_E_UNSUPPORTED = -20
LF_E_PERMISSION = -21
LF_E_UNKNOWN_OP = -22
LF_E_DEVICE = -23

LF_DTYPE_F32 = 1
LF_DTYPE_F16 = 2
LF_DTYPE_BF16 = 3
LF_DTYPE_F64 = 4
LF_DTYPE_I8 = 5
LF_DTYPE_U8 = 6
LF_DTYPE_I32 = 7
LF_DTYPE_I64 = 8

LF_MAX_DIMS = 6
LF_MAX_ADAPTER_NAME = 127
LF_MAX_TENSOR_NAME = 255
LF_MAX_PINS = 14

LF_COMMIT_CHECK_FINITE = 1
LF_COMMIT_CHECKSUM = 2


class LibraryNotFound(ImportError):
    """libloraflip could not be loaded; the message lists every place that was tried."""


def candidates(env_var: str, sonames: tuple[str, ...], build_subdir: str, find_name: str,
               after_env: list[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """(where, path) pairs in search order for one of the project's libraries: $env_var, then
    `after_env`, next to the package, the installed libdir, the checkout's meson build folders
    (<build>/<build_subdir>), ctypes.util.find_library(find_name), the system loader."""
    out: list[tuple[str, str]] = []
    env = os.environ.get(env_var)
    if env:
        out.append(("$" + env_var, env))
    out.extend(after_env)
    here = Path(__file__).resolve().parent
    # Installed by meson: _libdir.py (written at install time) names the libraries' folder.
    try:
        from ._libdir import LIBDIR  # type: ignore[import-not-found]
    except ImportError:
        LIBDIR = None
    for so in sonames:
        out.append(("next to the package", str(here / so)))
        if LIBDIR:
            out.append(("installed libdir", str(Path(LIBDIR) / so)))
    # A checkout: client/python/loraflip/, so the repository root is three folders up.
    repo = here.parents[2]
    for build in ("build", "builddir"):
        for so in sonames:
            out.append(("meson build folder", str(repo / build / build_subdir / so)))
    found = ctypes.util.find_library(find_name)
    if found:
        out.append(("ctypes.util.find_library", found))
    for so in sonames:
        out.append(("system loader", so))
    seen: set[str] = set()
    return [(w, p) for w, p in out if not (p in seen or seen.add(p))]


def load_first(what: str, env_var: str, found_in: list[tuple[str, str]]) -> tuple[ctypes.CDLL, str]:
    """Loads the first of `found_in` that loads; else LibraryNotFound listing every try."""
    tried = []
    for where, p in found_in:
        if os.sep in p and not os.path.exists(p):
            tried.append(f"  {p} ({where}): no such file")
            continue
        try:
            return ctypes.CDLL(p), p
        except OSError as e:
            tried.append(f"  {p} ({where}): {e}")
    raise LibraryNotFound(
        f"cannot load {what}. Build it (meson setup build && ninja -C build), install it, "
        f"or set {env_var} to the path of {what}.so. Tried:\n" + "\n".join(tried))


lib, path = load_first("libloraflip", "LORAFLIP_LIBRARY",
                       candidates("LORAFLIP_LIBRARY", _SONAMES, "client/c", "loraflip"))


LF_EVENT_COMMIT = 1
LF_EVENT_ROLLBACK = 2
LF_EVENT_DROP = 3


class lf_event_t(ctypes.Structure):
    # typedef struct lf_event { char adapter[LF_MAX_ADAPTER_NAME + 1]; int32_t kind;
    #   uint64_t version, previous, unix_ns, seq, missed; uint64_t reserved[4]; } lf_event_t;
    _fields_ = [
        ("adapter", ctypes.c_char * (LF_MAX_ADAPTER_NAME + 1)),
        ("kind", ctypes.c_int32),
        ("version", ctypes.c_uint64),
        ("previous", ctypes.c_uint64),
        ("unix_ns", ctypes.c_uint64),
        ("seq", ctypes.c_uint64),
        ("missed", ctypes.c_uint64),
        ("reserved", ctypes.c_uint64 * 4),
    ]


class lf_tensor_view_t(ctypes.Structure):
    # typedef struct lf_tensor_view { void *data; const char *name; int32_t dtype; int32_t ndim;
    #   int64_t shape[LF_MAX_DIMS]; uint64_t nbytes; uint64_t version; int32_t device;
    #   int32_t reserved; } lf_tensor_view_t;
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char_p),
        ("dtype", ctypes.c_int32),
        ("ndim", ctypes.c_int32),
        ("shape", ctypes.c_int64 * LF_MAX_DIMS),
        ("nbytes", ctypes.c_uint64),
        ("version", ctypes.c_uint64),
        ("device", ctypes.c_int32),
        ("reserved", ctypes.c_int32),
    ]


# Opaque handles: pointers we never look into.
lf_client_p = ctypes.c_void_p
lf_spec_p = ctypes.c_void_p
lf_writer_p = ctypes.c_void_p
lf_reader_p = ctypes.c_void_p
lf_pin_p = ctypes.c_void_p
lf_events_p = ctypes.c_void_p
lf_adapter_ref_t = ctypes.c_uint64

_c_int = ctypes.c_int
_c_char_p = ctypes.c_char_p
_c_size_t = ctypes.c_size_t
_c_uint64 = ctypes.c_uint64
_P = ctypes.POINTER


def _bind(name, restype, argtypes):
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = argtypes
    return fn


# const char *lf_strerror(int status);
lf_strerror = _bind("lf_strerror", _c_char_p, [_c_int])
# size_t lf_dtype_size(int dtype);
lf_dtype_size = _bind("lf_dtype_size", _c_size_t, [_c_int])
# const char *lf_dtype_name(int dtype);
lf_dtype_name = _bind("lf_dtype_name", _c_char_p, [_c_int])

# int lf_client_open(const char *runtime_dir, int timeout_ms, lf_client_t **out);
lf_client_open = _bind("lf_client_open", _c_int, [_c_char_p, _c_int, _P(lf_client_p)])
# void lf_client_close(lf_client_t *client);
lf_client_close = _bind("lf_client_close", None, [lf_client_p])
# const char *lf_client_last_error(const lf_client_t *client);
lf_client_last_error = _bind("lf_client_last_error", _c_char_p, [lf_client_p])
# const char *lf_last_error_message(void);
lf_last_error_message = _bind("lf_last_error_message", _c_char_p, [])

# int lf_spec_new(lf_spec_t **out);
lf_spec_new = _bind("lf_spec_new", _c_int, [_P(lf_spec_p)])
# void lf_spec_free(lf_spec_t *spec);
lf_spec_free = _bind("lf_spec_free", None, [lf_spec_p])
# int lf_spec_add_tensor(lf_spec_t *spec, const char *name, int dtype, int ndim,
#                        const int64_t *shape);
lf_spec_add_tensor = _bind("lf_spec_add_tensor", _c_int,
                           [lf_spec_p, _c_char_p, _c_int, _c_int, _P(ctypes.c_int64)])
# int lf_spec_set_lora(lf_spec_t *spec, int rank, double alpha, const char *target_modules,
#                      int use_rslora);
lf_spec_set_lora = _bind("lf_spec_set_lora", _c_int,
                         [lf_spec_p, _c_int, ctypes.c_double, _c_char_p, _c_int])
# int lf_spec_set_metadata(lf_spec_t *spec, const char *metadata);
lf_spec_set_metadata = _bind("lf_spec_set_metadata", _c_int, [lf_spec_p, _c_char_p])
# int lf_spec_set_slots(lf_spec_t *spec, int slots, int history);
lf_spec_set_slots = _bind("lf_spec_set_slots", _c_int, [lf_spec_p, _c_int, _c_int])
# int lf_spec_set_placement(lf_spec_t *spec, const char *placement);
lf_spec_set_placement = _bind("lf_spec_set_placement", _c_int, [lf_spec_p, _c_char_p])

# int lf_client_create_adapter(lf_client_t *client, const char *name, const lf_spec_t *spec);
lf_client_create_adapter = _bind("lf_client_create_adapter", _c_int,
                                 [lf_client_p, _c_char_p, lf_spec_p])
# int lf_client_drop_adapter(lf_client_t *client, const char *name);
lf_client_drop_adapter = _bind("lf_client_drop_adapter", _c_int, [lf_client_p, _c_char_p])
# int lf_client_rollback(lf_client_t *client, const char *name, uint64_t version);
lf_client_rollback = _bind("lf_client_rollback", _c_int, [lf_client_p, _c_char_p, _c_uint64])
# int lf_client_list(lf_client_t *client, char **json_out);
lf_client_list = _bind("lf_client_list", _c_int, [lf_client_p, _P(ctypes.c_void_p)])
# int lf_client_info(lf_client_t *client, const char *name, char **json_out);
lf_client_info = _bind("lf_client_info", _c_int, [lf_client_p, _c_char_p, _P(ctypes.c_void_p)])
# int lf_client_stats(lf_client_t *client, char **json_out);
lf_client_stats = _bind("lf_client_stats", _c_int, [lf_client_p, _P(ctypes.c_void_p)])
# void lf_free(void *p);
lf_free = _bind("lf_free", None, [ctypes.c_void_p])

# int lf_client_begin_write(lf_client_t *client, const char *name, int lease_ms,
#                           lf_writer_t **out);
lf_client_begin_write = _bind("lf_client_begin_write", _c_int,
                              [lf_client_p, _c_char_p, _c_int, _P(lf_writer_p)])
# size_t lf_writer_tensor_count(const lf_writer_t *writer);
lf_writer_tensor_count = _bind("lf_writer_tensor_count", _c_size_t, [lf_writer_p])
# int lf_writer_tensor(const lf_writer_t *writer, size_t index, lf_tensor_view_t *out);
lf_writer_tensor = _bind("lf_writer_tensor", _c_int,
                         [lf_writer_p, _c_size_t, _P(lf_tensor_view_t)])
# int lf_writer_tensor_by_name(const lf_writer_t *writer, const char *name,
#                              lf_tensor_view_t *out);
lf_writer_tensor_by_name = _bind("lf_writer_tensor_by_name", _c_int,
                                 [lf_writer_p, _c_char_p, _P(lf_tensor_view_t)])
# int lf_writer_copy_in(lf_writer_t *writer, size_t index, const void *src, size_t nbytes);
lf_writer_copy_in = _bind("lf_writer_copy_in", _c_int,
                          [lf_writer_p, _c_size_t, ctypes.c_void_p, _c_size_t])
# int lf_writer_copy_in_all(lf_writer_t *writer, const void *const *srcs, const size_t *nbytes);
lf_writer_copy_in_all = _bind("lf_writer_copy_in_all", _c_int,
                              [lf_writer_p, ctypes.POINTER(ctypes.c_void_p),
                               ctypes.POINTER(_c_size_t)])
# size_t lf_writer_slot_bytes(const lf_writer_t *writer);
lf_writer_slot_bytes = _bind("lf_writer_slot_bytes", _c_size_t, [lf_writer_p])
# int lf_writer_copy_in_slot(lf_writer_t *writer, const void *src, size_t nbytes);
lf_writer_copy_in_slot = _bind("lf_writer_copy_in_slot", _c_int,
                               [lf_writer_p, ctypes.c_void_p, _c_size_t])
# int lf_writer_copy_in_async(lf_writer_t *writer, size_t index, const void *src,
#                             size_t nbytes, int src_device, void *stream);
lf_writer_copy_in_async = _bind("lf_writer_copy_in_async", _c_int,
                                [lf_writer_p, _c_size_t, ctypes.c_void_p, _c_size_t, _c_int,
                                 ctypes.c_void_p])
# int lf_writer_commit_after(lf_writer_t *writer, int device, void *stream);
lf_writer_commit_after = _bind("lf_writer_commit_after", _c_int,
                               [lf_writer_p, _c_int, ctypes.c_void_p])
# int lf_writer_commit(lf_writer_t *writer, unsigned flags, uint64_t *version_out);
lf_writer_commit = _bind("lf_writer_commit", _c_int, [lf_writer_p, ctypes.c_uint, _P(_c_uint64)])
# int lf_writer_commit_as(lf_writer_t *writer, uint64_t version, unsigned flags,
#                         uint64_t checksum, uint64_t *version_out);
lf_writer_commit_as = _bind("lf_writer_commit_as", _c_int,
                            [lf_writer_p, _c_uint64, ctypes.c_uint, _c_uint64, _P(_c_uint64)])
# int lf_writer_abort(lf_writer_t *writer);
lf_writer_abort = _bind("lf_writer_abort", _c_int, [lf_writer_p])

# int lf_reader_open(const char *runtime_dir, lf_reader_t **out);
lf_reader_open = _bind("lf_reader_open", _c_int, [_c_char_p, _P(lf_reader_p)])
# void lf_reader_close(lf_reader_t *reader);
lf_reader_close = _bind("lf_reader_close", None, [lf_reader_p])
# const char *lf_reader_last_error(const lf_reader_t *reader);
lf_reader_last_error = _bind("lf_reader_last_error", _c_char_p, [lf_reader_p])
# int lf_reader_find(lf_reader_t *reader, const char *name, lf_adapter_ref_t *out);
lf_reader_find = _bind("lf_reader_find", _c_int, [lf_reader_p, _c_char_p, _P(lf_adapter_ref_t)])
# int lf_reader_acquire(lf_reader_t *reader, lf_adapter_ref_t ref, uint64_t min_version,
#                       lf_pin_t **out);
lf_reader_acquire = _bind("lf_reader_acquire", _c_int,
                          [lf_reader_p, lf_adapter_ref_t, _c_uint64, _P(lf_pin_p)])
# int lf_reader_acquire_version(lf_reader_t *reader, lf_adapter_ref_t ref, uint64_t version,
#                               lf_pin_t **out);
lf_reader_acquire_version = _bind("lf_reader_acquire_version", _c_int,
                                  [lf_reader_p, lf_adapter_ref_t, _c_uint64, _P(lf_pin_p)])
# void lf_pin_release(lf_pin_t *pin);
lf_pin_release = _bind("lf_pin_release", None, [lf_pin_p])
# uint64_t lf_pin_version(const lf_pin_t *pin);
lf_pin_version = _bind("lf_pin_version", _c_uint64, [lf_pin_p])
# size_t lf_pin_tensor_count(const lf_pin_t *pin);
lf_pin_tensor_count = _bind("lf_pin_tensor_count", _c_size_t, [lf_pin_p])
# int lf_pin_tensor(const lf_pin_t *pin, size_t index, lf_tensor_view_t *out);
lf_pin_tensor = _bind("lf_pin_tensor", _c_int, [lf_pin_p, _c_size_t, _P(lf_tensor_view_t)])
# int lf_pin_tensor_by_name(const lf_pin_t *pin, const char *name, lf_tensor_view_t *out);
lf_pin_tensor_by_name = _bind("lf_pin_tensor_by_name", _c_int,
                              [lf_pin_p, _c_char_p, _P(lf_tensor_view_t)])
# size_t lf_pin_slot_bytes(const lf_pin_t *pin);
lf_pin_slot_bytes = _bind("lf_pin_slot_bytes", _c_size_t, [lf_pin_p])
# int lf_pin_copy_slot(const lf_pin_t *pin, void *dst, size_t nbytes);
lf_pin_copy_slot = _bind("lf_pin_copy_slot", _c_int, [lf_pin_p, ctypes.c_void_p, _c_size_t])
# int lf_pin_tensor_on_device(const lf_pin_t *pin, size_t index, int device,
#                             lf_tensor_view_t *out);
lf_pin_tensor_on_device = _bind("lf_pin_tensor_on_device", _c_int,
                                [lf_pin_p, _c_size_t, _c_int, _P(lf_tensor_view_t)])
# int lf_reader_active_version(lf_reader_t *reader, lf_adapter_ref_t ref, uint64_t *out);
lf_reader_active_version = _bind("lf_reader_active_version", _c_int,
                                 [lf_reader_p, lf_adapter_ref_t, _P(_c_uint64)])
# int lf_reader_wait(lf_reader_t *reader, lf_adapter_ref_t ref, uint64_t version,
#                    int timeout_ms, uint64_t *version_out);
lf_reader_wait = _bind("lf_reader_wait", _c_int,
                       [lf_reader_p, lf_adapter_ref_t, _c_uint64, _c_int, _P(_c_uint64)])

# int lf_pin_release_after(lf_pin_t *pin, int device, void *stream);
lf_pin_release_after = _bind("lf_pin_release_after", _c_int, [lf_pin_p, _c_int, ctypes.c_void_p])
# int lf_reader_release_completed(lf_reader_t *reader, size_t *pending_out);
lf_reader_release_completed = _bind("lf_reader_release_completed", _c_int,
                                    [lf_reader_p, _P(_c_size_t)])

# int lf_events_open(const char *runtime_dir, const char *adapter, lf_events_t **out);
lf_events_open = _bind("lf_events_open", _c_int, [_c_char_p, _c_char_p, _P(lf_events_p)])
# void lf_events_close(lf_events_t *events);
lf_events_close = _bind("lf_events_close", None, [lf_events_p])
# int lf_events_next_event(lf_events_t *events, int timeout_ms, lf_event_t *out);
lf_events_next_event = _bind("lf_events_next_event", _c_int, [lf_events_p, _c_int, _P(lf_event_t)])

if sys.byteorder != "little":  # the arena stores tensors little-endian, as safetensors does
    raise ImportError("loraflip supports little-endian machines only")
