// CPU implementation of LoRA shrink / expand / apply. It is both the host-memory path of a
// generation loop and the reference the CUDA kernels are tested against, so every row's result
// depends only on that row's inputs, never on how rows were grouped into tiles or threads:
// results are bit-identical for any thread count and between fused and separate calls.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <thread>
#include <vector>

#include "lora_convert.h"
#include "lora_index.h"
#include "lora_internal.h"

namespace loraflip::lora {
namespace {

// Rows of one adapter that the shrink handles together, so each converted A row is reused this
// often. 8 keeps the converted x tile (8 * h_in floats) inside L2 for hidden sizes up to 8192.
constexpr int32_t kShrinkRows = 8;
// Rows of one adapter per expand work item: the converted B block is reused this often, so its
// conversion and transpose become negligible, while a prefill still splits into enough items to
// share among threads.
constexpr int32_t kExpandRows = 64;
// Columns of y per expand work item: the transposed B block (rank * kColChunk floats, 256 KiB at
// rank 128) stays in L2. A multiple of 8 because h_out is.
constexpr int32_t kColChunk = 512;
// Row stride of the transposed block. Rows 2 KiB apart all map to the same few L1 sets (measured:
// the transpose then took a third of the expand time), so pad by one cache line.
constexpr int64_t kBtStride = kColChunk + 16;
// Below this many multiply-adds per thread a call stays on fewer threads: starting a std::thread
// costs tens of microseconds, about what one core needs for this much work.
constexpr int64_t kMinWorkPerThread = int64_t{1} << 20;

std::atomic<int32_t> g_cpu_threads{0};

int32_t thread_budget() {
    const int32_t n = g_cpu_threads.load(std::memory_order_relaxed);
    if (n > 0) {
        return n;
    }
    return static_cast<int32_t>(std::max(1u, std::thread::hardware_concurrency()));
}

// Rows order[first .. first + count) all use `adapter`; an expand item also covers only the
// columns [c0, c0 + cn).
struct WorkItem {
    int32_t adapter;
    int32_t first;
    int32_t count;
    int32_t c0;
    int32_t cn;
};

// Rows with an adapter, grouped by adapter (stable): a counting sort, deterministic and
// O(n_rows + n_adapters), which turns the per-row (BGMV) and per-segment (SGMV) cases into the
// same loops.
struct RowGroups {
    std::vector<int32_t> order;
    std::vector<int32_t> start; // rows of adapter a are order[start[a] .. start[a + 1])
};

int32_t adapter_of(const lf_lora_batch_t &b, int32_t row) {
    return adapter_of_row(b.select, b.row_adapter, b.seg_offsets, b.seg_adapter, b.n_segments,
                          row);
}

RowGroups group_rows(const lf_lora_batch_t &b) {
    RowGroups g;
    g.start.assign(static_cast<size_t>(b.n_adapters) + 1, 0);
    std::vector<int32_t> which(static_cast<size_t>(b.n_rows));
    for (int32_t row = 0; row < b.n_rows; ++row) {
        which[row] = adapter_of(b, row);
        if (which[row] >= 0) {
            ++g.start[which[row] + 1];
        }
    }
    for (int32_t a = 0; a < b.n_adapters; ++a) {
        g.start[a + 1] += g.start[a];
    }
    g.order.resize(static_cast<size_t>(g.start[b.n_adapters]));
    std::vector<int32_t> fill(g.start.begin(), g.start.end() - 1);
    for (int32_t row = 0; row < b.n_rows; ++row) {
        if (which[row] >= 0) {
            g.order[fill[which[row]]++] = row;
        }
    }
    return g;
}

std::vector<WorkItem> shrink_items(const lf_lora_batch_t &b, const RowGroups &g) {
    std::vector<WorkItem> items;
    for (int32_t a = 0; a < b.n_adapters; ++a) {
        for (int32_t first = g.start[a]; first < g.start[a + 1]; first += kShrinkRows) {
            items.push_back({a, first, std::min(kShrinkRows, g.start[a + 1] - first), 0, 0});
        }
    }
    return items;
}

std::vector<WorkItem> expand_items(const lf_lora_batch_t &b, const RowGroups &g) {
    std::vector<WorkItem> items;
    for (int32_t a = 0; a < b.n_adapters; ++a) {
        for (int32_t first = g.start[a]; first < g.start[a + 1]; first += kExpandRows) {
            const int32_t count = std::min(kExpandRows, g.start[a + 1] - first);
            for (int32_t c0 = 0; c0 < b.h_out; c0 += kColChunk) {
                items.push_back({a, first, count, c0, std::min(kColChunk, b.h_out - c0)});
            }
        }
    }
    return items;
}

// ---- inner loops. Counts are multiples of 8. Written with GCC/Clang generic vectors (4 floats:
// SSE2 on baseline x86-64, NEON on arm64) because GCC at -O2 keeps a small accumulator array in
// memory; explicit vectors also fix the summation order in the source, so results do not depend
// on what the vectorizer decides. ----

using v4 = float __attribute__((vector_size(16)));

inline v4 load4(const float *p) {
    v4 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline void store4(float *p, v4 v) { std::memcpy(p, &v, sizeof v); }

template <class T> void load_f32(const T *__restrict src, float *__restrict dst, int64_t n) {
    for (int64_t k = 0; k < n; k += 8) {
        for (int l = 0; l < 8; ++l) {
            dst[k + l] = to_f32(src[k + l]);
        }
    }
}

// 16 running sums (four vectors) hide the add latency; the tail of 8 uses the first two.
struct Dot16 {
    v4 s0{}, s1{}, s2{}, s3{};

    void add16(v4 a0, v4 a1, v4 a2, v4 a3, const float *b) {
        s0 += a0 * load4(b);
        s1 += a1 * load4(b + 4);
        s2 += a2 * load4(b + 8);
        s3 += a3 * load4(b + 12);
    }
    void add8(v4 a0, v4 a1, const float *b) {
        s0 += a0 * load4(b);
        s1 += a1 * load4(b + 4);
    }
    float sum() const {
        const v4 u = (s0 + s2) + (s1 + s3);
        return (u[0] + u[2]) + (u[1] + u[3]);
    }
};

// Dot products of one A row with two x rows; sharing the loads of `a` halves the memory traffic.
// Each result is bit-identical to dot1 of the same pair.
void dot2(const float *a, const float *x0, const float *x1, int64_t n, float *out0,
          float *out1) {
    Dot16 d0, d1;
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        const v4 a0 = load4(a + k), a1 = load4(a + k + 4), a2 = load4(a + k + 8),
                 a3 = load4(a + k + 12);
        d0.add16(a0, a1, a2, a3, x0 + k);
        d1.add16(a0, a1, a2, a3, x1 + k);
    }
    if (k < n) {
        const v4 a0 = load4(a + k), a1 = load4(a + k + 4);
        d0.add8(a0, a1, x0 + k);
        d1.add8(a0, a1, x1 + k);
    }
    *out0 = d0.sum();
    *out1 = d1.sum();
}

float dot1(const float *a, const float *x, int64_t n) {
    Dot16 d;
    int64_t k = 0;
    for (; k + 16 <= n; k += 16) {
        d.add16(load4(a + k), load4(a + k + 4), load4(a + k + 8), load4(a + k + 12), x + k);
    }
    if (k < n) {
        d.add8(load4(a + k), load4(a + k + 4), x + k);
    }
    return d.sum();
}

// y[0:8] = round(y[0:8] + scale * acc[0:8])
template <class T>
[[gnu::always_inline]] inline void add_scaled8(T *__restrict y, float scale,
                                               const float *__restrict acc) {
    for (int l = 0; l < 8; ++l) {
        y[l] = from_f32<T>(to_f32(y[l]) + scale * acc[l]);
    }
}

// Per-thread buffers of the shrink, sized once per call.
struct ShrinkScratch {
    std::vector<float> x; // [kShrinkRows][h_in] converted x rows
    std::vector<float> w; // [h_in] one converted A row
    std::vector<float> v; // [kShrinkRows][rank] results
    explicit ShrinkScratch(const lf_lora_batch_t &batch)
        : x(static_cast<size_t>(kShrinkRows) * batch.h_in), w(static_cast<size_t>(batch.h_in)),
          v(static_cast<size_t>(kShrinkRows) * batch.max_rank) {}
};

// Per-thread buffers of the expand.
struct ExpandScratch {
    std::vector<float> block; // [kColChunk][rank] converted B block
    std::vector<float> bt;    // [rank][kBtStride] the same, transposed
    explicit ExpandScratch(const lf_lora_batch_t &batch)
        : block(static_cast<size_t>(batch.max_rank) * kColChunk),
          bt(static_cast<size_t>(batch.max_rank) * kBtStride) {}
};

// v[row, 0:r] = A x_row for the item's rows.
template <class T>
void shrink_item(const lf_lora_batch_t &b, const WorkItem &it, const int32_t *rows, const T *x,
                 float *v, ShrinkScratch &s) {
    const lf_lora_adapter_t &ad = b.adapters[it.adapter];
    const int64_t ldx = effective_ld(b.ldx, b.h_in);
    auto x_row = [&](int32_t t) { return &s.x[static_cast<size_t>(t) * b.h_in]; };
    auto v_at = [&](int32_t t, int32_t j) { return &s.v[static_cast<size_t>(t) * ad.rank + j]; };
    for (int32_t t = 0; t < it.count; ++t) {
        load_f32(x + row_offset(rows[t], ldx), x_row(t), b.h_in);
    }
    const T *a = static_cast<const T *>(ad.a);
    for (int32_t j = 0; j < ad.rank; ++j) {
        load_f32(a + static_cast<int64_t>(j) * b.h_in, s.w.data(), b.h_in);
        int32_t t = 0;
        for (; t + 2 <= it.count; t += 2) {
            dot2(s.w.data(), x_row(t), x_row(t + 1), b.h_in, v_at(t, j), v_at(t + 1, j));
        }
        if (t < it.count) {
            *v_at(t, j) = dot1(s.w.data(), x_row(t), b.h_in);
        }
    }
    for (int32_t t = 0; t < it.count; ++t) {
        std::memcpy(v + row_offset(rows[t], b.max_rank), v_at(t, 0),
                    sizeof(float) * static_cast<size_t>(ad.rank));
    }
}

// Columns [c, c + 8) of one row (n = 1) or four rows (n = 4): y += scale * (v_row . B^T), with
// bt pointing at column c of the transposed block. Four rows give eight independent vector
// sums, enough to hide the add latency (one row alone is latency-bound), within SSE's 16
// registers. Spelled out per row because GCC at -O2 keeps arrays of vectors in memory. Each
// element sums j = 0..r-1 in order whatever n is.
template <class T, int n>
void expand_block(const lf_lora_batch_t &b, const lf_lora_adapter_t &ad, const int32_t *rows,
                  const float *v, const float *bt, T *y, int64_t ldy, int32_t col) {
    static_assert(n == 1 || n == 4);
    const float *v0 = v + row_offset(rows[0], b.max_rank);
    const float *v1 = n == 4 ? v + row_offset(rows[1], b.max_rank) : v0;
    const float *v2 = n == 4 ? v + row_offset(rows[2], b.max_rank) : v0;
    const float *v3 = n == 4 ? v + row_offset(rows[3], b.max_rank) : v0;
    v4 lo0{}, hi0{}, lo1{}, hi1{}, lo2{}, hi2{}, lo3{}, hi3{};
    for (int32_t j = 0; j < ad.rank; ++j) {
        const v4 b_lo = load4(bt + j * kBtStride);
        const v4 b_hi = load4(bt + j * kBtStride + 4);
        lo0 += v0[j] * b_lo;
        hi0 += v0[j] * b_hi;
        if constexpr (n == 4) {
            lo1 += v1[j] * b_lo;
            hi1 += v1[j] * b_hi;
            lo2 += v2[j] * b_lo;
            hi2 += v2[j] * b_hi;
            lo3 += v3[j] * b_lo;
            hi3 += v3[j] * b_hi;
        }
    }
    const v4 los[4] = {lo0, lo1, lo2, lo3};
    const v4 his[4] = {hi0, hi1, hi2, hi3};
    for (int t = 0; t < n; ++t) {
        float acc[8];
        store4(acc, los[t]);
        store4(acc + 4, his[t]);
        add_scaled8(y + row_offset(rows[t], ldy) + col, ad.scale, acc);
    }
}

constexpr int kExpandBlock = 4;

// y[row, c0:c0+cn] += scale * B[c0:c0+cn, :] v[row] for the item's rows. B's block is
// transposed first so the inner loop runs along contiguous columns.
template <class T>
void expand_item(const lf_lora_batch_t &b, const WorkItem &it, const int32_t *rows,
                 const float *v, T *y, ExpandScratch &s) {
    const lf_lora_adapter_t &ad = b.adapters[it.adapter];
    const int64_t ldy = effective_ld(b.ldy, b.h_out);
    const int32_t r = ad.rank;
    load_f32(static_cast<const T *>(ad.b) + int64_t{it.c0} * r, s.block.data(), int64_t{it.cn} * r);
    for (int32_t c = 0; c < it.cn; ++c) {
        for (int32_t j = 0; j < r; ++j) {
            s.bt[static_cast<size_t>(j) * kBtStride + c] = s.block[static_cast<size_t>(c) * r + j];
        }
    }
    for (int32_t c = 0; c < it.cn; c += 8) {
        int32_t t = 0;
        for (; t + kExpandBlock <= it.count; t += kExpandBlock) {
            expand_block<T, kExpandBlock>(b, ad, rows + t, v, s.bt.data() + c, y, ldy, it.c0 + c);
        }
        for (; t < it.count; ++t) {
            expand_block<T, 1>(b, ad, rows + t, v, s.bt.data() + c, y, ldy, it.c0 + c);
        }
    }
}

// Runs fn(item, scratch) for every item over up to thread_budget() threads, each taking a
// contiguous range of items of about equal work. The calling thread takes the first range.
template <class Scratch, class Fn>
void run_items(const lf_lora_batch_t &b, const std::vector<WorkItem> &items, Fn fn) {
    const size_t n_items = items.size();
    if (n_items == 0) {
        return;
    }
    std::vector<int64_t> cum(n_items + 1, 0);
    for (size_t i = 0; i < n_items; ++i) {
        const WorkItem &it = items[i];
        const int64_t cols = it.cn > 0 ? it.cn : b.h_in;
        cum[i + 1] = cum[i] + int64_t{it.count} * b.adapters[it.adapter].rank * cols;
    }
    const int64_t total = cum[n_items];
    int64_t n_threads = std::min<int64_t>(thread_budget(), static_cast<int64_t>(n_items));
    n_threads = std::max<int64_t>(1, std::min(n_threads, total / kMinWorkPerThread));

    auto work = [&](int64_t k) {
        // Items whose cumulative start falls in this thread's share of the total.
        const auto first = static_cast<size_t>(
            std::lower_bound(cum.begin(), cum.end() - 1, total * k / n_threads) - cum.begin());
        const size_t last =
            k == n_threads - 1
                ? n_items
                : static_cast<size_t>(std::lower_bound(cum.begin(), cum.end() - 1,
                                                       total * (k + 1) / n_threads) -
                                      cum.begin());
        if (first < last) {
            Scratch s(b);
            for (size_t i = first; i < last; ++i) {
                fn(items[i], s);
            }
        }
    };

    std::vector<std::exception_ptr> errors(static_cast<size_t>(n_threads));
    std::vector<std::thread> threads;
    threads.reserve(static_cast<size_t>(n_threads - 1));
    try {
        for (int64_t k = 1; k < n_threads; ++k) {
            threads.emplace_back([&, k] {
                try {
                    work(k);
                } catch (...) {
                    errors[k] = std::current_exception();
                }
            });
        }
        work(0);
    } catch (...) {
        errors[0] = std::current_exception();
    }
    for (auto &t : threads) {
        t.join();
    }
    for (auto &e : errors) {
        if (e) {
            std::rethrow_exception(e);
        }
    }
}

template <class T>
void shrink_rows(const lf_lora_batch_t &b, const RowGroups &g, const T *x, float *v) {
    run_items<ShrinkScratch>(b, shrink_items(b, g), [&](const WorkItem &it, ShrinkScratch &s) {
        shrink_item(b, it, &g.order[it.first], x, v, s);
    });
}

template <class T>
void expand_rows(const lf_lora_batch_t &b, const RowGroups &g, const float *v, T *y) {
    run_items<ExpandScratch>(b, expand_items(b, g), [&](const WorkItem &it, ExpandScratch &s) {
        expand_item(b, it, &g.order[it.first], v, y, s);
    });
}

template <class T> void shrink_typed(const lf_lora_batch_t &b, const T *x, float *v) {
    shrink_rows(b, group_rows(b), x, v);
}

template <class T> void expand_typed(const lf_lora_batch_t &b, const float *v, T *y) {
    expand_rows(b, group_rows(b), v, y);
}

// The fused call is the two phases over a private intermediate: the expand needs every row of
// an adapter's shrink to reuse each B block across them, and the intermediate is small
// (n_rows * max_rank floats). Same bits as the separate calls by construction.
template <class T> void apply_typed(const lf_lora_batch_t &b, const T *x, T *y) {
    const RowGroups g = group_rows(b);
    std::vector<float> v(static_cast<size_t>(b.n_rows) * static_cast<size_t>(b.max_rank));
    shrink_rows(b, g, x, v.data());
    expand_rows(b, g, v.data(), y);
}

// Calls fn with a null pointer of the element type of `dtype`, to pick a template instance.
template <class Fn> void with_dtype(int32_t dtype, Fn fn) {
    switch (dtype) {
    case LF_DTYPE_F32:
        fn(static_cast<float *>(nullptr));
        break;
    case LF_DTYPE_F16:
        fn(static_cast<f16 *>(nullptr));
        break;
    case LF_DTYPE_BF16:
        fn(static_cast<bf16 *>(nullptr));
        break;
    default:
        break; // unreachable: check_batch_shape rejected it
    }
}

int check_used_adapter(const lf_lora_batch_t &b, int32_t index, std::vector<char> &seen) {
    if (!adapter_index_ok(index, b.n_adapters)) {
        return LF_E_INVALID_ARGUMENT;
    }
    if (index < 0 || seen[index]) {
        return LF_OK;
    }
    seen[index] = 1;
    const lf_lora_adapter_t &e = b.adapters[index];
    if (e.a != nullptr && e.b != nullptr && e.rank >= 1 && e.rank <= b.max_rank &&
        e.dtype != b.dtype && dtype_size(e.dtype) != 0) {
        return LF_E_UNSUPPORTED; // a well-formed entry of another type: mixing not supported
    }
    if (!adapter_entry_ok(e, b.dtype, b.max_rank) || !std::isfinite(e.scale)) {
        return LF_E_INVALID_ARGUMENT;
    }
    return LF_OK;
}

} // namespace

void set_cpu_threads(int32_t n) { g_cpu_threads.store(n, std::memory_order_relaxed); }

int check_batch_shape(const lf_lora_batch_t *b) {
    if (b == nullptr || dtype_size(b->dtype) == 0 || b->n_rows < 0 || !valid_hidden(b->h_in) ||
        !valid_hidden(b->h_out) || !valid_ld(b->ldx, b->h_in) || !valid_ld(b->ldy, b->h_out) ||
        b->max_rank < 1 || b->max_rank > LF_LORA_MAX_RANK || b->n_adapters < 0 ||
        (b->n_adapters > 0 && b->adapters == nullptr)) {
        return LF_E_INVALID_ARGUMENT;
    }
    switch (b->select) {
    case LF_LORA_SELECT_ROWS:
        return b->n_rows > 0 && b->row_adapter == nullptr ? LF_E_INVALID_ARGUMENT : LF_OK;
    case LF_LORA_SELECT_SEGMENTS:
        if (b->n_segments < 0 || b->seg_offsets == nullptr ||
            (b->n_segments > 0 && b->seg_adapter == nullptr)) {
            return LF_E_INVALID_ARGUMENT;
        }
        return LF_OK;
    default:
        return LF_E_INVALID_ARGUMENT;
    }
}

int check_batch_data(const lf_lora_batch_t &b) {
    std::vector<char> seen(static_cast<size_t>(b.n_adapters), 0);
    if (b.select == LF_LORA_SELECT_ROWS) {
        for (int32_t row = 0; row < b.n_rows; ++row) {
            if (const int rc = check_used_adapter(b, b.row_adapter[row], seen); rc != LF_OK) {
                return rc;
            }
        }
        return LF_OK;
    }
    if (!segment_offsets_ok(b.seg_offsets, b.n_segments, b.n_rows)) {
        return LF_E_INVALID_ARGUMENT;
    }
    for (int32_t s = 0; s < b.n_segments; ++s) {
        if (const int rc = check_used_adapter(b, b.seg_adapter[s], seen); rc != LF_OK) {
            return rc;
        }
    }
    return LF_OK;
}

void cpu_shrink(const lf_lora_batch_t &b, const void *x, float *v) {
    with_dtype(b.dtype, [&]<class T>(T *) { shrink_typed(b, static_cast<const T *>(x), v); });
}

void cpu_expand(const lf_lora_batch_t &b, const float *v, void *y) {
    with_dtype(b.dtype, [&]<class T>(T *) { expand_typed(b, v, static_cast<T *>(y)); });
}

void cpu_apply(const lf_lora_batch_t &b, const void *x, void *y) {
    with_dtype(b.dtype,
               [&]<class T>(T *) { apply_typed(b, static_cast<const T *>(x), static_cast<T *>(y)); });
}

} // namespace loraflip::lora
