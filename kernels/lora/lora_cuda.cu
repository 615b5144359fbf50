// CUDA implementation of LoRA shrink / expand / apply and the single-adapter cuBLAS path.
// Compiles; it has not been run on a GPU in this repository yet (see docs/lora_apply.md).
//
// Layout of the work: a block takes a tile of kTileRows consecutive rows. Rows of the tile that
// share an adapter are processed together, so each A row / B row read from memory serves all of
// them; with segments (SGMV) a tile usually has one adapter, with per-row choice (BGMV) it has
// as many groups as distinct adapters. Rows resolve their adapter through the same helpers as
// the CPU path (lora_index.h). Nothing here synchronizes with the host or allocates, so every
// launcher can be captured in a CUDA graph.
//
// The shrink's dot products over h_in are always summed in the same pieces (chunks of h_in fixed
// by h_in alone, see chunk_plan): each chunk's sum over the warp, then the chunk sums in order.
// A small batch (decode: a handful of blocks on a GPU of 100+ SMs) can then spread the chunks
// over more blocks ("split-K") that write one partial per chunk into the apply workspace, which
// the expand folds in the same order: the same bits as one block doing all the chunks, so the
// fused call still equals shrink + expand, whatever the GPU.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cublas_v2.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdint>

#include "lora_index.h"
#include "lora_internal.h"

namespace loraflip::lora {
namespace {

constexpr int kTileRows = 8;  // rows per block; 8 keeps the per-row accumulators in registers
constexpr int kWarps = 8;     // warps per block
constexpr int kThreads = kWarps * 32;
constexpr int kVec = 8;       // elements per vector load: 16 bytes of fp16/bf16, two float4
static_assert(kVec == LF_LORA_HIDDEN_MULTIPLE, "hidden sizes are padded to whole vectors");

// ---- element access: 8 contiguous elements at a 16-byte aligned address ----

__device__ __forceinline__ void load8(const float *p, float out[kVec]) {
    const float4 a = __ldg(reinterpret_cast<const float4 *>(p));
    const float4 b = __ldg(reinterpret_cast<const float4 *>(p) + 1);
    out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
    out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
}

__device__ __forceinline__ void load8(const __half *p, float out[kVec]) {
    const uint4 u = __ldg(reinterpret_cast<const uint4 *>(p));
    const auto *h = reinterpret_cast<const __half2 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 f = __half22float2(h[i]);
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
    }
}

__device__ __forceinline__ void load8(const __nv_bfloat16 *p, float out[kVec]) {
    const uint4 u = __ldg(reinterpret_cast<const uint4 *>(p));
    const auto *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 f = __bfloat1622float2(h[i]);
        out[2 * i] = f.x;
        out[2 * i + 1] = f.y;
    }
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) {
    return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

__device__ __forceinline__ void flag(int32_t *error, int32_t bits) {
    if (error != nullptr) {
        atomicOr(error, bits);
    }
}

__device__ __forceinline__ bool aligned16(const void *p) {
    return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// Fills s_adapter[t] with the adapter of row row0 + t, or -1 for no adapter, a row past the
// batch, or anything invalid (which is flagged instead of read), and s_entry[t] with the table
// entry it validated: the kernels use only that copy, never the table again, so an entry that
// changes meanwhile (the table is the caller's, in device memory) cannot reach them unchecked.
// Ends with __syncthreads.
__device__ void resolve_tile(const lf_lora_batch_t &b, int32_t row0, int32_t n,
                             int32_t *s_adapter, lf_lora_adapter_t *s_entry, int32_t *error) {
    if (threadIdx.x < kTileRows) {
        int32_t a = LF_LORA_NO_ADAPTER;
        if (static_cast<int32_t>(threadIdx.x) < n) {
            a = adapter_of_row(b.select, b.row_adapter, b.seg_offsets, b.seg_adapter,
                               b.n_segments, row0 + static_cast<int32_t>(threadIdx.x));
            if (!adapter_index_ok(a, b.n_adapters)) {
                flag(error, LF_LORA_DEVICE_ERR_INDEX);
                a = LF_LORA_NO_ADAPTER;
            } else if (a >= 0) {
                const lf_lora_adapter_t e = b.adapters[a];
                if (!adapter_entry_ok(e, b.dtype, b.max_rank) || !aligned16(e.a) ||
                    !aligned16(e.b)) {
                    flag(error, LF_LORA_DEVICE_ERR_ADAPTER);
                    a = LF_LORA_NO_ADAPTER;
                } else {
                    s_entry[threadIdx.x] = e;
                }
            }
        }
        s_adapter[threadIdx.x] = a;
    }
    // One thread of the whole grid checks the partition; segment_of_row already keeps every
    // row's lookup in bounds, so bad offsets only need reporting.
    if (b.select == LF_LORA_SELECT_SEGMENTS && blockIdx.x == 0 && blockIdx.y == 0 &&
        blockIdx.z == 0 && threadIdx.x == 0 &&
        !segment_offsets_ok(b.seg_offsets, b.n_segments, b.n_rows)) {
        flag(error, LF_LORA_DEVICE_ERR_SEGMENTS);
    }
    __syncthreads();
}

// Calls fn(t, row_mask) once per distinct adapter of the tile, t being the group's first row
// (s_entry[t] is its validated entry). Reads only shared memory, so every thread of the block
// takes the same branches.
template <class Fn> __device__ void for_each_group(const int32_t *s_adapter, int32_t n, Fn fn) {
    uint32_t done = 0;
    for (int32_t t = 0; t < n; ++t) {
        if ((done >> t) & 1u) {
            continue;
        }
        const int32_t a = s_adapter[t];
        uint32_t mask = 0;
        for (int32_t u = t; u < n; ++u) {
            mask |= static_cast<uint32_t>(s_adapter[u] == a) << u;
        }
        done |= mask;
        if (a >= 0) {
            fn(t, mask);
        }
    }
}

// Sums acc[t] over the 32 lanes of the warp for all kTileRows rows at once: each step halves
// the rows a lane keeps and sends the other half to its partner, so 4 + 2 + 1 + 1 + 1 shuffles
// do what a butterfly per row does in 8 x 5. Returns, in lane l, the sum of row (l / 4) % 8 (the
// four lanes of a row agree: float addition is commutative). Every lane must take part.
__device__ __forceinline__ float warp_sum_rows(float acc[kTileRows]) {
    static_assert(kTileRows == 8, "three halving steps, one per bit of the row");
    const uint32_t lane = threadIdx.x % 32;
#pragma unroll
    for (int half = kTileRows / 2, bit = 16; half >= 1; half /= 2, bit /= 2) {
        const bool upper = (lane & static_cast<uint32_t>(bit)) != 0; // keeps the upper half
#pragma unroll
        for (int i = 0; i < half; ++i) {
            const float send = upper ? acc[i] : acc[i + half];
            const float keep = upper ? acc[i + half] : acc[i];
            acc[i] = keep + __shfl_xor_sync(0xffffffffu, send, bit);
        }
    }
    float s = acc[0];
    s += __shfl_xor_sync(0xffffffffu, s, 2);
    s += __shfl_xor_sync(0xffffffffu, s, 1);
    return s;
}

// grid (tiles, ceil(max_rank / kWarps), splits); warp w of block (tile, q, z) computes rank index
// j = q * kWarps + w of every row of the tile, v[row, j] = A_j . x_row, over the chunks of h_in
// k = z, z + splits, ... (chunk k: vectors [k * chunk_vecs, (k + 1) * chunk_vecs)). Without
// kSplit (splits 1) it folds the chunk sums in order and writes v; with kSplit it writes chunk
// k's sum to out[k * part_stride + row * max_rank + j], for the expand to fold in the same order.
template <class T, bool kSplit>
__global__ void __launch_bounds__(kThreads)
    shrink_kernel(lf_lora_batch_t b, const T *__restrict__ x, float *__restrict__ out,
                  int32_t chunk_vecs, int32_t n_chunks, int64_t part_stride, int32_t *error) {
    __shared__ int32_t s_adapter[kTileRows];
    __shared__ lf_lora_adapter_t s_entry[kTileRows];
    const int32_t row0 = static_cast<int32_t>(blockIdx.x) * kTileRows;
    const int32_t n = min(kTileRows, b.n_rows - row0);
    resolve_tile(b, row0, n, s_adapter, s_entry, error);

    const int32_t lane = static_cast<int32_t>(threadIdx.x) % 32;
    const int32_t j = static_cast<int32_t>(blockIdx.y) * kWarps + static_cast<int32_t>(threadIdx.x) / 32;
    const int32_t my_row = (lane / 4) % kTileRows; // the row whose sums warp_sum_rows leaves here
    const bool writer = lane % 4 == 0;
    const int64_t ldx = effective_ld(b.ldx, b.h_in);
    const int32_t n_vec = b.h_in / kVec;
    const int32_t k_first = kSplit ? static_cast<int32_t>(blockIdx.z) : 0;
    const int32_t k_step = kSplit ? static_cast<int32_t>(gridDim.z) : 1;

    for_each_group(s_adapter, n, [&](int32_t t0, uint32_t mask) {
        const lf_lora_adapter_t &e = s_entry[t0];
        if (j >= e.rank) {
            return; // warp-uniform
        }
        const T *arow = static_cast<const T *>(e.a) + static_cast<int64_t>(j) * b.h_in;
        const bool mine = ((mask >> my_row) & 1u) != 0;
        float total = 0.0f; // chunk sums folded in order (without kSplit)
        for (int32_t k = k_first; k < n_chunks; k += k_step) {
            const int32_t c_end = min(n_vec, (k + 1) * chunk_vecs);
            float acc[kTileRows] = {};
            for (int32_t c = k * chunk_vecs + lane; c < c_end; c += 32) {
                float w[kVec];
                load8(arow + c * kVec, w);
#pragma unroll
                for (int t = 0; t < kTileRows; ++t) {
                    if ((mask >> t) & 1u) {
                        float xv[kVec];
                        load8(x + row_offset(row0 + t, ldx) + c * kVec, xv);
#pragma unroll
                        for (int l = 0; l < kVec; ++l) {
                            acc[t] = fmaf(w[l], xv[l], acc[t]);
                        }
                    }
                }
            }
            const float sum = warp_sum_rows(acc);
            if (kSplit) {
                if (writer && mine) {
                    out[k * part_stride + row_offset(row0 + my_row, b.max_rank) + j] = sum;
                }
            } else {
                total += sum;
            }
        }
        if (!kSplit && writer && mine) {
            out[row_offset(row0 + my_row, b.max_rank) + j] = total;
        }
    });
}

// grid (tiles, ceil(h_out / kThreads)); thread c of the block updates column c of every row of
// the tile: y[row, c] += scale * B_c . v[row]. With n_parts > 1, v holds the shrink's per-chunk
// partials (part p at v + p * part_stride), folded here in chunk order, as the plain shrink does.
template <class T>
__global__ void __launch_bounds__(kThreads)
    expand_kernel(lf_lora_batch_t b, const float *__restrict__ v, int32_t n_parts,
                  int64_t part_stride, T *__restrict__ y, int32_t *error) {
    __shared__ int32_t s_adapter[kTileRows];
    __shared__ lf_lora_adapter_t s_entry[kTileRows];
    __shared__ float s_v[kTileRows * LF_LORA_MAX_RANK];
    const int32_t row0 = static_cast<int32_t>(blockIdx.x) * kTileRows;
    const int32_t n = min(kTileRows, b.n_rows - row0);
    // v rows are dense with stride max_rank, so the tile's rows are one contiguous range. Entries
    // past a row's rank may be uninitialized; they are copied but never used.
    const float *tile_v = v + row_offset(row0, b.max_rank);
    for (int32_t i = static_cast<int32_t>(threadIdx.x); i < n * b.max_rank; i += kThreads) {
        if (n_parts == 1) {
            s_v[i] = tile_v[i];
        } else {
            float sum = 0.0f;
            for (int32_t p = 0; p < n_parts; ++p) {
                sum += tile_v[p * part_stride + i];
            }
            s_v[i] = sum;
        }
    }
    resolve_tile(b, row0, n, s_adapter, s_entry, error); // its __syncthreads also publishes s_v

    const int32_t c = static_cast<int32_t>(blockIdx.y) * kThreads + static_cast<int32_t>(threadIdx.x);
    if (c >= b.h_out) {
        return; // no barrier follows
    }
    const int64_t ldy = effective_ld(b.ldy, b.h_out);

    for_each_group(s_adapter, n, [&](int32_t t0, uint32_t mask) {
        const lf_lora_adapter_t &e = s_entry[t0];
        const int32_t r = e.rank;
        const T *brow = static_cast<const T *>(e.b) + static_cast<int64_t>(c) * r;
        float acc[kTileRows] = {};
        if (r % kVec == 0) { // B rows then start on 16-byte boundaries: vector loads
            for (int32_t j = 0; j < r; j += kVec) {
                float w[kVec];
                load8(brow + j, w);
#pragma unroll
                for (int t = 0; t < kTileRows; ++t) {
                    if ((mask >> t) & 1u) {
#pragma unroll
                        for (int l = 0; l < kVec; ++l) {
                            acc[t] = fmaf(w[l], s_v[t * b.max_rank + j + l], acc[t]);
                        }
                    }
                }
            }
        } else {
            for (int32_t j = 0; j < r; ++j) {
                const float w = to_float(brow[j]);
#pragma unroll
                for (int t = 0; t < kTileRows; ++t) {
                    if ((mask >> t) & 1u) {
                        acc[t] = fmaf(w, s_v[t * b.max_rank + j], acc[t]);
                    }
                }
            }
        }
#pragma unroll
        for (int t = 0; t < kTileRows; ++t) {
            if ((mask >> t) & 1u) {
                T *out = y + row_offset(row0 + t, ldy) + c;
                *out = from_float<T>(fmaf(e.scale, acc[t], to_float(*out)));
            }
        }
    });
}

// ---- host side ----

bool aligned16_host(const void *p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

int32_t tiles(int32_t n_rows) { return (n_rows + kTileRows - 1) / kTileRows; }

int32_t column_blocks(int32_t h_out) { return (h_out + kThreads - 1) / kThreads; }

// Checks shared by the batch launchers: the host-visible fields, then the data pointers.
int check_launch(const lf_lora_batch_t *b, const void *in, const void *out) {
    if (const int rc = check_batch_shape(b); rc != LF_OK) {
        return rc;
    }
    if (b->n_rows > 0 && (in == nullptr || out == nullptr || !aligned16_host(in) ||
                          !aligned16_host(out))) {
        return LF_E_INVALID_ARGUMENT;
    }
    if (column_blocks(b->h_out) > 65535) { // gridDim.y limit
        return LF_E_UNSUPPORTED;
    }
    return LF_OK;
}

// A launch's own error as a status. Runtime calls return their own error, while
// cudaGetLastError would also give (and clear) an earlier, unrelated one of the caller's; a
// failed launch on a context that an earlier kernel broke returns that sticky error itself.
int status_of(cudaError_t e) {
    switch (e) {
    case cudaSuccess:
        return LF_OK;
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion:
        return LF_E_UNSUPPORTED;
    default:
        return LF_E_INTERNAL;
    }
}

// A call that just failed with `e` left it as the thread's last error: take it back, so that a
// caller checking cudaGetLastError after its own next launch does not blame that launch (the
// status already reports it). Sticky errors stay whatever one does.
void forget_own_error(cudaError_t e) {
    if (e != cudaSuccess && cudaPeekAtLastError() == e) {
        (void)cudaGetLastError();
    }
}

// Launches kernel<<<grid, kThreads, 0, stream>>>(args...) and returns the launch's own status.
template <class... Params, class... Args>
int launch_kernel(void (*kernel)(Params...), dim3 grid, cudaStream_t stream, Args... args) {
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = dim3(kThreads);
    config.dynamicSmemBytes = 0;
    config.stream = stream;
    const cudaError_t e = cudaLaunchKernelEx(&config, kernel, args...);
    forget_own_error(e);
    return status_of(e);
}

// ---- split-K of the shrink ----

// How the shrink cuts each dot product over h_in: chunks of chunk_vecs vectors (a multiple of 32,
// one vector per lane and step), at most kMaxChunks of them. It depends on h_in only, never on
// the grid, so that every launch of a shape sums the same pieces in the same order.
constexpr int32_t kMaxChunks = 16;
// A plain shrink grid smaller than this may be split (2 x the SMs of any GPU up to 256 SMs; the
// H100/H200 have 132): what bounds the apply workspace that holds the per-chunk partials.
constexpr int64_t kSplitBlockLimit = 512;

struct ChunkPlan {
    int32_t vecs;  // vectors of kVec elements per chunk
    int32_t count; // chunks
};

ChunkPlan chunk_plan(int32_t h_in) {
    const int32_t n_vec = h_in / kVec;
    const int32_t warp_steps = (n_vec + 31) / 32;
    const int32_t steps_per_chunk = (warp_steps + kMaxChunks - 1) / kMaxChunks;
    const int32_t vecs = steps_per_chunk * 32;
    return {vecs, (n_vec + vecs - 1) / vecs};
}

int64_t shrink_blocks(const lf_lora_batch_t &b) {
    return static_cast<int64_t>(tiles(b.n_rows)) * ((b.max_rank + kWarps - 1) / kWarps);
}

// Whether a shape may take the split path: then the apply workspace holds kMaxChunks partials of
// v's size. Depends on n_rows and max_rank only, as the workspace size must.
bool may_split(const lf_lora_batch_t &b) { return shrink_blocks(b) < kSplitBlockLimit; }

// Streaming multiprocessors of the current device (the one the launch goes to), read once per
// device; 0 when unknown (then nothing is split). Attribute queries are allowed during stream
// capture, though after the first call per device none is made.
int sm_count() {
    constexpr int kDevices = 64; // more are queried each time
    static std::atomic<int> cached[kDevices] = {};
    int device = 0;
    if (const cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) {
        forget_own_error(e);
        return 0;
    }
    if (device >= 0 && device < kDevices) {
        if (const int n = cached[device].load(std::memory_order_relaxed); n > 0) {
            return n;
        }
    }
    int n = 0;
    if (const cudaError_t e = cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device);
        e != cudaSuccess) {
        forget_own_error(e);
        return 0;
    }
    if (device >= 0 && device < kDevices) {
        cached[device].store(n, std::memory_order_relaxed);
    }
    return n;
}

// Blocks along h_in for each (tile, rank group): 1 unless the plain grid would leave the GPU
// mostly idle (fewer blocks than 2 per SM) and the caller has room for the partials; then
// enough to reach about 2 blocks per SM, at most one per chunk.
int32_t shrink_splits(const lf_lora_batch_t &b, const ChunkPlan &chunks, bool room_for_parts) {
    if (!room_for_parts || chunks.count < 2 || !may_split(b)) {
        return 1;
    }
    const int64_t target = std::min<int64_t>(2 * static_cast<int64_t>(sm_count()), kSplitBlockLimit);
    const int64_t blocks = shrink_blocks(b);
    if (blocks >= target) {
        return 1;
    }
    return static_cast<int32_t>(std::min<int64_t>(chunks.count, (target + blocks - 1) / blocks));
}

// ---- launches ----

// Writes v (splits 1), or the per-chunk partials at v + k * part_stride (splits > 1).
template <class T>
int launch_shrink(const lf_lora_batch_t &b, const void *x, float *v, const ChunkPlan &chunks,
                  int32_t splits, int64_t part_stride, int32_t *error, cudaStream_t stream) {
    const dim3 grid(static_cast<unsigned>(tiles(b.n_rows)),
                    static_cast<unsigned>((b.max_rank + kWarps - 1) / kWarps),
                    static_cast<unsigned>(splits));
    const auto *xt = static_cast<const T *>(x);
    if (splits > 1) {
        return launch_kernel(shrink_kernel<T, true>, grid, stream, b, xt, v, chunks.vecs,
                             chunks.count, part_stride, error);
    }
    return launch_kernel(shrink_kernel<T, false>, grid, stream, b, xt, v, chunks.vecs,
                         chunks.count, part_stride, error);
}

template <class T>
int launch_expand(const lf_lora_batch_t &b, const float *v, int32_t n_parts, int64_t part_stride,
                  void *y, int32_t *error, cudaStream_t stream) {
    const dim3 grid(static_cast<unsigned>(tiles(b.n_rows)),
                    static_cast<unsigned>(column_blocks(b.h_out)));
    return launch_kernel(expand_kernel<T>, grid, stream, b, v, n_parts, part_stride,
                         static_cast<T *>(y), error);
}

// Launches shrink, expand or both (the fused call) for element type T.
enum class Op { shrink, expand, apply };

// part_stride: floats between the partials in v, > 0 only for the fused call, whose workspace
// then has room for kMaxChunks of them (may_split); 0 where v is the caller's (no split).
template <class T>
int launch(Op op, const lf_lora_batch_t &b, const void *in, void *out, float *v,
           int64_t part_stride, int32_t *error, cudaStream_t stream) {
    int32_t n_parts = 1;
    if (op != Op::expand) {
        const ChunkPlan chunks = chunk_plan(b.h_in);
        const int32_t splits = shrink_splits(b, chunks, part_stride > 0);
        if (const int rc = launch_shrink<T>(b, in, v, chunks, splits, part_stride, error, stream);
            rc != LF_OK) {
            return rc;
        }
        n_parts = splits > 1 ? chunks.count : 1;
    }
    if (op == Op::shrink) {
        return LF_OK;
    }
    return launch_expand<T>(b, v, n_parts, part_stride, out, error, stream);
}

// Picks the element type (the shape check already rejected unknown dtypes). Written as a switch
// rather than a C++20 template lambda because nvcc compiles this file as C++17.
int launch_typed(Op op, const lf_lora_batch_t &b, const void *in, void *out, float *v,
                 int64_t part_stride, int32_t *error, cudaStream_t stream) {
    switch (b.dtype) {
    case LF_DTYPE_F32:
        return launch<float>(op, b, in, out, v, part_stride, error, stream);
    case LF_DTYPE_F16:
        return launch<__half>(op, b, in, out, v, part_stride, error, stream);
    case LF_DTYPE_BF16:
        return launch<__nv_bfloat16>(op, b, in, out, v, part_stride, error, stream);
    default:
        return LF_E_INVALID_ARGUMENT;
    }
}

size_t round_up_256(size_t n) { return (n + 255u) & ~size_t{255u}; }

// Bytes of v, rounded so that each partial starts 256-byte aligned.
size_t v_bytes(const lf_lora_batch_t &b) {
    return round_up_256(static_cast<size_t>(b.n_rows) * static_cast<size_t>(b.max_rank) *
                        sizeof(float));
}

// v, or room for the split shrink's partials where the shape may split (at most kMaxChunks x
// kSplitBlockLimit blocks x 8 rows x 8 ranks x 4 bytes = 2 MiB).
size_t apply_workspace_bytes(const lf_lora_batch_t &b) {
    return v_bytes(b) * (may_split(b) ? kMaxChunks : 1);
}

cudaDataType_t blas_type(int32_t dtype) {
    return dtype == LF_DTYPE_F32 ? CUDA_R_32F : dtype == LF_DTYPE_F16 ? CUDA_R_16F : CUDA_R_16BF;
}

// Puts the handle on the call's stream and in host pointer mode, changing only what differs,
// and puts back on every path out of the cuBLAS launcher what it changed. Only what differs:
// cublasSetStream also resets the handle's workspace to cuBLAS's own pool, dropping one the
// caller set with cublasSetWorkspace (which graph capture needs), both here and on restore.
class BlasStateGuard {
public:
    BlasStateGuard(cublasHandle_t h, cudaStream_t stream) : h_(h) {
        ok_ = cublasGetStream(h_, &saved_stream_) == CUBLAS_STATUS_SUCCESS &&
              cublasGetPointerMode(h_, &saved_mode_) == CUBLAS_STATUS_SUCCESS;
        if (ok_ && saved_stream_ != stream) {
            ok_ = cublasSetStream(h_, stream) == CUBLAS_STATUS_SUCCESS;
            stream_changed_ = ok_;
        }
        if (ok_ && saved_mode_ != CUBLAS_POINTER_MODE_HOST) {
            ok_ = cublasSetPointerMode(h_, CUBLAS_POINTER_MODE_HOST) == CUBLAS_STATUS_SUCCESS;
            mode_changed_ = ok_;
        }
    }
    ~BlasStateGuard() {
        if (stream_changed_) {
            cublasSetStream(h_, saved_stream_);
        }
        if (mode_changed_) {
            cublasSetPointerMode(h_, saved_mode_);
        }
    }
    BlasStateGuard(const BlasStateGuard &) = delete;
    BlasStateGuard &operator=(const BlasStateGuard &) = delete;
    bool ok() const { return ok_; }

private:
    cublasHandle_t h_;
    cudaStream_t saved_stream_ = nullptr;
    cublasPointerMode_t saved_mode_ = CUBLAS_POINTER_MODE_HOST;
    bool stream_changed_ = false;
    bool mode_changed_ = false;
    bool ok_ = false;
};

int check_single(int32_t dtype, int32_t n_rows, int32_t h_in, int32_t h_out, int64_t ldx,
                 int64_t ldy, const lf_lora_adapter_t *ad, size_t *workspace_bytes) {
    if (dtype_size(dtype) == 0 || n_rows < 0 || !valid_hidden(h_in) || !valid_hidden(h_out) ||
        !valid_ld(ldx, h_in) || !valid_ld(ldy, h_out) || ad == nullptr ||
        workspace_bytes == nullptr) {
        return LF_E_INVALID_ARGUMENT;
    }
    if (ad->dtype != dtype && dtype_size(ad->dtype) != 0) {
        return LF_E_UNSUPPORTED;
    }
    if (!adapter_entry_ok(*ad, dtype, LF_LORA_MAX_RANK) || !std::isfinite(ad->scale) ||
        !aligned16_host(ad->a) || !aligned16_host(ad->b)) {
        return LF_E_INVALID_ARGUMENT;
    }
    if (effective_ld(ldx, h_in) > INT_MAX || effective_ld(ldy, h_out) > INT_MAX) {
        return LF_E_UNSUPPORTED; // cublasGemmEx takes 32-bit leading dimensions
    }
    return LF_OK;
}

} // namespace
} // namespace loraflip::lora

using namespace loraflip::lora;

extern "C" {

int lf_lora_cuda_shrink(const lf_lora_batch_t *batch, const void *x, float *v,
                        int32_t *device_error, lf_lora_stream_t stream) {
    try {
        if (const int rc = check_launch(batch, x, v); rc != LF_OK) {
            return rc;
        }
        if (batch->n_rows == 0) {
            return LF_OK;
        }
        return launch_typed(Op::shrink, *batch, x, nullptr, v, 0, device_error, stream);
    } catch (...) {
        return LF_E_INTERNAL;
    }
}

int lf_lora_cuda_expand(const lf_lora_batch_t *batch, const float *v, void *y,
                        int32_t *device_error, lf_lora_stream_t stream) {
    try {
        if (const int rc = check_launch(batch, v, y); rc != LF_OK) {
            return rc;
        }
        if (batch->n_rows == 0) {
            return LF_OK;
        }
        // The expand only reads v; the shared launcher takes it non-const for the shrink.
        return launch_typed(Op::expand, *batch, nullptr, y, const_cast<float *>(v), 0,
                            device_error, stream);
    } catch (...) {
        return LF_E_INTERNAL;
    }
}

int lf_lora_cuda_apply(const lf_lora_batch_t *batch, const void *x, void *y, void *workspace,
                       size_t *workspace_bytes, int32_t *device_error, lf_lora_stream_t stream) {
    try {
        if (workspace_bytes == nullptr) {
            return LF_E_INVALID_ARGUMENT;
        }
        // The size depends on the batch shape only, so it can be asked for before x and y exist.
        if (const int rc = check_batch_shape(batch); rc != LF_OK) {
            return rc;
        }
        const size_t need = apply_workspace_bytes(*batch);
        if (workspace == nullptr) {
            *workspace_bytes = need;
            return LF_OK;
        }
        if (const int rc = check_launch(batch, x, y); rc != LF_OK) {
            return rc;
        }
        if (*workspace_bytes < need || !aligned16_host(workspace)) {
            return LF_E_INVALID_ARGUMENT;
        }
        if (batch->n_rows == 0) {
            return LF_OK;
        }
        // The workspace has room for the split shrink's partials where the shape may split.
        const int64_t part_stride =
            may_split(*batch) ? static_cast<int64_t>(v_bytes(*batch) / sizeof(float)) : 0;
        return launch_typed(Op::apply, *batch, x, y, static_cast<float *>(workspace), part_stride,
                            device_error, stream);
    } catch (...) {
        return LF_E_INTERNAL;
    }
}

int lf_lora_cuda_apply_single(int32_t dtype, int32_t n_rows, int32_t h_in, int32_t h_out,
                              const void *x, int64_t ldx, void *y, int64_t ldy,
                              const lf_lora_adapter_t *adapter, void *workspace,
                              size_t *workspace_bytes, lf_lora_cublas_t cublas,
                              lf_lora_stream_t stream) {
    try {
        if (const int rc = check_single(dtype, n_rows, h_in, h_out, ldx, ldy, adapter,
                                        workspace_bytes);
            rc != LF_OK) {
            return rc;
        }
        const int32_t r = adapter->rank;
        const size_t need = round_up_256(static_cast<size_t>(n_rows) * static_cast<size_t>(r) *
                                         static_cast<size_t>(dtype_size(dtype)));
        if (workspace == nullptr) {
            *workspace_bytes = need;
            return LF_OK;
        }
        if (*workspace_bytes < need || cublas == nullptr) {
            return LF_E_INVALID_ARGUMENT;
        }
        if (n_rows == 0) {
            return LF_OK;
        }
        if (x == nullptr || y == nullptr || !aligned16_host(x) || !aligned16_host(y)) {
            return LF_E_INVALID_ARGUMENT;
        }
        BlasStateGuard guard(cublas, stream);
        if (!guard.ok()) {
            return LF_E_INTERNAL;
        }
        const cudaDataType_t t = blas_type(dtype);
        const int lx = static_cast<int>(effective_ld(ldx, h_in));
        const int ly = static_cast<int>(effective_ld(ldy, h_out));
        // cuBLAS is column-major: a row-major [rows, cols] matrix is its transpose there.
        // GEMM 1: V^T[r, n] = A[r, h_in] * X^T[h_in, n], i.e. row-major V = X A^T.
        const float one = 1.0f, zero = 0.0f;
        if (cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, r, n_rows, h_in, &one, adapter->a, t,
                         h_in, x, t, lx, &zero, workspace, t, r, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
            return LF_E_INTERNAL;
        }
        // GEMM 2: Y^T[h_out, n] += scale * B[h_out, r] * V^T[r, n], i.e. Y += scale V B^T.
        const float scale = adapter->scale;
        if (cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, h_out, n_rows, r, &scale, adapter->b,
                         t, r, workspace, t, r, &one, y, t, ly, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
            return LF_E_INTERNAL;
        }
        return LF_OK;
    } catch (...) {
        return LF_E_INTERNAL;
    }
}

} // extern "C"
