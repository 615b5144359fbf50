/*
 * loraflip.h: the public C API of loraflip.
 *
 * Three handles:
 *   lf_client_t  a control connection to one loraflipd instance (create, drop, list, info,
 *                rollback, stats, and writes). Talks to the daemon over ZeroMQ.
 *   lf_writer_t  one write in progress: a slot the daemon lent to this process. Tensors are
 *                written in place, then committed (validated, versioned, flipped) or aborted.
 *   lf_reader_t  one entry of the daemon's reader table. acquire/release touch shared memory
 *                only: no system call, no lock, no message to the daemon.
 *
 * Conventions (the same for every function):
 *   - Fallible calls return an int status: LF_OK (0) or a negative LF_E_* code. Codes are
 *     fixed forever and never reused. lf_strerror() never returns NULL.
 *   - A getter that cannot fail returns its value instead of a status (lf_writer_tensor_count,
 *     lf_writer_slot_bytes, lf_pin_version, lf_pin_tensor_count, lf_pin_slot_bytes); a NULL
 *     handle gives 0.
 *   - Outputs come last and are left untouched when the call fails.
 *   - lf_<x>_close() accepts NULL.
 *   - No function throws, aborts or exits the caller's process.
 *   - lf_client_last_error() gives the detailed message of the last failed call on that
 *     client (readers: lf_reader_last_error()).
 *
 * Threads: an lf_client_t may be used from several threads (calls are serialized inside).
 * An lf_writer_t and an lf_reader_t belong to one thread at a time: give each generation
 * thread its own reader. Readers never block each other.
 */
#ifndef LORAFLIP_H
#define LORAFLIP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(LORAFLIP_BUILDING_LIBRARY)
#define LF_API __attribute__((visibility("default")))
#else
#define LF_API
#endif

/* Wire protocol version; hello fails with LF_E_PROTOCOL_VERSION when the daemon disagrees. */
#define LF_PROTOCOL_VERSION 2

/* ---- Status codes (stable: never renumbered, never reused) ---- */
#define LF_OK 0
#define LF_E_INVALID_ARGUMENT -1  /* a bad name, shape, dtype, flag or pointer */
#define LF_E_NOT_FOUND -2         /* no adapter, tensor or version by that name or number */
#define LF_E_EXISTS -3            /* an adapter of that name exists already */
#define LF_E_ARENA_FULL -4        /* not enough room left in the shared-memory arena */
#define LF_E_NO_FREE_SLOT -5      /* every slot is active, kept, pinned or being written */
#define LF_E_TABLE_FULL -6        /* the adapter table or the reader table is full */
#define LF_E_PROTOCOL -7          /* a malformed control message */
#define LF_E_PROTOCOL_VERSION -8  /* client and daemon speak different protocol versions */
#define LF_E_LAYOUT_MISMATCH -9   /* the arena was made by a build with another layout */
#define LF_E_TIMEOUT -10          /* nothing happened before the deadline */
#define LF_E_CONNECTION -11       /* the daemon cannot be reached or did not answer */
#define LF_E_LEASE -12            /* the write lease is unknown, expired or already ended */
#define LF_E_VALIDATION -13       /* the written tensors failed a commit check */
#define LF_E_NO_VERSION -14       /* no committed version satisfies the request */
#define LF_E_TOO_LARGE -15        /* a message, name, shape or size is over its limit */
#define LF_E_SYSTEM -16           /* an operating-system call failed */
#define LF_E_INTERNAL -17         /* a bug: please report it */
#define LF_E_PINS_FULL -18        /* this reader already holds LF_MAX_PINS pins */
#define LF_E_STALE -19            /* the adapter was dropped (or dropped and re-created) */
#define LF_E_UNSUPPORTED -20      /* not available in this build or on this machine */
#define LF_E_PERMISSION -21       /* the operating system refused access */
#define LF_E_UNKNOWN_OP -22       /* the daemon does not know this operation */
#define LF_E_DEVICE -23           /* the GPU's context failed for good (a sticky CUDA error):
                                     nothing more runs on it in this process; restart it */

/* Never NULL; a static string. Unknown codes give "unknown error". */
LF_API const char *lf_strerror(int status);

/* ---- Tensors ---- */
#define LF_DTYPE_F32 1
#define LF_DTYPE_F16 2
#define LF_DTYPE_BF16 3
#define LF_DTYPE_F64 4
#define LF_DTYPE_I8 5
#define LF_DTYPE_U8 6
#define LF_DTYPE_I32 7
#define LF_DTYPE_I64 8

#define LF_MAX_DIMS 6
#define LF_MAX_ADAPTER_NAME 127 /* bytes; [A-Za-z0-9._:-], starting with a letter or digit */
#define LF_MAX_TENSOR_NAME 255  /* bytes; printable ASCII without spaces or quotes */
#define LF_MAX_PINS 14          /* pins one reader can hold at once */

/* Size in bytes of one element, or 0 for an unknown dtype. */
LF_API size_t lf_dtype_size(int dtype);
/* "f32", "f16", "bf16", ...; "unknown" for an unknown dtype. Never NULL. */
LF_API const char *lf_dtype_name(int dtype);

/* A view of one tensor of a slot. Filled by lf_writer_tensor and lf_pin_tensor.
 * Fields are appended only, never reordered. */
typedef struct lf_tensor_view {
  void *data;         /* host address (readers: mapped read-only, never write through it),
                         or a device address in this process when device >= 0 */
  const char *name;   /* NUL-terminated; lives as long as the handle that filled the view */
  int32_t dtype;      /* LF_DTYPE_* */
  int32_t ndim;
  int64_t shape[LF_MAX_DIMS];
  uint64_t nbytes;
  uint64_t version;   /* readers: the pinned version; writers: 0 (assigned at commit) */
  int32_t device;     /* -1 for host memory, else the CUDA device ordinal in this process's
                         numbering (CUDA_VISIBLE_DEVICES), which may differ from the daemon's */
  int32_t reserved;
} lf_tensor_view_t;

/* ---- Client ---- */
typedef struct lf_client lf_client_t;

/* Connects to the daemon whose runtime directory is `runtime_dir` and says hello (checks the
 * protocol version, learns the arena). NULL means $LORAFLIP_RUNTIME_DIR, else the default
 * directory of instance "default" ($XDG_RUNTIME_DIR/loraflip/default, or
 * /tmp/loraflip-<uid>/default). `timeout_ms` bounds every request on this client (<= 0: 5000).
 * On failure, *out is untouched; a message is available through lf_last_error_message().
 * Thread-safe. Close with lf_client_close. */
LF_API int lf_client_open(const char *runtime_dir, int timeout_ms, lf_client_t **out);
/* Frees the client. No other thread may be inside a call on it, and no writer of it may remain
 * (commit or abort them first). */
LF_API void lf_client_close(lf_client_t *client);
/* Message of the last failed call on this client; never NULL; valid until the next call on it. */
LF_API const char *lf_client_last_error(const lf_client_t *client);
/* Message of the last failed lf_client_open or lf_reader_open on the calling thread. */
LF_API const char *lf_last_error_message(void);

/* Adapter specification: the schema (ordered tensors), LoRA config, slots and history.
 * Build one, pass it to lf_client_create_adapter, then free it. Not thread-safe. */
typedef struct lf_spec lf_spec_t;
LF_API int lf_spec_new(lf_spec_t **out);
LF_API void lf_spec_free(lf_spec_t *spec);
/* Appends a tensor; names are kept exactly as given (PEFT names included). */
LF_API int lf_spec_add_tensor(lf_spec_t *spec, const char *name, int dtype, int ndim,
                              const int64_t *shape);
/* LoRA config: rank, alpha, comma-separated target modules (may be NULL), rsLoRA flag. */
LF_API int lf_spec_set_lora(lf_spec_t *spec, int rank, double alpha, const char *target_modules,
                            int use_rslora);
/* Free-form metadata (any UTF-8 text, e.g. JSON), at most 64 KiB. */
LF_API int lf_spec_set_metadata(lf_spec_t *spec, const char *metadata);
/* Slots in the ring (0: history + 2) and versions kept readable besides the active one
 * (-1: the daemon's default). */
LF_API int lf_spec_set_slots(lf_spec_t *spec, int slots, int history);
/* Where the slots live: "host" (default), or "cuda:N" / "cuda:N,M,..." for GPU memory on
 * those devices, numbered as the daemon numbers them (its --devices list) (the first is written
 * to; the daemon copies each version to the others before the flip, so every tensor-parallel
 * rank switches to the same version at once). */
LF_API int lf_spec_set_placement(lf_spec_t *spec, const char *placement);

LF_API int lf_client_create_adapter(lf_client_t *client, const char *name, const lf_spec_t *spec);
/* Drops the adapter: the name is free at once (lf_reader_find and lf_client_info no longer see
 * it) and acquires through an older reference fail with LF_E_STALE. Its memory and its record
 * in the adapter table return once no pin and no write lease names it (the daemon's next
 * reaper pass after that); until then the record counts against the table (--max-adapters),
 * so a pin kept after the drop can make lf_client_create_adapter fail with LF_E_TABLE_FULL
 * (its message counts such records). */
LF_API int lf_client_drop_adapter(lf_client_t *client, const char *name);
/* Makes an earlier, still-kept version active again (it keeps its version number; the next
 * commit is numbered above every version ever assigned). */
LF_API int lf_client_rollback(lf_client_t *client, const char *name, uint64_t version);

/* list, info and stats return JSON text in *json_out; free it with lf_free. */
LF_API int lf_client_list(lf_client_t *client, char **json_out);
LF_API int lf_client_info(lf_client_t *client, const char *name, char **json_out);
LF_API int lf_client_stats(lf_client_t *client, char **json_out);
LF_API void lf_free(void *p);

/* ---- Writer ---- */
typedef struct lf_writer lf_writer_t;

/* Commit checks (bit flags). */
#define LF_COMMIT_CHECK_FINITE 1u /* refuse NaN or Inf in f32/f16/bf16/f64 tensors */
#define LF_COMMIT_CHECKSUM 2u     /* the daemon checksums the slot and compares with the
                                    writer's (lf_writer_commit computes it) */

/* Asks the daemon for a free slot of `name`, leased to this process for `lease_ms`
 * (<= 0: 30000). Past the lease, commit fails with LF_E_LEASE. The daemon takes the process
 * from the socket's kernel credentials: only this process may commit or abort the lease.
 * The writer belongs to the calling thread until commit or abort, which free it; it must not
 * outlive the client. When the reply is lost (LF_E_TIMEOUT, LF_E_CONNECTION), the next
 * begin_write of `name` on this client asks for that same lease again, so no slot is left
 * leased to a writer that never learned of it. */
LF_API int lf_client_begin_write(lf_client_t *client, const char *name, int lease_ms,
                                 lf_writer_t **out);
LF_API size_t lf_writer_tensor_count(const lf_writer_t *writer);
/* Views stay valid until commit or abort. Writes go straight into the daemon's slot. On a
 * device-placed adapter, writes through a view queued on a GPU stream must be named to the
 * commit with lf_writer_commit_after. */
LF_API int lf_writer_tensor(const lf_writer_t *writer, size_t index, lf_tensor_view_t *out);
LF_API int lf_writer_tensor_by_name(const lf_writer_t *writer, const char *name,
                                    lf_tensor_view_t *out);
/* Copies `nbytes` (must equal the tensor's size) from `src` into tensor `index`. */
LF_API int lf_writer_copy_in(lf_writer_t *writer, size_t index, const void *src, size_t nbytes);
/* Copies every tensor in one call: srcs[i] and nbytes[i] (the tensor's size) for tensor i, for
 * i < lf_writer_tensor_count(writer); a NULL srcs[i] leaves tensor i as it is. Every size is
 * checked before any byte is copied (LF_E_INVALID_ARGUMENT names nothing copied). For a
 * language binding, one call instead of one per tensor (hundreds for an adapter). */
LF_API int lf_writer_copy_in_all(lf_writer_t *writer, const void *const *srcs,
                                 const size_t *nbytes);
/* Size in bytes of the writer's slot: every tensor and the padding between them, the bytes
 * LF_COMMIT_CHECKSUM covers and lf_writer_copy_in_slot takes. */
LF_API size_t lf_writer_slot_bytes(const lf_writer_t *writer);
/* Copies a whole slot image from host memory into the writer's slot: `nbytes` (must equal
 * lf_writer_slot_bytes) from `src`, tensors and padding alike, as lf_pin_copy_slot gives it
 * (a follower writing another node's version byte for byte, so that the daemon's checksum of
 * the slot is the other node's). On a device-placed adapter the copy goes to the adapter's
 * first device, as lf_writer_copy_in's do (the daemon copies to the others at commit), and is
 * complete when the call returns: `src` may go, and the commit checks these bytes. */
LF_API int lf_writer_copy_in_slot(lf_writer_t *writer, const void *src, size_t nbytes);
/* Copies `nbytes` from `src` into tensor `index` on `stream` (a cudaStream_t) and returns
 * without waiting. `src_device` is the device ordinal of `src`, or -1 for host memory (which
 * must stay valid until the commit returns). A copy from host memory or from the slot's own
 * device runs on `stream` of the slot's device (NULL: its default stream); a copy from another
 * device (a peer copy) runs on `stream` of any device (NULL: the source device's default
 * stream). One write may use several streams and devices. At commit the library makes one
 * interprocess event cover all of them (on the slot's device, after the work of every stream
 * used) and the daemon waits for it (never blocking other clients) before it checks and flips;
 * a writer that dies before its copies complete changes nothing. On a host-placed adapter this
 * is a plain copy of host memory, done when the call returns. */
LF_API int lf_writer_copy_in_async(lf_writer_t *writer, size_t index, const void *src,
                                   size_t nbytes, int src_device, void *stream);
/* Makes the commit cover the work queued on `stream` (a cudaStream_t of device `device`;
 * NULL: that device's default stream; device -1: the stream's own device, or the slot's for
 * NULL) up to the commit. Call it when the slot is written through its device views
 * (lf_writer_tensor's data) by your own kernels or copies, which the library cannot see:
 * without it the daemon may check and flip before they land. Any number of streams, of any
 * device. Does nothing on a host-placed adapter (host views are written by the CPU, done when
 * the stores return). */
LF_API int lf_writer_commit_after(lf_writer_t *writer, int device, void *stream);
/* Validates (per flags), assigns the next version and flips it active; *version_out (may be
 * NULL) receives the new version. Frees the writer, except when the outcome is unknown:
 * LF_E_TIMEOUT or LF_E_CONNECTION (the daemon restarting, or slow). Then the writer stays
 * valid: call lf_writer_commit again (idempotent per lease: a repeated commit answers the
 * version the first one made, as long as that version is kept; LF_E_LEASE once the lease
 * ended without a version, after which begin again) or lf_writer_abort. */
LF_API int lf_writer_commit(lf_writer_t *writer, unsigned flags, uint64_t *version_out);
/* lf_writer_commit under a version number the caller chooses: a follower mirroring another
 * node's daemon keeps the upstream's numbers, so that one number means the same bytes on
 * every node. `version` must be above every version the adapter ever had (its last_version
 * in lf_client_info), and at most 2^40 - 1; otherwise LF_E_INVALID_ARGUMENT, nothing flips and
 * the lease ends (the writer is freed). With LF_COMMIT_CHECKSUM in `flags`, the daemon
 * compares the slot's checksum with `checksum` (the upstream's, computed over the whole slot
 * as lf_writer_commit computes it) rather than with one this call computes, and refuses a
 * mismatch with LF_E_VALIDATION before anything flips; without it `checksum` is ignored.
 * Otherwise as lf_writer_commit (frees the writer, except on LF_E_TIMEOUT or LF_E_CONNECTION,
 * when the writer stays valid and the call may be repeated). Since protocol version 2 daemons
 * of this release; an older daemon answers LF_E_PROTOCOL (unknown field). Unlike
 * lf_writer_commit, LF_COMMIT_CHECKSUM is taken on a device-placed adapter too: the checksum is
 * given, and the daemon computes the slot's on its first device. */
LF_API int lf_writer_commit_as(lf_writer_t *writer, uint64_t version, unsigned flags,
                               uint64_t checksum, uint64_t *version_out);
/* Gives the slot back. Frees the writer. Accepts NULL. When the daemon cannot be reached the
 * abort is sent again before this client's next begin_write. */
LF_API int lf_writer_abort(lf_writer_t *writer);

/* ---- Reader ---- */
typedef struct lf_reader lf_reader_t;
typedef struct lf_pin lf_pin_t;
/* An adapter reference for the hot path: index and incarnation packed by lf_reader_find. */
typedef uint64_t lf_adapter_ref_t;

/* Maps the arena of the daemon at `runtime_dir` (same default as lf_client_open) and claims
 * one reader-table entry for the calling process. Needs the daemon only to learn the arena
 * names; after that it works even while the daemon restarts. One thread at a time. */
LF_API int lf_reader_open(const char *runtime_dir, lf_reader_t **out);
/* Releases every pin the reader still holds and frees its table entry. Accepts NULL. */
LF_API void lf_reader_close(lf_reader_t *reader);
LF_API const char *lf_reader_last_error(const lf_reader_t *reader);

/* Looks an adapter up by name (a scan of the adapter table; call it once, keep the ref). */
LF_API int lf_reader_find(lf_reader_t *reader, const char *name, lf_adapter_ref_t *out);
/* Pins the active version if it is >= min_version; otherwise the newest kept version that is
 * (after a rollback). LF_E_NO_VERSION when none is; LF_E_STALE when the adapter was dropped.
 * The pin stays valid, and its tensors unchanged, until lf_pin_release. Release only after
 * every GPU or CPU work that reads the tensors is done. */
LF_API int lf_reader_acquire(lf_reader_t *reader, lf_adapter_ref_t ref, uint64_t min_version,
                             lf_pin_t **out);
/* Pins exactly `version`, if it is active or kept. */
LF_API int lf_reader_acquire_version(lf_reader_t *reader, lf_adapter_ref_t ref, uint64_t version,
                                     lf_pin_t **out);
/* Ends the pin; its views must not be used after this. Accepts NULL. Like free(), the pointer
 * is dead afterwards: the reader reuses its storage for a later pin, so releasing it a second
 * time may end that other pin. */
LF_API void lf_pin_release(lf_pin_t *pin);
/* Releases `pin` once the GPU work queued so far on `stream` (a cudaStream_t of device
 * `device`; NULL: its default stream; device -1: the pin's own device) is done, without
 * waiting: a generation step queues its kernels on the pinned tensors, calls this, and moves
 * on, and the pin still covers the kernels. It records an event on the stream; the pin is
 * released by a later call on the same reader once the event has completed (every acquire
 * checks, or lf_reader_release_completed), and lf_reader_close waits for it (up to 10 s).
 * On LF_OK the pin pointer is dead, as after lf_pin_release; on error the pin is still held
 * and valid. Its cell counts against LF_MAX_PINS until released. NULL covers that device's
 * default stream only, not other streams of the device. Refused (LF_E_INVALID_ARGUMENT) on a
 * stream being captured into a CUDA graph: the graph reads the pin at every replay, so hold
 * the pin while the graph is in use and release it outside the capture. A pending release
 * ends only when its event completes, or when the device's context fails for good
 * (LF_E_DEVICE); any other error of the event leaves the pin held. */
LF_API int lf_pin_release_after(lf_pin_t *pin, int device, void *stream);
/* Releases the pins of lf_pin_release_after whose GPU work is done, without waiting.
 * *pending_out (may be NULL) receives how many still wait. */
LF_API int lf_reader_release_completed(lf_reader_t *reader, size_t *pending_out);
LF_API uint64_t lf_pin_version(const lf_pin_t *pin);
LF_API size_t lf_pin_tensor_count(const lf_pin_t *pin);
LF_API int lf_pin_tensor(const lf_pin_t *pin, size_t index, lf_tensor_view_t *out);
LF_API int lf_pin_tensor_by_name(const lf_pin_t *pin, const char *name, lf_tensor_view_t *out);
/* Size in bytes of the pinned version's slot: every tensor and the padding between them, the
 * bytes the daemon's checksum covers and lf_pin_copy_slot copies. */
LF_API size_t lf_pin_slot_bytes(const lf_pin_t *pin);
/* Copies the pinned version's whole slot image (every tensor and the padding between them) into
 * host memory at `dst`; `nbytes` must equal lf_pin_slot_bytes. Wherever the slot lies: host
 * memory is copied by the CPU; a device-placed version is copied from the pin's device
 * (lf_pin_tensor's view.device: the adapter's first device this process sees), complete when
 * the call returns. Written into another node's writer with lf_writer_copy_in_slot, the slot
 * there holds the same bytes, and the same checksum (lf_writer_commit_as). */
LF_API int lf_pin_copy_slot(const lf_pin_t *pin, void *dst, size_t nbytes);
/* The pinned version's tensor `index` on device `device` (an ordinal, in this process's
 * numbering, of a GPU the adapter is placed on: a tensor-parallel rank reads its own GPU's
 * copy; all copies are the same version). lf_pin_tensor gives the copy on the adapter's first
 * device, or on the first one this process can see when that one is hidden from it
 * (view.device says which). The daemon publishes each GPU's UUID, so the numbering of each
 * process is its own; a GPU this process cannot see is skipped (LF_E_UNSUPPORTED when the
 * adapter is on none it sees). */
LF_API int lf_pin_tensor_on_device(const lf_pin_t *pin, size_t index, int device,
                                   lf_tensor_view_t *out);
/* The active version now (0: none yet), without pinning. */
LF_API int lf_reader_active_version(lf_reader_t *reader, lf_adapter_ref_t ref, uint64_t *out);
/* Blocks until the adapter's active version differs from `version` and is newer, or
 * `timeout_ms` passes (< 0: forever). Waits on a futex the daemon bumps at each flip: no
 * message to the daemon. *version_out receives the active version. */
LF_API int lf_reader_wait(lf_reader_t *reader, lf_adapter_ref_t ref, uint64_t version,
                          int timeout_ms, uint64_t *version_out);

/* ---- Flip events (ZeroMQ SUB on the daemon's events socket) ---- */
typedef struct lf_events lf_events_t;
/* Subscribes to flips of `adapter` (NULL: all adapters). One thread at a time. */
LF_API int lf_events_open(const char *runtime_dir, const char *adapter, lf_events_t **out);
LF_API void lf_events_close(lf_events_t *events);

#define LF_EVENT_COMMIT 1   /* a writer's commit flipped to a new version */
#define LF_EVENT_ROLLBACK 2 /* a rollback flipped back to a kept version */
#define LF_EVENT_DROP 3     /* the adapter was dropped (version 0) */
typedef struct lf_event {
  char adapter[LF_MAX_ADAPTER_NAME + 1];
  int32_t kind;       /* LF_EVENT_*; 0 for a kind this library does not know */
  uint64_t version;   /* the active version after the flip (0 after a drop) */
  uint64_t previous;  /* the active version before it */
  uint64_t unix_ns;   /* when the daemon sent it (CLOCK_REALTIME) */
  uint64_t seq;       /* this adapter's event number, from 1 (again from 1 once re-created) */
  /* This adapter's events that never reached this subscriber since its previous one: the
   * events socket drops them for a subscriber that falls behind (ZeroMQ PUB semantics), so
   * anyone who must see every version should read missed and catch up with lf_client_info. */
  uint64_t missed;
  uint64_t reserved[4]; /* zero: room for later fields without another function */
} lf_event_t;
/* Waits up to timeout_ms (< 0: forever) for the next flip and fills *out. `missed` is known
 * only when the adapter's next event arrives: after draining a burst whose last events were
 * dropped (a drop event included), nothing says so until the adapter flips again. To tell
 * whether it is behind now, a subscriber compares the version of the last event it got with
 * the adapter's active version (lf_reader_active_version, or lf_client_info): a difference, or
 * LF_E_STALE / LF_E_NOT_FOUND for a dropped adapter, means lost events (or one still on its
 * way: the daemon sends it just after the flip). */
LF_API int lf_events_next_event(lf_events_t *events, int timeout_ms, lf_event_t *out);

#ifdef __cplusplus
}
#endif

#endif /* LORAFLIP_H */
