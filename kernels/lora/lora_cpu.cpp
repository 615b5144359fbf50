// CPU implementation of LoRA shrink / expand / apply. It is both the host-memory path of a
// generation loop and the reference the CUDA kernels are tested against, so every row's result
// depends only on that row's inputs, never on how rows were grouped into tiles or threads:
// results are bit-identical for any thread count and between fused and separate calls.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <memory>
#include <thread>
#include <vector>

#include "kernels/isa.hpp"
#include "lora_cpu_isa.h"
#include "lora_index.h"
#include "lora_internal.h"

namespace loraflip::lora {
namespace {

// Rows of one adapter per shrink work item (the kernels convert them into an 8 * h_in float tile,
// inside L2 for hidden sizes up to 8192); small enough that a decode batch still splits into
// items for every thread.
constexpr int32_t kShrinkRows = 8;
// Rows of one adapter per expand work item: each B column chunk (converted and transposed once per
// thread and adapter) is read this many times while it is in cache, while a prefill still splits
// into enough items to share among threads.
constexpr int32_t kExpandRows = 64;
// Columns of y per expand work item: the transposed B columns it reads (rank * kColChunk floats,
// 256 KiB at rank 128) stay in L2. A multiple of 16 (the widest vector) because h_out is
// converted and cached per chunk of this width.
constexpr int32_t kColChunk = 512;
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

// Per-thread buffers of the shrink, sized once per call (no zero-fill: the kernels write what
// they read).
struct ShrinkScratch {
    std::unique_ptr<float[]> x, a;
    ShrinkBuffers buf{};
    explicit ShrinkScratch(const lf_lora_batch_t &batch) {
        // h_in padded to kDotLanes, plus one cache line: rows a power of two apart would all map
        // to the same few L1 sets.
        const int64_t stride = (batch.h_in + kDotLanes - 1) / kDotLanes * kDotLanes + 16;
        x.reset(new float[static_cast<size_t>(kShrinkRows * stride)]);
        a.reset(new float[static_cast<size_t>(batch.max_rank * stride)]);
        buf = {x.get(), a.get(), stride, -1};
    }
};

// Per-thread buffers of the expand: B transposed, one column chunk converted at a time when an
// item first needs it, and kept while later items use the same adapter.
struct ExpandScratch {
    std::unique_ptr<float[]> bt;
    std::vector<int32_t> chunk_adapter;
    ExpandBuffers buf{};
    explicit ExpandScratch(const lf_lora_batch_t &batch)
        : chunk_adapter(static_cast<size_t>((batch.h_out + kColChunk - 1) / kColChunk), -1) {
        const int64_t stride = (batch.h_out + kDotLanes - 1) / kDotLanes * kDotLanes + 16;
        bt.reset(new float[static_cast<size_t>(batch.max_rank * stride)]);
        buf = {bt.get(), stride, chunk_adapter.data(), kColChunk};
    }
};

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

void shrink_rows(const CpuKernels &k, const lf_lora_batch_t &b, const RowGroups &g,
                 const void *x, float *v) {
    run_items<ShrinkScratch>(b, shrink_items(b, g), [&](const WorkItem &it, ShrinkScratch &s) {
        k.shrink(b, it.adapter, &g.order[it.first], it.count, x, v, s.buf);
    });
}

void expand_rows(const CpuKernels &k, const lf_lora_batch_t &b, const RowGroups &g,
                 const float *v, void *y) {
    run_items<ExpandScratch>(b, expand_items(b, g), [&](const WorkItem &it, ExpandScratch &s) {
        k.expand(b, it.adapter, &g.order[it.first], it.count, it.c0, it.cn, v, y, s.buf);
    });
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

// ---- instruction-set variants, chosen once at first use ----

bool always_supported() { return true; }

#if defined(LF_LORA_HAVE_AVX2)
// __builtin_cpu_supports also checks that the OS saves the wide registers (XCR0), not only CPUID.
bool avx2_supported() {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
}
#endif
#if defined(LF_LORA_HAVE_AVX512)
bool avx512_supported() {
    return avx2_supported() && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}
#endif
#if defined(LF_LORA_HAVE_AVX512BF16)
bool avx512bf16_supported() { return avx512_supported() && __builtin_cpu_supports("avx512bf16"); }
#endif

// Best first; the baseline runs everywhere.
constexpr kernels::IsaVariant<CpuKernels> kVariants[] = {
#if defined(LF_LORA_HAVE_AVX512BF16)
    {cpu_kernels_avx512bf16, avx512bf16_supported},
#endif
#if defined(LF_LORA_HAVE_AVX512)
    {cpu_kernels_avx512, avx512_supported},
#endif
#if defined(LF_LORA_HAVE_AVX2)
    {cpu_kernels_avx2, avx2_supported},
#endif
    {cpu_kernels_baseline, always_supported},
};

// Set only by force_cpu_isa (tests); otherwise the choice made at first use.
std::atomic<const CpuKernels *> g_forced{nullptr};

const CpuKernels &cpu_kernels() {
    if (const CpuKernels *k = g_forced.load(std::memory_order_acquire); k != nullptr) {
        return *k;
    }
    // LORAFLIP_LORA_ISA names a variant to use instead of the best one (to compare them, or to
    // get the baseline's bits); kernels/isa.hpp says what happens to a name that cannot be used.
    // Thread-safe, once.
    static const CpuKernels &chosen = kernels::choose_isa(kVariants, "LORAFLIP_LORA_ISA");
    return chosen;
}

} // namespace

void set_cpu_threads(int32_t n) { g_cpu_threads.store(n, std::memory_order_relaxed); }

const char *cpu_isa_name() { return cpu_kernels().name; }

std::vector<CpuIsaVariant> cpu_isa_variants() {
    return kernels::list_isa_variants<CpuIsaVariant>(kVariants);
}

bool force_cpu_isa(const char *name) {
    if (name == nullptr) {
        g_forced.store(nullptr, std::memory_order_release);
        return true;
    }
    const CpuKernels *k = kernels::runnable_isa(kVariants, name);
    if (k == nullptr) {
        return false;
    }
    g_forced.store(k, std::memory_order_release);
    return true;
}

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
    shrink_rows(cpu_kernels(), b, group_rows(b), x, v);
}

void cpu_expand(const lf_lora_batch_t &b, const float *v, void *y) {
    expand_rows(cpu_kernels(), b, group_rows(b), v, y);
}

// The fused call is the two phases over a private intermediate: the expand needs every row of
// an adapter's shrink to reuse each B block across them, and the intermediate is small
// (n_rows * max_rank floats). Same bits as the separate calls by construction (one variant for
// both phases).
void cpu_apply(const lf_lora_batch_t &b, const void *x, void *y) {
    const CpuKernels &k = cpu_kernels();
    const RowGroups g = group_rows(b);
    std::vector<float> v(static_cast<size_t>(b.n_rows) * static_cast<size_t>(b.max_rank));
    shrink_rows(k, b, g, x, v.data());
    expand_rows(k, b, g, v.data(), y);
}

} // namespace loraflip::lora
