// CUDA kernels and the cuBLAS path of the LoRA-apply library against the CPU implementation, on
// the same random inputs. Built only with CUDA; exits 77 (meson: skipped) when no GPU is usable.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cuda_runtime.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <utility>
#include <vector>

#include "lora_test_support.h"

using namespace lora_test;

namespace {

#define CUDA_OK(expr) REQUIRE((expr) == cudaSuccess)

constexpr int32_t kDtypes[] = {LF_DTYPE_F32, LF_DTYPE_F16, LF_DTYPE_BF16};

// Owns one device allocation.
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(size_t bytes) {
        if (bytes > 0 && cudaMalloc(&p_, bytes) != cudaSuccess) {
            p_ = nullptr;
        }
    }
    template <class T> static DeviceBuffer from(const std::vector<T> &host) {
        DeviceBuffer d(host.size() * sizeof(T));
        if (!host.empty()) {
            cudaMemcpy(d.p_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
        }
        return d;
    }
    DeviceBuffer(DeviceBuffer &&o) noexcept : p_(o.p_) { o.p_ = nullptr; }
    DeviceBuffer &operator=(DeviceBuffer &&o) noexcept {
        std::swap(p_, o.p_);
        return *this;
    }
    DeviceBuffer(const DeviceBuffer &) = delete;
    DeviceBuffer &operator=(const DeviceBuffer &) = delete;
    ~DeviceBuffer() { cudaFree(p_); }
    void *get() const { return p_; }
    template <class T> std::vector<T> download(size_t count) const {
        std::vector<T> out(count);
        cudaMemcpy(out.data(), p_, count * sizeof(T), cudaMemcpyDeviceToHost);
        return out;
    }

private:
    void *p_ = nullptr;
};

// The problem's arrays copied to the device, and a batch struct pointing at them.
struct DeviceProblem {
    DeviceBuffer x, y, table, rows, offsets, seg_adapters, error;
    std::vector<DeviceBuffer> a, b;
    lf_lora_batch_t batch{};

    explicit DeviceProblem(const Problem &p) {
        x = DeviceBuffer::from(p.x);
        y = DeviceBuffer::from(p.y);
        std::vector<lf_lora_adapter_t> dev_table = p.table;
        for (size_t i = 0; i < p.table.size(); ++i) {
            a.push_back(DeviceBuffer::from(p.a[i]));
            b.push_back(DeviceBuffer::from(p.b[i]));
            dev_table[i].a = a.back().get();
            dev_table[i].b = b.back().get();
        }
        table = DeviceBuffer::from(dev_table);
        rows = DeviceBuffer::from(p.spec.row_adapter);
        offsets = DeviceBuffer::from(p.spec.seg_offsets);
        seg_adapters = DeviceBuffer::from(p.spec.seg_adapter);
        error = DeviceBuffer::from(std::vector<int32_t>{0});
        batch = p.batch;
        batch.adapters = static_cast<const lf_lora_adapter_t *>(table.get());
        batch.row_adapter = static_cast<const int32_t *>(rows.get());
        batch.seg_offsets = static_cast<const int32_t *>(offsets.get());
        batch.seg_adapter = static_cast<const int32_t *>(seg_adapters.get());
    }
    int32_t *error_word() const { return static_cast<int32_t *>(error.get()); }
};

// GPU and CPU may each be off from the exact result by their bound, so they may differ by the sum.
void check_close(const Problem &p, const std::vector<uint8_t> &gpu, const std::vector<uint8_t> &cpu,
                 double extra_roundoff = 0.0) {
    const Reference ref = reference(p);
    int64_t failures = 0;
    for (int32_t i = 0; i < p.spec.n_rows; ++i) {
        const int32_t ai = p.adapter_of(i);
        const int32_t r = ai < 0 ? 0 : p.table[ai].rank;
        for (int64_t c = 0; c < p.ldy(); ++c) {
            const int64_t e = i * p.ldy() + c;
            const double bound = ref.y_bound[e];
            const double tol = tolerance(p.spec.dtype, p.spec.h_in, r, bound, false) +
                               tolerance(p.spec.dtype, p.spec.h_in, r, bound, true) +
                               extra_roundoff * bound;
            const double g = load(p.spec.dtype, gpu.data(), e);
            const double h = load(p.spec.dtype, cpu.data(), e);
            if (!(std::fabs(g - h) <= tol) && failures++ < 5) {
                FAIL_CHECK("row " << i << " col " << c << ": gpu " << g << ", cpu " << h
                                  << " (tol " << tol << ")");
            }
        }
    }
    CHECK(failures == 0);
}

std::vector<uint8_t> cpu_result(const Problem &p) {
    std::vector<uint8_t> y = p.y;
    REQUIRE(lf_lora_apply(&p.batch, p.x.data(), y.data()) == LF_OK);
    return y;
}

std::vector<uint8_t> gpu_apply(const Problem &p, DeviceProblem &d) {
    size_t bytes = 0;
    REQUIRE(lf_lora_cuda_apply(&d.batch, d.x.get(), d.y.get(), nullptr, &bytes, d.error_word(),
                               nullptr) == LF_OK);
    DeviceBuffer ws(bytes);
    REQUIRE(lf_lora_cuda_apply(&d.batch, d.x.get(), d.y.get(), ws.get(), &bytes, d.error_word(),
                               nullptr) == LF_OK);
    CUDA_OK(cudaDeviceSynchronize());
    CHECK(d.error.download<int32_t>(1)[0] == 0);
    return d.y.download<uint8_t>(p.y.size());
}

Spec mixed_rows(int32_t dtype, std::mt19937_64 &rng, int32_t n_rows) {
    Spec s;
    s.dtype = dtype;
    s.n_rows = n_rows;
    s.h_in = 4096;
    s.h_out = 1032;
    s.ranks = {4, 16, 12, 128, 64};
    s.max_rank = 128;
    std::uniform_int_distribution<int32_t> pick(-1, 4);
    for (int32_t i = 0; i < n_rows; ++i) {
        s.row_adapter.push_back(pick(rng));
    }
    return s;
}

Spec segments(int32_t dtype) {
    Spec s;
    s.dtype = dtype;
    s.h_in = 1024;
    s.h_out = 2048;
    s.ranks = {16, 8, 32};
    s.max_rank = 32;
    s.select = LF_LORA_SELECT_SEGMENTS;
    s.seg_offsets = {0, 0, 1, 130, 130, 131, 400};
    s.seg_adapter = {0, 1, 2, 0, LF_LORA_NO_ADAPTER, 1};
    s.n_rows = 400;
    return s;
}

} // namespace

TEST_CASE("CUDA apply with per-row adapters and mixed ranks matches the CPU") {
    std::mt19937_64 rng(1);
    for (const int32_t dtype : kDtypes) {
        CAPTURE(dtype);
        for (const int32_t n : {1, 7, 64, 333}) {
            CAPTURE(n);
            Problem p(mixed_rows(dtype, rng, n), rng);
            DeviceProblem d(p);
            check_close(p, gpu_apply(p, d), cpu_result(p));
        }
    }
}

TEST_CASE("CUDA apply with segments of length zero and one matches the CPU") {
    std::mt19937_64 rng(2);
    for (const int32_t dtype : kDtypes) {
        CAPTURE(dtype);
        Problem p(segments(dtype), rng);
        DeviceProblem d(p);
        check_close(p, gpu_apply(p, d), cpu_result(p));
    }
}

TEST_CASE("CUDA shrink then expand matches the CPU and the fused call") {
    std::mt19937_64 rng(3);
    for (const int32_t dtype : kDtypes) {
        CAPTURE(dtype);
        Problem p(mixed_rows(dtype, rng, 50), rng);
        DeviceProblem d(p);
        DeviceBuffer v(sizeof(float) * 50 * 128);
        auto *vp = static_cast<float *>(v.get());
        REQUIRE(lf_lora_cuda_shrink(&d.batch, d.x.get(), vp, d.error_word(), nullptr) == LF_OK);
        REQUIRE(lf_lora_cuda_expand(&d.batch, vp, d.y.get(), d.error_word(), nullptr) == LF_OK);
        CUDA_OK(cudaDeviceSynchronize());
        CHECK(d.error.download<int32_t>(1)[0] == 0);
        const auto split = d.y.download<uint8_t>(p.y.size());
        check_close(p, split, cpu_result(p));
        DeviceProblem fresh(p);
        CHECK(gpu_apply(p, fresh) == split); // same kernels, same order: same bits
    }
}

TEST_CASE("the cuBLAS single-adapter path matches the CPU") {
    std::mt19937_64 rng(4);
    cublasHandle_t handle = nullptr;
    REQUIRE(cublasCreate(&handle) == CUBLAS_STATUS_SUCCESS);
    for (const int32_t dtype : kDtypes) {
        CAPTURE(dtype);
        Spec s;
        s.dtype = dtype;
        s.n_rows = 257;
        s.h_in = 2048;
        s.h_out = 1024;
        s.ranks = {16};
        s.max_rank = 16;
        s.row_adapter.assign(257, 0);
        Problem p(s, rng);
        DeviceProblem d(p);
        lf_lora_adapter_t ad = p.table[0];
        ad.a = d.a[0].get();
        ad.b = d.b[0].get();
        size_t bytes = 0;
        REQUIRE(lf_lora_cuda_apply_single(dtype, s.n_rows, s.h_in, s.h_out, d.x.get(), 0,
                                          d.y.get(), 0, &ad, nullptr, &bytes, handle,
                                          nullptr) == LF_OK);
        DeviceBuffer ws(bytes);
        REQUIRE(lf_lora_cuda_apply_single(dtype, s.n_rows, s.h_in, s.h_out, d.x.get(), 0,
                                          d.y.get(), 0, &ad, ws.get(), &bytes, handle,
                                          nullptr) == LF_OK);
        CUDA_OK(cudaDeviceSynchronize());
        // The intermediate is rounded to the I/O type once: one more output roundoff.
        check_close(p, d.y.download<uint8_t>(p.y.size()), cpu_result(p),
                    output_roundoff(dtype));
    }
    cublasDestroy(handle);
}

TEST_CASE("bad device-side indices are skipped and reported in the error word") {
    std::mt19937_64 rng(5);
    Spec s = mixed_rows(LF_DTYPE_F16, rng, 16);
    s.row_adapter[3] = 99; // past the table
    s.row_adapter[4] = -7;
    Problem p(s, rng);
    DeviceProblem d(p);
    size_t bytes = 0;
    REQUIRE(lf_lora_cuda_apply(&d.batch, d.x.get(), d.y.get(), nullptr, &bytes, d.error_word(),
                               nullptr) == LF_OK);
    DeviceBuffer ws(bytes);
    REQUIRE(lf_lora_cuda_apply(&d.batch, d.x.get(), d.y.get(), ws.get(), &bytes, d.error_word(),
                               nullptr) == LF_OK);
    CUDA_OK(cudaDeviceSynchronize());
    CHECK((d.error.download<int32_t>(1)[0] & LF_LORA_DEVICE_ERR_INDEX) != 0);
    const auto y = d.y.download<uint8_t>(p.y.size());
    const size_t row_bytes = static_cast<size_t>(p.ldy()) * 2;
    CHECK(std::equal(y.begin() + 3 * row_bytes, y.begin() + 5 * row_bytes,
                     p.y.begin() + 3 * row_bytes));
}

TEST_CASE("CUDA apply can be captured in a graph and replayed") {
    std::mt19937_64 rng(6);
    Problem p(segments(LF_DTYPE_BF16), rng);
    DeviceProblem d(p);
    size_t bytes = 0;
    REQUIRE(lf_lora_cuda_apply(&d.batch, d.x.get(), d.y.get(), nullptr, &bytes, d.error_word(),
                               nullptr) == LF_OK);
    DeviceBuffer ws(bytes);
    cudaStream_t stream = nullptr;
    CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    cudaGraph_t graph = nullptr;
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    REQUIRE(lf_lora_cuda_apply(&d.batch, d.x.get(), d.y.get(), ws.get(), &bytes, d.error_word(),
                               stream) == LF_OK);
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec = nullptr;
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
    CUDA_OK(cudaGraphLaunch(exec, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    check_close(p, d.y.download<uint8_t>(p.y.size()), cpu_result(p));
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(stream);
}

int main(int argc, char **argv) {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
        std::printf("SKIP: no usable CUDA GPU (%s)\n",
                    err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
        return 77; // meson's exit code for a skipped test
    }
    doctest::Context ctx(argc, argv);
    return ctx.run();
}
