/*
 * loraflip_lora.h: LoRA apply for generation loops, y[i] += scale(a) * B_a (A_a x_i).
 *
 * Each row i of a batch uses the adapter a chosen for it (or none). The adapter table is a plain
 * array of lf_lora_adapter_t that points straight at tensors the caller already holds (for example
 * the A/B views of one layer+module of a version it pinned with loraflip); nothing is copied.
 *
 * Shapes (all row-major):
 *   x  [n_rows, h_in]   row stride ldx elements (0 means h_in)
 *   y  [n_rows, h_out]  row stride ldy elements (0 means h_out)
 *   A  [rank, h_in]     per adapter, dense
 *   B  [h_out, rank]    per adapter, dense
 *   v  [n_rows, max_rank] fp32, dense: the rank-r intermediate of the separate shrink/expand calls
 *
 * Arithmetic: fp16 and bf16 tensors are converted to fp32, products are accumulated in fp32 and
 * y is rounded once (round to nearest even) after y + scale * B(Ax) is formed in fp32.
 *
 * CPU variants: the CPU functions are compiled for several instruction sets (baseline, then on
 * x86-64 AVX2+FMA+F16C, AVX-512 F/BW/VL and AVX-512 with BF16, as far as the compiler supports
 * them); the best one the CPU runs is chosen once, at the first call, and lf_lora_cpu_isa names
 * it. The environment variable LORAFLIP_LORA_ISA, read at that moment, asks for another variant
 * by that name (ignored if this build lacks it or the CPU cannot run it). Variants sum in the
 * same order but differ in the last bits (fused multiply-adds; the BF16 variant pairs products),
 * so the bit-exactness promises below hold for one variant, that is within one process and
 * between processes on the same kind of CPU with the same setting, not between variants. Every
 * variant stays within the same error bound of the exact result.
 *
 * Types and statuses are those of loraflip.h, which this header includes, so a view a reader
 * pinned (lf_tensor_view.dtype) goes straight into lf_lora_adapter_t.dtype:
 *   dtype: LF_DTYPE_F32, LF_DTYPE_F16 or LF_DTYPE_BF16; every other LF_DTYPE_* (and any unknown
 *          number) is refused with LF_E_INVALID_ARGUMENT.
 *   status: every fallible function returns LF_OK (0), LF_E_INVALID_ARGUMENT, LF_E_INTERNAL or
 *          LF_E_UNSUPPORTED; lf_strerror (or lf_lora_strerror, for programs that link only this
 *          library) describes them. No function throws or aborts.
 *
 * Thread-safety: every function may be called from any number of threads at once, provided calls
 * that run concurrently do not write overlapping parts of the same y or v (and, for
 * lf_lora_cuda_apply_single, do not share a cuBLAS handle). The functions keep no state between
 * calls except the CPU thread count (lf_lora_cpu_set_threads), which is a single atomic value,
 * and the CPU variant, chosen once. No function keeps a pointer it was given after it returns
 * (CPU) or after the work it queued on the stream has run (CUDA).
 */
#ifndef LORAFLIP_LORA_H
#define LORAFLIP_LORA_H

#include <stddef.h>
#include <stdint.h>

#include "loraflip.h"

#if defined(_WIN32)
#define LF_LORA_API
#else
#define LF_LORA_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* How rows find their adapter (lf_lora_batch_t.select). */
#define LF_LORA_SELECT_ROWS 0     /* row_adapter[i] per row (BGMV-style) */
#define LF_LORA_SELECT_SEGMENTS 1 /* seg_adapter[s] per contiguous segment (SGMV-style) */

/* No adapter for this row or segment: its y row is left as it is. */
#define LF_LORA_NO_ADAPTER (-1)

/* Largest supported rank; ranks 1..LF_LORA_MAX_RANK are accepted, several in one batch. */
#define LF_LORA_MAX_RANK 128

/* Hidden sizes (h_in, h_out) and row strides must be multiples of this many elements, so that
 * every row starts on a 16-byte boundary for 16-bit types (GPU vector loads). */
#define LF_LORA_HIDDEN_MULTIPLE 8

/* lf_lora_scale kinds. */
#define LF_LORA_SCALE_STANDARD 0 /* alpha / rank (PEFT default) */
#define LF_LORA_SCALE_RSLORA 1   /* alpha / sqrt(rank) (rank-stabilized LoRA) */

/* Bits OR-ed into the optional device error word by the CUDA kernels, which cannot return a
 * status for data they only see on the device. The affected rows are skipped (left unchanged). */
#define LF_LORA_DEVICE_ERR_INDEX 1   /* adapter index outside [-1, n_adapters) */
#define LF_LORA_DEVICE_ERR_ADAPTER 2 /* table entry: rank outside [1, max_rank], dtype mismatch,
                                        null or misaligned A/B */
#define LF_LORA_DEVICE_ERR_SEGMENTS 4 /* seg_offsets not 0 = o[0] <= ... <= o[n_segments] = n_rows */

/* One adapter for one layer+module. The struct only borrows a and b. */
typedef struct lf_lora_adapter_t {
    const void *a;    /* A, [rank, h_in], dense row-major, type dtype */
    const void *b;    /* B, [h_out, rank], dense row-major, type dtype */
    int32_t rank;     /* 1..max_rank of the batch */
    int32_t dtype;    /* LF_DTYPE_F32/F16/BF16; must equal the batch dtype */
    float scale;      /* multiplies B(Ax); see lf_lora_scale */
    int32_t reserved; /* set to 0; pads the entry to 32 bytes on 64-bit targets */
} lf_lora_adapter_t;

/* What one call works on. The struct itself is always read on the host during the call; the
 * arrays it points to live in host memory for the CPU functions and in device memory (or
 * device-accessible memory) for the CUDA functions. */
typedef struct lf_lora_batch_t {
    int32_t dtype;    /* LF_DTYPE_F32/F16/BF16 of x, y and every adapter used */
    int32_t n_rows;   /* >= 0 */
    int32_t h_in;     /* columns of x and A; multiple of LF_LORA_HIDDEN_MULTIPLE */
    int32_t h_out;    /* columns of y and rows of B; multiple of LF_LORA_HIDDEN_MULTIPLE */
    int64_t ldx;      /* row stride of x in elements; 0 = h_in; else >= h_in, multiple of 8 */
    int64_t ldy;      /* row stride of y in elements; 0 = h_out; else >= h_out, multiple of 8 */
    int32_t max_rank; /* 1..LF_LORA_MAX_RANK, >= every used rank; row stride of v */
    int32_t select;   /* LF_LORA_SELECT_ROWS or LF_LORA_SELECT_SEGMENTS */

    const lf_lora_adapter_t *adapters; /* [n_adapters] */
    int32_t n_adapters;                /* >= 0 */

    /* LF_LORA_SELECT_ROWS: [n_rows] indices into adapters, or LF_LORA_NO_ADAPTER. */
    const int32_t *row_adapter;

    /* LF_LORA_SELECT_SEGMENTS: segment s covers rows seg_offsets[s] .. seg_offsets[s+1]-1.
     * seg_offsets has n_segments + 1 entries, starts at 0, never decreases and ends at n_rows
     * (empty segments are fine); seg_adapter[s] is an index into adapters or LF_LORA_NO_ADAPTER. */
    int32_t n_segments;
    const int32_t *seg_offsets;
    const int32_t *seg_adapter;
} lf_lora_batch_t;

/* Opaque CUDA types, spelled so that they are the same types as cudaStream_t and
 * cublasHandle_t without including any CUDA header. */
typedef struct CUstream_st *lf_lora_stream_t;
typedef struct cublasContext *lf_lora_cublas_t;

/* The text lf_strerror gives for status, without linking the client library. Never returns
 * NULL; the string is static. */
LF_LORA_API const char *lf_lora_strerror(int status);

/* Scale for an adapter trained with lora_alpha = alpha: kind LF_LORA_SCALE_STANDARD gives
 * alpha / rank, LF_LORA_SCALE_RSLORA gives alpha / sqrt(rank). *out_scale is written on success
 * only. Errors: rank < 1, unknown kind, alpha not finite, out_scale NULL. */
LF_LORA_API int lf_lora_scale(float alpha, int32_t rank, int32_t kind, float *out_scale);

/* Number of threads the CPU functions may use: 0 = std::thread::hardware_concurrency(),
 * 1 = the calling thread only. Results are bit-identical for every thread count. Small batches
 * run on the calling thread whatever this says. Error: n < 0. */
LF_LORA_API int lf_lora_cpu_set_threads(int32_t n);

/* Name of the instruction-set variant the CPU functions use: "baseline", "avx2", "avx512" or
 * "avx512bf16" (see "CPU variants" above). Makes the choice if no call has made it yet. Never
 * returns NULL; the string is static. */
LF_LORA_API const char *lf_lora_cpu_isa(void);

/* ---- CPU (all arrays in host memory) ----
 * Arguments are checked completely (shapes, every used index and table entry, segment offsets)
 * before anything is written; on LF_E_INVALID_ARGUMENT or LF_E_UNSUPPORTED nothing is
 * written. LF_E_INTERNAL (out of memory, or a thread that could not start) can happen after
 * some rows were updated; the contents of y or v are then unspecified. */

/* v[i, 0:r] = A_a x_i for every row i with an adapter a of rank r; other parts of v untouched. */
LF_LORA_API int lf_lora_shrink(const lf_lora_batch_t *batch, const void *x, float *v);

/* y_i += scale_a * B_a v[i, 0:r] for every row i with an adapter; other rows of y untouched. */
LF_LORA_API int lf_lora_expand(const lf_lora_batch_t *batch, const float *v, void *y);

/* Fused shrink + expand with the fp32 intermediate kept in thread-local scratch; gives the same
 * bits as lf_lora_shrink followed by lf_lora_expand. */
LF_LORA_API int lf_lora_apply(const lf_lora_batch_t *batch, const void *x, void *y);

/* ---- CUDA ----
 * Built only with CUDA; otherwise every function below returns LF_E_UNSUPPORTED.
 * x, y, v, workspace, the adapter table, row_adapter, seg_offsets and seg_adapter are device
 * pointers; x, y, v and workspace must be 16-byte aligned, and so must every A and B.
 * The launchers only queue work on `stream`: they never synchronize, allocate or copy from the
 * host, so they may be captured in a CUDA graph (the table and index arrays are read when the
 * kernels run, so a graph replay sees their current contents).
 * Host-visible fields of the batch are checked and give a status. What only the device sees
 * (indices, table entries, offsets) is checked by the kernels: bad rows are skipped and the
 * matching LF_LORA_DEVICE_ERR_* bits are OR-ed into *device_error when device_error (a device
 * pointer to an int32 the caller zeroes) is not NULL. */

LF_LORA_API int lf_lora_cuda_shrink(const lf_lora_batch_t *batch, const void *x, float *v,
                                    int32_t *device_error, lf_lora_stream_t stream);

LF_LORA_API int lf_lora_cuda_expand(const lf_lora_batch_t *batch, const float *v, void *y,
                                    int32_t *device_error, lf_lora_stream_t stream);

/* Shrink and expand in one call (two kernels; v lives in the workspace). With workspace NULL,
 * writes the bytes it needs to *workspace_bytes and returns 0 without launching anything (only
 * the batch shape is looked at; x and y may be NULL); then call again with a workspace of at
 * least that size and *workspace_bytes set to its size. The size depends only on n_rows and
 * max_rank, so one workspace serves every layer of a step: v's size, or 16 times it for batches
 * small enough (under 512 shrink blocks: ceil(n_rows / 8) * ceil(max_rank / 8)) that the shrink
 * may split h_in over more blocks to fill the GPU (at most 2 MiB), which it does when it would
 * otherwise have fewer than two blocks per SM. The results are the same bits either way, and
 * the same as lf_lora_cuda_shrink followed by lf_lora_cuda_expand (which never split). */
LF_LORA_API int lf_lora_cuda_apply(const lf_lora_batch_t *batch, const void *x, void *y,
                                   void *workspace, size_t *workspace_bytes,
                                   int32_t *device_error, lf_lora_stream_t stream);

/* The whole batch uses one adapter: two cublasGemmEx calls with fp32 compute. `adapter` is a
 * host struct (its a and b are device pointers) and is checked on the host. The rank-r
 * intermediate is stored in the workspace in the I/O dtype, because cublasGemmEx needs both
 * inputs of the second GEMM in one type, so fp16/bf16 results may differ from
 * lf_lora_cuda_apply by about one rounding of the intermediate. Workspace protocol as for
 * lf_lora_cuda_apply. The handle's stream and pointer mode are set for the call where they
 * differ from `stream` and host mode, and restored afterwards; do not use the same handle from
 * another thread meanwhile. To capture in a CUDA graph, give the handle a workspace first
 * (cublasSetWorkspace) as cuBLAS requires. cuBLAS resets a handle's workspace to its own pool
 * whenever the handle's stream changes (cublasSetStream), so set the handle's stream to the one
 * you pass here before setting its workspace: then this call changes neither. */
LF_LORA_API int lf_lora_cuda_apply_single(int32_t dtype, int32_t n_rows, int32_t h_in,
                                          int32_t h_out, const void *x, int64_t ldx, void *y,
                                          int64_t ldy, const lf_lora_adapter_t *adapter,
                                          void *workspace, size_t *workspace_bytes,
                                          lf_lora_cublas_t cublas, lf_lora_stream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* LORAFLIP_LORA_H */
