// Benchmark of LoRA apply: the CPU library against a naive per-row loop and against PyTorch
// (torch_lora_bench.py beside this file, run as a subprocess in the same run, when torch is
// importable) at decode-like and prefill-like shapes, and (CUDA builds with a GPU) the CUDA paths
// against the memory-bandwidth floor. Prints a table; not a test.
//
//   lora_bench [--quick] [--no-torch]   --quick: fewer repetitions (for smoke runs)
// Environment: LORAFLIP_LORA_ISA picks the library's CPU variant (see loraflip_lora.h);
// LF_LORA_BENCH_PYTHON the interpreter for the PyTorch rows (default python3).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels/lora/lora_convert.h"
#include "loraflip_lora.h"

#ifdef LF_LORA_BENCH_WITH_CUDA
#include <cublas_v2.h>
#include <cuda_runtime.h>
#endif

namespace {

using loraflip::lora::bf16;
using loraflip::lora::f16;
using Clock = std::chrono::steady_clock;

bool g_quick = false;
bool g_torch = true;

const char *dtype_name(int32_t d) {
    return d == LF_DTYPE_F32 ? "f32" : d == LF_DTYPE_F16 ? "f16" : "bf16";
}

int elem_size(int32_t d) { return d == LF_DTYPE_F32 ? 4 : 2; }

// One benchmark problem with host storage. Values are random in [-1, 1] scaled so outputs stay
// near 1 (fp16 never overflows, the naive loop and the library see the same numbers).
struct Shape {
    std::string name;
    int32_t dtype;
    int32_t n_rows, h, rank, n_adapters;
    bool segments; // contiguous segments (SGMV) instead of a random adapter per row (BGMV)
};

struct Host {
    Shape shape;
    std::vector<uint8_t> x, y;
    std::vector<std::vector<uint8_t>> a, b;
    std::vector<lf_lora_adapter_t> table;
    std::vector<int32_t> rows, offsets, seg_adapter;
    lf_lora_batch_t batch{};

    explicit Host(const Shape &s) : shape(s) {
        std::mt19937_64 rng(42);
        std::uniform_real_distribution<float> u(-1.0f, 1.0f);
        auto fill = [&](std::vector<uint8_t> &buf, int64_t n, float amp) {
            buf.resize(static_cast<size_t>(n * elem_size(s.dtype)));
            for (int64_t i = 0; i < n; ++i) {
                const float f = amp * u(rng);
                if (s.dtype == LF_DTYPE_F32) {
                    std::memcpy(&buf[4 * i], &f, 4);
                } else {
                    const uint16_t bits = s.dtype == LF_DTYPE_F16
                                              ? loraflip::lora::f32_to_f16(f).bits
                                              : loraflip::lora::f32_to_bf16(f).bits;
                    std::memcpy(&buf[2 * i], &bits, 2);
                }
            }
        };
        fill(x, int64_t{s.n_rows} * s.h, 1.0f);
        fill(y, int64_t{s.n_rows} * s.h, 1.0f);
        a.resize(s.n_adapters);
        b.resize(s.n_adapters);
        for (int32_t i = 0; i < s.n_adapters; ++i) {
            fill(a[i], int64_t{s.rank} * s.h, 1.0f / std::sqrt(float(s.h)));
            fill(b[i], int64_t{s.h} * s.rank, 1.0f / std::sqrt(float(s.rank)));
            float scale = 0.0f;
            lf_lora_scale(2.0f * s.rank, s.rank, LF_LORA_SCALE_STANDARD, &scale);
            table.push_back({a[i].data(), b[i].data(), s.rank, s.dtype, scale, 0});
        }
        batch.dtype = s.dtype;
        batch.n_rows = s.n_rows;
        batch.h_in = batch.h_out = s.h;
        batch.max_rank = s.rank;
        batch.adapters = table.data();
        batch.n_adapters = s.n_adapters;
        if (s.segments) {
            for (int32_t i = 0; i <= s.n_adapters; ++i) {
                offsets.push_back(int32_t(int64_t{s.n_rows} * i / s.n_adapters));
            }
            for (int32_t i = 0; i < s.n_adapters; ++i) {
                seg_adapter.push_back(i);
            }
            batch.select = LF_LORA_SELECT_SEGMENTS;
            batch.n_segments = s.n_adapters;
            batch.seg_offsets = offsets.data();
            batch.seg_adapter = seg_adapter.data();
        } else {
            std::uniform_int_distribution<int32_t> pick(0, s.n_adapters - 1);
            for (int32_t i = 0; i < s.n_rows; ++i) {
                rows.push_back(pick(rng));
            }
            batch.select = LF_LORA_SELECT_ROWS;
            batch.row_adapter = rows.data();
        }
    }

    int32_t adapter_of(int32_t row) const {
        if (!shape.segments) {
            return rows[row];
        }
        for (int32_t s = 0; s < shape.n_adapters; ++s) {
            if (row >= offsets[s] && row < offsets[s + 1]) {
                return seg_adapter[s];
            }
        }
        return -1;
    }

    double flops() const { return 2.0 * shape.n_rows * shape.rank * 2.0 * shape.h; }
};

// ---- the baseline: what one would write first, one row at a time, scalar ----
template <class T> float ld(const T &v) { return loraflip::lora::to_f32(v); }

template <class T> void naive_apply_typed(const Host &p, T *y) {
    const auto *x = reinterpret_cast<const T *>(p.x.data());
    const int32_t h = p.shape.h;
    std::vector<float> v(static_cast<size_t>(p.shape.rank));
    for (int32_t i = 0; i < p.shape.n_rows; ++i) {
        const int32_t ai = p.adapter_of(i);
        if (ai < 0) {
            continue;
        }
        const auto &ad = p.table[ai];
        const auto *a = static_cast<const T *>(ad.a);
        const auto *b = static_cast<const T *>(ad.b);
        for (int32_t j = 0; j < ad.rank; ++j) {
            float s = 0.0f;
            for (int32_t k = 0; k < h; ++k) {
                s += ld(a[int64_t{j} * h + k]) * ld(x[int64_t{i} * h + k]);
            }
            v[j] = s;
        }
        for (int32_t c = 0; c < h; ++c) {
            float s = 0.0f;
            for (int32_t j = 0; j < ad.rank; ++j) {
                s += ld(b[int64_t{c} * ad.rank + j]) * v[j];
            }
            T &out = y[int64_t{i} * h + c];
            out = loraflip::lora::from_f32<T>(ld(out) + ad.scale * s);
        }
    }
}

void naive_apply(const Host &p, void *y) {
    switch (p.shape.dtype) {
    case LF_DTYPE_F32:
        naive_apply_typed(p, static_cast<float *>(y));
        break;
    case LF_DTYPE_F16:
        naive_apply_typed(p, static_cast<f16 *>(y));
        break;
    default:
        naive_apply_typed(p, static_cast<bf16 *>(y));
        break;
    }
}

// Median seconds per call over enough repetitions to fill about `budget_s`.
double time_calls(const std::function<void()> &fn, double budget_s, int min_reps, int max_reps) {
    fn(); // warm caches and page in the buffers
    std::vector<double> t;
    const auto start = Clock::now();
    while (static_cast<int>(t.size()) < max_reps &&
           (static_cast<int>(t.size()) < min_reps ||
            std::chrono::duration<double>(Clock::now() - start).count() < budget_s)) {
        const auto t0 = Clock::now();
        fn();
        t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

double max_rel_diff(const Host &p, const std::vector<uint8_t> &u, const std::vector<uint8_t> &w) {
    double worst = 0.0;
    const int64_t n = int64_t{p.shape.n_rows} * p.shape.h;
    for (int64_t i = 0; i < n; ++i) {
        auto val = [&](const std::vector<uint8_t> &buf) -> double {
            if (p.shape.dtype == LF_DTYPE_F32) {
                float f;
                std::memcpy(&f, &buf[4 * i], 4);
                return f;
            }
            uint16_t bits;
            std::memcpy(&bits, &buf[2 * i], 2);
            return p.shape.dtype == LF_DTYPE_F16 ? loraflip::lora::f16_to_f32(f16{bits})
                                                 : loraflip::lora::bf16_to_f32(bf16{bits});
        };
        const double a = val(u), b = val(w);
        worst = std::max(worst, std::fabs(a - b) / std::max(1.0, std::fabs(b)));
    }
    return worst;
}

// PyTorch's median ms per shape index at `threads` threads (the better of its grouped-matmul and
// bmm forms, see torch_lora_bench.py), or an empty map with *why set when there are no rows.
std::map<size_t, std::pair<double, std::string>> torch_times(const std::vector<Shape> &shapes,
                                                            unsigned threads, std::string *why) {
    std::map<size_t, std::pair<double, std::string>> out;
    const char *py = std::getenv("LF_LORA_BENCH_PYTHON");
    std::string cmd = std::string(py != nullptr ? py : "python3") + " '" LF_LORA_TORCH_SCRIPT "'" +
                      " --threads " + std::to_string(threads) + (g_quick ? " --quick" : "");
    for (size_t i = 0; i < shapes.size(); ++i) {
        const Shape &s = shapes[i];
        cmd += " s" + std::to_string(i) + ":" + dtype_name(s.dtype) + ":" +
               std::to_string(s.n_rows) + ":" + std::to_string(s.h) + ":" +
               std::to_string(s.rank) + ":" + std::to_string(s.n_adapters) + ":" +
               (s.segments ? "segments" : "rows");
    }
    cmd += " 2>&1";
    FILE *pipe = popen(cmd.c_str(), "r");
    if (pipe == nullptr) {
        *why = "could not start " + cmd;
        return out;
    }
    std::string text;
    char line[512];
    while (std::fgets(line, sizeof line, pipe) != nullptr) {
        size_t index = 0;
        char dt[16], method[32];
        double ms = 0.0;
        if (std::sscanf(line, "s%zu %15s %lf %31s", &index, dt, &ms, method) == 4) {
            out[index] = {ms, method};
        } else {
            text += line;
        }
    }
    const int status = pclose(pipe);
    if (out.empty()) {
        *why = text.empty() ? "exit status " + std::to_string(status) : text;
        while (!why->empty() && why->back() == '\n') {
            why->pop_back();
        }
    }
    return out;
}

void cpu_section(const std::vector<Shape> &shapes) {
    const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    // Other processes skew the figures; print the load so a reader can judge them.
    double load = -1.0;
    if (FILE *f = std::fopen("/proc/loadavg", "r")) {
        if (std::fscanf(f, "%lf", &load) != 1) {
            load = -1.0;
        }
        std::fclose(f);
    }
    std::printf("CPU (%u hardware threads, 1-min load average before the run %.2f); library CPU "
                "variant %s; median time per call; x = naive / library\n", hw, load,
                lf_lora_cpu_isa());
    // PyTorch first, all shapes per thread count in one interpreter (imports take seconds).
    std::map<size_t, std::pair<double, std::string>> torch_one, torch_all;
    if (g_torch) {
        std::string why;
        torch_one = torch_times(shapes, 1, &why);
        if (!torch_one.empty()) {
            torch_all = torch_times(shapes, hw, &why);
        }
        if (torch_one.empty() || torch_all.empty()) {
            std::printf("PyTorch rows skipped: %s\n", why.c_str());
        }
    } else {
        std::printf("PyTorch rows skipped: --no-torch\n");
    }
    std::printf("%-34s %-5s %10s %10s %10s %10s %10s %7s %7s %8s %9s\n", "shape", "dtype",
                "naive ms", "lib 1t ms", "lib all ms", "torch 1t", "torch all", "x 1t", "x all",
                "torch/lib", "(1t, all)");
    for (size_t si = 0; si < shapes.size(); ++si) {
        const Shape &s = shapes[si];
        Host p(s);
        // Correctness first: the library and the naive loop on the same y.
        std::vector<uint8_t> y_lib = p.y, y_naive = p.y;
        if (lf_lora_apply(&p.batch, p.x.data(), y_lib.data()) != LF_OK) {
            std::printf("%-34s lf_lora_apply failed\n", s.name.c_str());
            continue;
        }
        naive_apply(p, y_naive.data());
        const double diff = max_rel_diff(p, y_lib, y_naive);

        // Timed runs keep adding to y; the values stay finite for these few repetitions.
        std::vector<uint8_t> y = p.y;
        const double naive_budget = g_quick ? 0.2 : 1.5;
        const double lib_budget = g_quick ? 0.2 : 1.0;
        const double t_naive =
            time_calls([&] { naive_apply(p, y.data()); }, naive_budget, 3, g_quick ? 3 : 50);
        y = p.y;
        lf_lora_cpu_set_threads(1);
        const double t_one = time_calls([&] { lf_lora_apply(&p.batch, p.x.data(), y.data()); },
                                        lib_budget, 5, 2000);
        y = p.y;
        lf_lora_cpu_set_threads(0);
        const double t_all = time_calls([&] { lf_lora_apply(&p.batch, p.x.data(), y.data()); },
                                        lib_budget, 5, 2000);
        const auto t1 = torch_one.find(si), ta = torch_all.find(si);
        const bool have_torch = t1 != torch_one.end() && ta != torch_all.end();
        char torch_cols[96] = "         -          -                   -";
        if (have_torch) {
            // torch/lib > 1 means loraflip is faster.
            std::snprintf(torch_cols, sizeof torch_cols, "%10.3f %10.3f", t1->second.first,
                          ta->second.first);
        }
        char ratio_cols[64] = "";
        if (have_torch) {
            std::snprintf(ratio_cols, sizeof ratio_cols, "%5.2f, %5.2f (%s/%s)",
                          t1->second.first / (t_one * 1e3), ta->second.first / (t_all * 1e3),
                          t1->second.second.c_str(), ta->second.second.c_str());
        }
        std::printf("%-34s %-5s %10.3f %10.3f %10.3f %s %7.1f %7.1f   %s   (%.1f GFLOP/s all; "
                    "max rel diff vs naive %.1e)\n",
                    s.name.c_str(), dtype_name(s.dtype), t_naive * 1e3, t_one * 1e3, t_all * 1e3,
                    torch_cols, t_naive / t_one, t_naive / t_all, ratio_cols,
                    p.flops() / t_all * 1e-9, diff);
    }
}

#ifdef LF_LORA_BENCH_WITH_CUDA
// Peak DRAM bandwidth from the device's memory clock (kHz) and bus width (bits), double data rate.
double device_bandwidth(int dev) {
    int clock_khz = 0, bus_bits = 0;
    cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, dev);
    cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev);
    return 2.0 * clock_khz * 1e3 * (bus_bits / 8.0);
}

// Bytes that must move at least once: read x, read and write y, read every used A and B.
double floor_bytes(const Host &p) {
    const double es = elem_size(p.shape.dtype);
    const double rows = p.shape.n_rows, h = p.shape.h;
    return es * (rows * h * 3.0 + 2.0 * p.shape.n_adapters * p.shape.rank * h);
}

void gpu_section(const std::vector<Shape> &shapes) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        std::printf("GPU: skipped (no usable CUDA device)\n");
        return;
    }
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, 0);
    const double bw = device_bandwidth(0);
    std::printf("GPU: %s, peak bandwidth %.0f GB/s (memory clock x bus width)\n", prop.name,
                bw * 1e-9);
    std::printf("%-34s %-5s %-8s %10s %10s %8s\n", "shape", "dtype", "path", "us/call",
                "floor us", "ratio");
    cublasHandle_t blas = nullptr;
    cublasCreate(&blas);
    cudaStream_t stream = nullptr;
    cudaStreamCreate(&stream);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    for (const Shape &s : shapes) {
        Host p(s);
        auto upload = [](const std::vector<uint8_t> &h) {
            void *d = nullptr;
            cudaMalloc(&d, h.size());
            cudaMemcpy(d, h.data(), h.size(), cudaMemcpyHostToDevice);
            return d;
        };
        std::vector<void *> owned;
        std::vector<lf_lora_adapter_t> table = p.table;
        for (int32_t i = 0; i < s.n_adapters; ++i) {
            table[i].a = owned.emplace_back(upload(p.a[i]));
            table[i].b = owned.emplace_back(upload(p.b[i]));
        }
        auto upload_vec = [&](const auto &v) {
            std::vector<uint8_t> bytes(v.size() * sizeof(v[0]));
            std::memcpy(bytes.data(), v.data(), bytes.size());
            return owned.emplace_back(upload(bytes));
        };
        void *x = owned.emplace_back(upload(p.x));
        void *y = owned.emplace_back(upload(p.y));
        lf_lora_batch_t b = p.batch;
        b.adapters = static_cast<const lf_lora_adapter_t *>(upload_vec(table));
        if (s.segments) {
            b.seg_offsets = static_cast<const int32_t *>(upload_vec(p.offsets));
            b.seg_adapter = static_cast<const int32_t *>(upload_vec(p.seg_adapter));
        } else {
            b.row_adapter = static_cast<const int32_t *>(upload_vec(p.rows));
        }
        size_t bytes = 0;
        lf_lora_cuda_apply(&b, x, y, nullptr, &bytes, nullptr, stream);
        void *ws = nullptr;
        cudaMalloc(&ws, bytes);
        owned.push_back(ws);

        auto time_gpu = [&](const std::function<int()> &launch) {
            if (launch() != LF_OK) {
                return -1.0;
            }
            const int reps = g_quick ? 20 : 200;
            cudaEventRecord(e0, stream);
            for (int i = 0; i < reps; ++i) {
                launch();
            }
            cudaEventRecord(e1, stream);
            cudaEventSynchronize(e1);
            float ms = 0.0f;
            cudaEventElapsedTime(&ms, e0, e1);
            return ms * 1e-3 / reps;
        };
        const double floor_s = floor_bytes(p) / bw;
        const double t_kernels =
            time_gpu([&] { return lf_lora_cuda_apply(&b, x, y, ws, &bytes, nullptr, stream); });
        std::printf("%-34s %-5s %-8s %10.2f %10.2f %8.2f\n", s.name.c_str(), dtype_name(s.dtype),
                    "kernels", t_kernels * 1e6, floor_s * 1e6, t_kernels / floor_s);
        if (s.n_adapters == 1) {
            size_t blas_bytes = 0;
            lf_lora_cuda_apply_single(s.dtype, s.n_rows, s.h, s.h, x, 0, y, 0, &table[0],
                                      nullptr, &blas_bytes, blas, stream);
            void *bws = nullptr;
            cudaMalloc(&bws, blas_bytes);
            owned.push_back(bws);
            const double t_blas = time_gpu([&] {
                return lf_lora_cuda_apply_single(s.dtype, s.n_rows, s.h, s.h, x, 0, y, 0,
                                                 &table[0], bws, &blas_bytes, blas, stream);
            });
            std::printf("%-34s %-5s %-8s %10.2f %10.2f %8.2f\n", s.name.c_str(),
                        dtype_name(s.dtype), "cublas", t_blas * 1e6, floor_s * 1e6,
                        t_blas / floor_s);
        }
        for (void *d : owned) {
            cudaFree(d);
        }
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaStreamDestroy(stream);
    cublasDestroy(blas);
}
#endif

} // namespace

int main(int argc, char **argv) {
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--quick") == 0) {
            g_quick = true;
        } else if (std::strcmp(argv[i], "--no-torch") == 0) {
            g_torch = false;
        } else {
            std::fprintf(stderr, "usage: %s [--quick] [--no-torch]\n", argv[0]);
            return 2;
        }
    }
    std::vector<Shape> shapes;
    // The shapes of issue 16's table (decode in all three types, prefill in bf16) plus one
    // single-adapter prefill.
    for (const int32_t d : {LF_DTYPE_BF16, LF_DTYPE_F16, LF_DTYPE_F32}) {
        shapes.push_back({"decode 64r h4096 r16 4ad per-row", d, 64, 4096, 16, 4, false});
    }
    shapes.push_back({"prefill 2048r h4096 r16 4 segments", LF_DTYPE_BF16, 2048, 4096, 16, 4,
                      true});
    shapes.push_back({"prefill 2048r h4096 r16 1 adapter", LF_DTYPE_BF16, 2048, 4096, 16, 1,
                      true});
    cpu_section(shapes);
#ifdef LF_LORA_BENCH_WITH_CUDA
    gpu_section(shapes);
#else
    std::printf("GPU: skipped (built without CUDA)\n");
#endif
    return 0;
}
