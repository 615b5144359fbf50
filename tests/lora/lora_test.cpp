// Tests of the CPU LoRA-apply path against a separate fp64 reference, plus argument checking.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/lora/lora_convert.h"
#include "kernels/lora/lora_internal.h"
#include "lora_test_support.h"

using namespace lora_test;
using loraflip::lora::bf16;
using loraflip::lora::f16;

namespace {

constexpr int32_t kDtypes[] = {LF_DTYPE_F32, LF_DTYPE_F16, LF_DTYPE_BF16};

const char *dtype_name(int32_t dtype) {
    return dtype == LF_DTYPE_F32 ? "f32" : dtype == LF_DTYPE_F16 ? "f16" : "bf16";
}

// Fresh inputs on every run; the seed is printed with any failure and can be fixed with
// LF_LORA_TEST_SEED to replay it.
uint64_t test_seed() {
    if (const char *env = std::getenv("LF_LORA_TEST_SEED")) {
        return std::strtoull(env, nullptr, 0);
    }
    return (uint64_t{std::random_device{}()} << 32) ^ std::random_device{}();
}

// Checks y (and v, when given) of a problem after the library ran, against the fp64 reference.
void check_against_reference(const Problem &p, const Reference &ref, const std::vector<uint8_t> &y,
                             const std::vector<float> *v = nullptr) {
    const Spec &s = p.spec;
    int64_t failures = 0;
    for (int32_t i = 0; i < s.n_rows; ++i) {
        const int32_t ai = p.adapter_of(i);
        const int32_t r = ai < 0 ? 0 : p.table[ai].rank;
        for (int64_t c = 0; c < p.ldy(); ++c) {
            const int64_t e = i * p.ldy() + c;
            if (ai < 0 || c >= s.h_out) {
                // Rows without an adapter and padding columns must keep their exact bits.
                const int es = elem_size(s.dtype);
                if (std::memcmp(&y[e * es], &p.y[e * es], es) != 0 && failures++ < 5) {
                    FAIL_CHECK("row " << i << " col " << c << " changed but has no update");
                }
                continue;
            }
            const double got = load(s.dtype, y.data(), e);
            const double tol = tolerance(s.dtype, s.h_in, r, ref.y_bound[e]);
            if (!(std::fabs(got - ref.y[e]) <= tol) && failures++ < 5) {
                FAIL_CHECK("y row " << i << " col " << c << ": got " << got << ", want "
                                    << ref.y[e] << " +- " << tol);
            }
        }
        if (v != nullptr) {
            for (int32_t j = 0; j < r; ++j) {
                const size_t e = static_cast<size_t>(i) * s.max_rank + j;
                const double tol = (s.h_in / 16.0 + 8) * 0x1p-24 * ref.v_bound[e] + 1e-30;
                if (!(std::fabs((*v)[e] - ref.v[e]) <= tol) && failures++ < 5) {
                    FAIL_CHECK("v row " << i << " rank " << j << ": got " << (*v)[e] << ", want "
                                        << ref.v[e]);
                }
            }
        }
    }
    CHECK(failures == 0);
}

// Runs the fused call and the separate calls on copies of y and checks both, and that they agree
// bit for bit (the CPU keeps the intermediate in fp32 either way).
void run_and_check(const Spec &spec, std::mt19937_64 &rng) {
    Problem p(spec, rng);
    const Reference ref = reference(p);

    std::vector<uint8_t> y_fused = p.y;
    REQUIRE(lf_lora_apply(&p.batch, p.x.data(), y_fused.data()) == LF_OK);
    check_against_reference(p, ref, y_fused);

    std::vector<float> v(static_cast<size_t>(spec.n_rows) * spec.max_rank, 0.0f);
    std::vector<uint8_t> y_split = p.y;
    REQUIRE(lf_lora_shrink(&p.batch, p.x.data(), v.data()) == LF_OK);
    REQUIRE(lf_lora_expand(&p.batch, v.data(), y_split.data()) == LF_OK);
    check_against_reference(p, ref, y_split, &v);
    CHECK(y_split == y_fused);
}

std::vector<int32_t> random_rows(std::mt19937_64 &rng, int32_t n_rows, int32_t n_adapters,
                                 double none_fraction) {
    std::uniform_int_distribution<int32_t> pick(0, n_adapters - 1);
    std::bernoulli_distribution none(none_fraction);
    std::vector<int32_t> rows(static_cast<size_t>(n_rows));
    for (auto &r : rows) {
        r = none(rng) ? LF_LORA_NO_ADAPTER : pick(rng);
    }
    return rows;
}

Spec row_spec(int32_t dtype, int32_t n_rows, int32_t h_in, int32_t h_out,
              std::vector<int32_t> ranks, std::vector<int32_t> rows) {
    Spec s;
    s.dtype = dtype;
    s.n_rows = n_rows;
    s.h_in = h_in;
    s.h_out = h_out;
    s.max_rank = *std::max_element(ranks.begin(), ranks.end());
    s.ranks = std::move(ranks);
    s.row_adapter = std::move(rows);
    return s;
}

Spec segment_spec(int32_t dtype, int32_t h_in, int32_t h_out, std::vector<int32_t> ranks,
                  const std::vector<int32_t> &lengths, std::vector<int32_t> adapters) {
    Spec s;
    s.dtype = dtype;
    s.h_in = h_in;
    s.h_out = h_out;
    s.max_rank = *std::max_element(ranks.begin(), ranks.end());
    s.ranks = std::move(ranks);
    s.select = LF_LORA_SELECT_SEGMENTS;
    s.seg_offsets = {0};
    for (const int32_t len : lengths) {
        s.seg_offsets.push_back(s.seg_offsets.back() + len);
    }
    s.n_rows = s.seg_offsets.back();
    s.seg_adapter = std::move(adapters);
    return s;
}

// ---- an independent oracle for the conversions: nearest representable value by search over
// the exhaustive table of finite non-negative fp16 values, ties to the even bit pattern. ----

uint16_t nearest_f16_oracle(float f, const std::vector<double> &magnitudes) {
    const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
    const double a = std::fabs(static_cast<double>(f));
    if (a >= 65520.0) {
        return sign | 0x7c00;
    }
    const auto hi = std::lower_bound(magnitudes.begin(), magnitudes.end(), a);
    if (hi == magnitudes.begin()) {
        return sign;
    }
    const auto lo = hi - 1;
    if (hi == magnitudes.end()) {
        return sign | static_cast<uint16_t>(lo - magnitudes.begin());
    }
    const double dlo = a - *lo, dhi = *hi - a;
    auto bits_lo = static_cast<uint16_t>(lo - magnitudes.begin());
    if (dlo < dhi || (dlo == dhi && (bits_lo & 1) == 0)) {
        return sign | bits_lo;
    }
    return sign | static_cast<uint16_t>(bits_lo + 1);
}

uint16_t nearest_bf16_oracle(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const auto lo_bits = static_cast<uint16_t>(x >> 16);
    const double lo = loraflip::lora::bf16_to_f32(bf16{lo_bits});
    // Past the largest finite bf16 the next pattern is inf; IEEE rounding treats it as 2^128
    // (the value the exponent range would give), so the halfway point stays finite.
    const auto hi_bits = static_cast<uint16_t>(lo_bits + 1);
    const double hi = (hi_bits & 0x7fff) == 0x7f80
                          ? std::copysign(0x1p128, static_cast<double>(f))
                          : static_cast<double>(loraflip::lora::bf16_to_f32(bf16{hi_bits}));
    const double d_lo = std::fabs(static_cast<double>(f) - lo);
    const double d_hi = std::fabs(hi - static_cast<double>(f));
    // The truncation is one neighbour; the other has the next bit pattern (larger magnitude).
    if (d_lo < d_hi || (d_lo == d_hi && (lo_bits & 1) == 0)) {
        return lo_bits;
    }
    return static_cast<uint16_t>(lo_bits + 1);
}

std::vector<float> conversion_probes(std::mt19937_64 &rng) {
    std::vector<float> probes = {0.0f, -0.0f, 65504.0f, 65519.996f, 65520.0f, 65536.0f,
                                 0x1p-24f, 0x1p-25f, 0x1.000002p-25f, 0x1.8p-24f, 0x1.4p-24f,
                                 0x1p-14f, 0x1.ffcp-15f, 0x1.ffep-15f, 1.0f + 0x1p-11f,
                                 1.0f + 0x1.8p-11f, 1.0f + 0x1p-8f, 1.0f + 0x1.8p-8f,
                                 std::numeric_limits<float>::max(),
                                 std::numeric_limits<float>::denorm_min(),
                                 std::numeric_limits<float>::infinity()};
    std::uniform_int_distribution<uint32_t> bits;
    std::uniform_real_distribution<float> exp_dist(-30.0f, 17.0f);
    for (int i = 0; i < 200000; ++i) {
        uint32_t b = bits(rng);
        float f;
        std::memcpy(&f, &b, 4);
        if (!std::isnan(f)) {
            probes.push_back(f); // any float, mostly far outside the fp16 range
        }
        // Floats inside the fp16 range, where the interesting roundings happen.
        probes.push_back((i & 1 ? -1.0f : 1.0f) * std::exp2(exp_dist(rng)));
    }
    return probes;
}

} // namespace

TEST_CASE("fp16 conversion round-trips every half and rounds floats to the nearest even half") {
    std::vector<double> magnitudes; // value of bit patterns 0x0000..0x7bff, increasing
    for (uint32_t h = 0; h < 0x7c00; ++h) {
        magnitudes.push_back(loraflip::lora::f16_to_f32(f16{static_cast<uint16_t>(h)}));
    }
    CHECK(magnitudes[1] == 0x1p-24);
    CHECK(magnitudes[0x3c00] == 1.0);
    CHECK(magnitudes[0x7bff] == 65504.0);
    CHECK(std::is_sorted(magnitudes.begin(), magnitudes.end()));

    for (uint32_t h = 0; h <= 0xffff; ++h) {
        const float f = loraflip::lora::f16_to_f32(f16{static_cast<uint16_t>(h)});
        const uint16_t back = loraflip::lora::f32_to_f16(f).bits;
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0) {
            REQUIRE(std::isnan(f));
            REQUIRE((back & 0x7e00) == 0x7e00); // still a NaN, and quiet
        } else {
            REQUIRE(back == h);
        }
    }
    std::mt19937_64 rng(12345);
    for (const float f : conversion_probes(rng)) {
        INFO("f = " << f);
        REQUIRE(loraflip::lora::f32_to_f16(f).bits == nearest_f16_oracle(f, magnitudes));
    }
    CHECK(std::isnan(loraflip::lora::f16_to_f32(loraflip::lora::f32_to_f16(std::nanf("")))));
}

TEST_CASE("bf16 conversion round-trips every bf16 and rounds floats to the nearest even bf16") {
    for (uint32_t h = 0; h <= 0xffff; ++h) {
        const float f = loraflip::lora::bf16_to_f32(bf16{static_cast<uint16_t>(h)});
        const uint16_t back = loraflip::lora::f32_to_bf16(f).bits;
        if ((h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0) {
            REQUIRE(std::isnan(f));
            REQUIRE(((back & 0x7fc0) == 0x7fc0));
        } else {
            REQUIRE(back == h);
        }
    }
    std::mt19937_64 rng(54321);
    for (const float f : conversion_probes(rng)) {
        if (std::isinf(f)) {
            continue; // the oracle's neighbour of inf is a NaN pattern
        }
        INFO("f = " << f);
        REQUIRE(loraflip::lora::f32_to_bf16(f).bits == nearest_bf16_oracle(f));
    }
    // A NaN whose payload sits only in the low 16 bits must not become inf.
    CHECK(std::isnan(loraflip::lora::bf16_to_f32(loraflip::lora::f32_to_bf16(
        std::bit_cast<float>(uint32_t{0x7f800001})))));
}

TEST_CASE("per-row adapters with mixed ranks and rows without adapter match the fp64 reference") {
    const uint64_t seed = test_seed();
    INFO("LF_LORA_TEST_SEED=" << seed);
    std::mt19937_64 rng(seed);
    for (const int32_t dtype : kDtypes) {
        CAPTURE(dtype_name(dtype));
        const std::vector<int32_t> ranks = {4, 16, 8, 128, 64, 12};
        run_and_check(row_spec(dtype, 64, 520, 264, ranks, random_rows(rng, 64, 6, 0.2)), rng);
        // Decode-like hidden sizes, fewer rows to keep the fp64 reference quick.
        run_and_check(row_spec(dtype, 12, 4096, 1024, {16, 32, 8, 16},
                               random_rows(rng, 12, 4, 0.25)),
                      rng);
    }
}

TEST_CASE("segments of length zero and one and segments without adapter match the reference") {
    const uint64_t seed = test_seed();
    INFO("LF_LORA_TEST_SEED=" << seed);
    std::mt19937_64 rng(seed);
    for (const int32_t dtype : kDtypes) {
        CAPTURE(dtype_name(dtype));
        run_and_check(segment_spec(dtype, 264, 136, {8, 4, 32, 128},
                                   {0, 1, 5, 0, 17, 1, 0, 30, 9},
                                   {0, 1, 2, LF_LORA_NO_ADAPTER, 3, LF_LORA_NO_ADAPTER, 1, 2, 0}),
                      rng);
        // A batch of only empty segments and one single-row segment at the very end.
        run_and_check(segment_spec(dtype, 64, 64, {4, 16}, {0, 0, 0, 1}, {0, 1, 0, 1}), rng);
    }
}

TEST_CASE("one adapter for the whole batch matches the reference in both selection modes") {
    const uint64_t seed = test_seed();
    INFO("LF_LORA_TEST_SEED=" << seed);
    std::mt19937_64 rng(seed);
    for (const int32_t dtype : kDtypes) {
        CAPTURE(dtype_name(dtype));
        run_and_check(row_spec(dtype, 40, 1024, 512, {16}, std::vector<int32_t>(40, 0)), rng);
        run_and_check(segment_spec(dtype, 1024, 512, {16}, {40}, {0}), rng);
    }
}

TEST_CASE("large and odd batch sizes match the reference") {
    const uint64_t seed = test_seed();
    INFO("LF_LORA_TEST_SEED=" << seed);
    std::mt19937_64 rng(seed);
    for (const int32_t dtype : kDtypes) {
        CAPTURE(dtype_name(dtype));
        for (const int32_t n : {1, 7, 9, 333, 1500}) {
            CAPTURE(n);
            run_and_check(row_spec(dtype, n, 136, 80, {4, 20, 64}, random_rows(rng, n, 3, 0.1)),
                          rng);
        }
        run_and_check(segment_spec(dtype, 64, 256, {16, 8, 32, 4}, {700, 3, 1, 301}, {0, 1, 2, 3}),
                      rng);
    }
}

TEST_CASE("strided x and y are read and written only inside the rows' hidden columns") {
    const uint64_t seed = test_seed();
    INFO("LF_LORA_TEST_SEED=" << seed);
    std::mt19937_64 rng(seed);
    for (const int32_t dtype : kDtypes) {
        CAPTURE(dtype_name(dtype));
        Spec s = row_spec(dtype, 21, 104, 48, {8, 24}, random_rows(rng, 21, 2, 0.2));
        s.ldx = 128;
        s.ldy = 72; // y padding columns must come back untouched (checked bit for bit)
        run_and_check(s, rng);
    }
}

TEST_CASE("results are bit-identical whatever the number of CPU threads") {
    std::mt19937_64 rng(test_seed());
    for (const int32_t dtype : kDtypes) {
        CAPTURE(dtype_name(dtype));
        // Big enough that the library really splits the work across threads.
        Problem p(row_spec(dtype, 300, 1024, 1024, {16, 64, 8, 32},
                           random_rows(rng, 300, 4, 0.1)),
                  rng);
        std::vector<uint8_t> first;
        for (const int32_t threads : {1, 2, 3, 8, 0}) {
            CAPTURE(threads);
            REQUIRE(lf_lora_cpu_set_threads(threads) == LF_OK);
            std::vector<uint8_t> y = p.y;
            REQUIRE(lf_lora_apply(&p.batch, p.x.data(), y.data()) == LF_OK);
            if (first.empty()) {
                first = y;
            }
            CHECK(y == first);
        }
        REQUIRE(lf_lora_cpu_set_threads(0) == LF_OK);
    }
}

// ---- instruction-set variants (kernels/lora/lora_cpu_kernels.h) ----

// Makes the library use one variant while alive, then the automatic choice again.
struct ForcedIsa {
    explicit ForcedIsa(const char *name) { ok = loraflip::lora::force_cpu_isa(name); }
    ~ForcedIsa() { loraflip::lora::force_cpu_isa(nullptr); }
    ForcedIsa(const ForcedIsa &) = delete;
    ForcedIsa &operator=(const ForcedIsa &) = delete;
    bool ok = false;
};

TEST_CASE("every CPU variant this machine runs matches the fp64 reference, others are skipped") {
    const uint64_t seed = test_seed();
    INFO("LF_LORA_TEST_SEED=" << seed);
    const auto variants = loraflip::lora::cpu_isa_variants();
    REQUIRE(!variants.empty());
    CHECK(std::string(variants.back().name) == "baseline"); // the fallback is always built
    CHECK(variants.back().supported);
    for (const auto &variant : variants) {
        CAPTURE(variant.name);
        if (!variant.supported) {
            MESSAGE("skipped: this CPU cannot run the " << variant.name << " variant");
            continue;
        }
        ForcedIsa forced(variant.name);
        REQUIRE(forced.ok);
        REQUIRE(std::string(lf_lora_cpu_isa()) == variant.name);
        std::mt19937_64 rng(seed);
        for (const int32_t dtype : kDtypes) {
            CAPTURE(dtype_name(dtype));
            // h_in 520 and 264 leave 8 columns past a multiple of 16 (and of 32, the bf16 dot
            // step), h_out 264 and 136 likewise for the expand's 16-wide vectors; 4096 is a
            // decode size. Mixed ranks cover partial register blocks of ranks (rank % 4 != 0).
            run_and_check(row_spec(dtype, 37, 520, 264, {4, 16, 3, 128, 9},
                                   random_rows(rng, 37, 5, 0.2)),
                          rng);
            run_and_check(row_spec(dtype, 9, 4096, 1032, {16, 7}, random_rows(rng, 9, 2, 0.1)),
                          rng);
            run_and_check(segment_spec(dtype, 264, 136, {8, 1, 32}, {0, 1, 70, 5, 0, 3},
                                       {0, 1, 2, LF_LORA_NO_ADAPTER, 1, 0}),
                          rng);
            Spec strided = row_spec(dtype, 13, 104, 48, {8, 24}, random_rows(rng, 13, 2, 0.2));
            strided.ldx = 128;
            strided.ldy = 72;
            run_and_check(strided, rng);

            // Deterministic per variant: the same bits for every thread count.
            Problem p(row_spec(dtype, 200, 1024, 1032, {16, 5}, random_rows(rng, 200, 2, 0.1)),
                      rng);
            std::vector<uint8_t> first;
            for (const int32_t threads : {1, 3, 0}) {
                REQUIRE(lf_lora_cpu_set_threads(threads) == LF_OK);
                std::vector<uint8_t> y = p.y;
                REQUIRE(lf_lora_apply(&p.batch, p.x.data(), y.data()) == LF_OK);
                if (first.empty()) {
                    first = y;
                }
                CHECK(y == first);
            }
            REQUIRE(lf_lora_cpu_set_threads(0) == LF_OK);
        }
    }
}

TEST_CASE("for f16 and bf16 the shrink gives the same bits on every variant but avx512bf16") {
    // Products of two 16-bit values are exact in fp32, so with the same summation order a fused
    // multiply-add changes nothing (lora_cpu_kernels.h); only VDPBF16PS pairs products.
    std::mt19937_64 rng(test_seed());
    for (const int32_t dtype : {LF_DTYPE_F16, LF_DTYPE_BF16}) {
        CAPTURE(dtype_name(dtype));
        Problem p(row_spec(dtype, 11, 1032, 64, {16, 3}, random_rows(rng, 11, 2, 0.0)), rng);
        std::vector<float> first;
        std::string first_name;
        for (const auto &variant : loraflip::lora::cpu_isa_variants()) {
            if (!variant.supported || std::string(variant.name) == "avx512bf16") {
                continue;
            }
            CAPTURE(variant.name);
            ForcedIsa forced(variant.name);
            REQUIRE(forced.ok);
            std::vector<float> v(static_cast<size_t>(p.spec.n_rows) * p.spec.max_rank, 0.0f);
            REQUIRE(lf_lora_shrink(&p.batch, p.x.data(), v.data()) == LF_OK);
            if (first.empty()) {
                first = v;
                first_name = variant.name;
            }
            CAPTURE(first_name);
            CHECK(std::memcmp(v.data(), first.data(), v.size() * sizeof(float)) == 0);
        }
    }
}

TEST_CASE("forcing a variant this build lacks changes nothing") {
    const std::string before = lf_lora_cpu_isa();
    CHECK_FALSE(loraflip::lora::force_cpu_isa("no-such-isa"));
    CHECK(std::string(lf_lora_cpu_isa()) == before);
}

TEST_CASE("the variant named by LORAFLIP_LORA_ISA is used when the CPU runs it") {
    // meson runs this once with LORAFLIP_LORA_ISA=baseline (tests/lora/meson.build); without
    // the variable the best supported variant is in use.
    const char *want = std::getenv("LORAFLIP_LORA_ISA");
    const std::string in_use = lf_lora_cpu_isa();
    MESSAGE("CPU variant in use: " << in_use);
    const auto variants = loraflip::lora::cpu_isa_variants();
    if (want == nullptr) {
        const auto best = std::find_if(variants.begin(), variants.end(),
                                       [](const auto &v) { return v.supported; });
        REQUIRE(best != variants.end());
        CHECK(in_use == best->name);
        return;
    }
    const auto named = std::find_if(variants.begin(), variants.end(),
                                    [&](const auto &v) { return std::string(v.name) == want; });
    if (named == variants.end() || !named->supported) {
        MESSAGE("skipped: " << want << " is not built or this CPU cannot run it");
        return;
    }
    CHECK(in_use == want);
}

TEST_CASE("shrink writes only the first rank entries of rows that have an adapter") {
    std::mt19937_64 rng(test_seed());
    Problem p(row_spec(LF_DTYPE_BF16, 5, 64, 64, {4, 12}, {0, -1, 1, 0, -1}), rng);
    p.batch.max_rank = 16; // wider than any rank: the tail of each v row is the caller's
    const float sentinel = -12345.0f;
    std::vector<float> v(5 * 16, sentinel);
    REQUIRE(lf_lora_shrink(&p.batch, p.x.data(), v.data()) == LF_OK);
    const int32_t ranks_of_rows[] = {4, 0, 12, 4, 0};
    for (int32_t i = 0; i < 5; ++i) {
        for (int32_t j = 0; j < 16; ++j) {
            CAPTURE(i);
            CAPTURE(j);
            CHECK((v[i * 16 + j] == sentinel) == (j >= ranks_of_rows[i]));
        }
    }
}

TEST_CASE("an empty batch is accepted and touches nothing") {
    lf_lora_batch_t b{};
    b.dtype = LF_DTYPE_F16;
    b.h_in = b.h_out = 8;
    b.max_rank = 4;
    b.select = LF_LORA_SELECT_ROWS;
    CHECK(lf_lora_apply(&b, nullptr, nullptr) == LF_OK);
    const int32_t offsets[] = {0};
    b.select = LF_LORA_SELECT_SEGMENTS;
    b.seg_offsets = offsets;
    CHECK(lf_lora_shrink(&b, nullptr, nullptr) == LF_OK);
    CHECK(lf_lora_expand(&b, nullptr, nullptr) == LF_OK);
}

TEST_CASE("bad arguments give LF_E_INVALID_ARGUMENT and write nothing") {
    std::mt19937_64 rng(test_seed());
    Problem p(row_spec(LF_DTYPE_F16, 6, 64, 32, {4, 8}, {0, 1, -1, 1, 0, 0}), rng);
    Problem seg(segment_spec(LF_DTYPE_F16, 64, 32, {4, 8}, {2, 3, 1}, {0, 1, 0}), rng);
    std::vector<float> v(6 * 8, 0.0f);

    // Runs all three CPU calls with one field broken and checks the status and that y and v
    // stayed as they were.
    auto expect_status = [&](Problem &prob, auto &&mutate, int want) {
        lf_lora_batch_t b = prob.batch;
        std::vector<lf_lora_adapter_t> table = prob.table;
        b.adapters = table.data();
        mutate(b, table);
        std::vector<uint8_t> y = prob.y;
        std::vector<float> v_before = v;
        CHECK(lf_lora_apply(&b, prob.x.data(), y.data()) == want);
        CHECK(lf_lora_shrink(&b, prob.x.data(), v.data()) == want);
        CHECK(lf_lora_expand(&b, v.data(), y.data()) == want);
        CHECK(y == prob.y);
        CHECK(v == v_before);
    };
    using Table = std::vector<lf_lora_adapter_t>;
    const int bad = LF_E_INVALID_ARGUMENT;

    SUBCASE("rank zero") { expect_status(p, [](lf_lora_batch_t &, Table &t) { t[1].rank = 0; }, bad); }
    SUBCASE("rank above max_rank") {
        expect_status(p, [](lf_lora_batch_t &, Table &t) { t[1].rank = 9; }, bad);
    }
    SUBCASE("max_rank above the supported maximum") {
        expect_status(p, [](lf_lora_batch_t &b, Table &t) {
            b.max_rank = LF_LORA_MAX_RANK + 1;
            t[1].rank = LF_LORA_MAX_RANK + 1;
        }, bad);
    }
    SUBCASE("max_rank zero") { expect_status(p, [](lf_lora_batch_t &b, Table &) { b.max_rank = 0; }, bad); }
    SUBCASE("h_in not a multiple of 8") {
        expect_status(p, [](lf_lora_batch_t &b, Table &) { b.h_in = 60; }, bad);
    }
    SUBCASE("h_out not a multiple of 8") {
        expect_status(p, [](lf_lora_batch_t &b, Table &) { b.h_out = 36; }, bad);
    }
    SUBCASE("h_out zero") { expect_status(p, [](lf_lora_batch_t &b, Table &) { b.h_out = 0; }, bad); }
    SUBCASE("ldx below h_in") { expect_status(p, [](lf_lora_batch_t &b, Table &) { b.ldx = 56; }, bad); }
    SUBCASE("ldy not a multiple of 8") {
        expect_status(p, [](lf_lora_batch_t &b, Table &) { b.ldy = 33; }, bad);
    }
    SUBCASE("negative row count") {
        expect_status(p, [](lf_lora_batch_t &b, Table &) { b.n_rows = -1; }, bad);
    }
    SUBCASE("unknown dtype") { expect_status(p, [](lf_lora_batch_t &b, Table &) { b.dtype = 9; }, bad); }
    SUBCASE("a loraflip.h dtype the LoRA API does not compute in") {
        for (const int32_t d : {LF_DTYPE_F64, LF_DTYPE_I8, LF_DTYPE_U8, LF_DTYPE_I32, LF_DTYPE_I64}) {
            expect_status(p, [d](lf_lora_batch_t &b, Table &t) {
                b.dtype = d;
                for (lf_lora_adapter_t &e : t) {
                    e.dtype = d;
                }
            }, bad);
        }
    }
    SUBCASE("unknown selection mode") {
        expect_status(p, [](lf_lora_batch_t &b, Table &) { b.select = 7; }, bad);
    }
    SUBCASE("null adapter table") {
        expect_status(p, [](lf_lora_batch_t &b, Table &) { b.adapters = nullptr; }, bad);
    }
    SUBCASE("null row_adapter") {
        expect_status(p, [](lf_lora_batch_t &b, Table &) { b.row_adapter = nullptr; }, bad);
    }
    SUBCASE("null A of a used adapter") {
        expect_status(p, [](lf_lora_batch_t &, Table &t) { t[0].a = nullptr; }, bad);
    }
    SUBCASE("null B of a used adapter") {
        expect_status(p, [](lf_lora_batch_t &, Table &t) { t[1].b = nullptr; }, bad);
    }
    SUBCASE("scale not finite") {
        expect_status(p, [](lf_lora_batch_t &, Table &t) { t[0].scale = NAN; }, bad);
    }
    SUBCASE("adapter index past the table") {
        expect_status(p, [](lf_lora_batch_t &b, Table &) { b.n_adapters = 1; }, bad);
    }
    SUBCASE("adapter index below -1") {
        static const int32_t rows[] = {0, 1, -2, 1, 0, 0};
        expect_status(p, [](lf_lora_batch_t &b, Table &) { b.row_adapter = rows; }, bad);
    }
    SUBCASE("segment offsets that go backwards") {
        static const int32_t offsets[] = {0, 3, 2, 6};
        expect_status(seg, [](lf_lora_batch_t &b, Table &) { b.seg_offsets = offsets; }, bad);
    }
    SUBCASE("segment offsets that do not start at 0") {
        static const int32_t offsets[] = {1, 2, 5, 6};
        expect_status(seg, [](lf_lora_batch_t &b, Table &) { b.seg_offsets = offsets; }, bad);
    }
    SUBCASE("segment offsets that do not end at n_rows") {
        expect_status(seg, [](lf_lora_batch_t &b, Table &) { b.n_rows = 7; }, bad);
    }
    SUBCASE("segment adapter past the table") {
        static const int32_t adapters[] = {0, 2, 0};
        expect_status(seg, [](lf_lora_batch_t &b, Table &) { b.seg_adapter = adapters; }, bad);
    }
    SUBCASE("null segment arrays") {
        expect_status(seg, [](lf_lora_batch_t &b, Table &) { b.seg_offsets = nullptr; }, bad);
        expect_status(seg, [](lf_lora_batch_t &b, Table &) { b.seg_adapter = nullptr; }, bad);
    }
    SUBCASE("negative segment count") {
        expect_status(seg, [](lf_lora_batch_t &b, Table &) { b.n_segments = -1; }, bad);
    }
    SUBCASE("an adapter of another dtype is unsupported, not invalid") {
        expect_status(p, [](lf_lora_batch_t &, Table &t) { t[1].dtype = LF_DTYPE_BF16; },
                      LF_E_UNSUPPORTED);
    }
    SUBCASE("a broken entry that no row uses is ignored") {
        static const int32_t rows[] = {0, 0, -1, 0, 0, 0};
        lf_lora_batch_t b = p.batch;
        std::vector<lf_lora_adapter_t> table = p.table;
        table[1].a = nullptr;
        table[1].rank = 0;
        b.adapters = table.data();
        b.row_adapter = rows;
        std::vector<uint8_t> y = p.y;
        CHECK(lf_lora_apply(&b, p.x.data(), y.data()) == LF_OK);
        CHECK(y != p.y);
    }
    SUBCASE("null batch, x or y") {
        std::vector<uint8_t> y = p.y;
        CHECK(lf_lora_apply(nullptr, p.x.data(), y.data()) == bad);
        CHECK(lf_lora_apply(&p.batch, nullptr, y.data()) == bad);
        CHECK(lf_lora_apply(&p.batch, p.x.data(), nullptr) == bad);
        CHECK(lf_lora_shrink(&p.batch, p.x.data(), nullptr) == bad);
        CHECK(lf_lora_expand(&p.batch, nullptr, y.data()) == bad);
        CHECK(y == p.y);
    }
}

TEST_CASE("the scale helper gives alpha over rank and alpha over the square root of rank") {
    float s = 0.0f;
    REQUIRE(lf_lora_scale(32.0f, 16, LF_LORA_SCALE_STANDARD, &s) == LF_OK);
    CHECK(s == 2.0f);
    REQUIRE(lf_lora_scale(32.0f, 16, LF_LORA_SCALE_RSLORA, &s) == LF_OK);
    CHECK(s == 8.0f);
    REQUIRE(lf_lora_scale(16.0f, 8, LF_LORA_SCALE_RSLORA, &s) == LF_OK);
    CHECK(s == static_cast<float>(16.0 / std::sqrt(8.0)));
    s = 7.0f;
    CHECK(lf_lora_scale(16.0f, 0, LF_LORA_SCALE_STANDARD, &s) == LF_E_INVALID_ARGUMENT);
    CHECK(lf_lora_scale(16.0f, 8, 5, &s) == LF_E_INVALID_ARGUMENT);
    CHECK(lf_lora_scale(INFINITY, 8, LF_LORA_SCALE_STANDARD, &s) == LF_E_INVALID_ARGUMENT);
    CHECK(lf_lora_scale(16.0f, 8, LF_LORA_SCALE_STANDARD, nullptr) == LF_E_INVALID_ARGUMENT);
    CHECK(s == 7.0f); // untouched on failure
}

TEST_CASE("status strings exist for every code and never are null") {
    for (const int st : {LF_OK, LF_E_INVALID_ARGUMENT, LF_E_INTERNAL, LF_E_UNSUPPORTED, 12345,
                         -999}) {
        REQUIRE(lf_lora_strerror(st) != nullptr);
    }
    CHECK(std::string(lf_lora_strerror(LF_E_UNSUPPORTED)) == "unsupported");
    CHECK(LF_E_INVALID_ARGUMENT == -1);
    CHECK(LF_E_INTERNAL == -17);
    CHECK(LF_E_UNSUPPORTED == -20);
    CHECK(lf_lora_cpu_set_threads(-1) == LF_E_INVALID_ARGUMENT);
    CHECK(sizeof(lf_lora_adapter_t) == 32);
}

#ifndef LF_LORA_TEST_WITH_CUDA
TEST_CASE("without CUDA built, the CUDA entry points say unsupported") {
    lf_lora_batch_t b{};
    size_t bytes = 0;
    CHECK(lf_lora_cuda_shrink(&b, nullptr, nullptr, nullptr, nullptr) == LF_E_UNSUPPORTED);
    CHECK(lf_lora_cuda_expand(&b, nullptr, nullptr, nullptr, nullptr) == LF_E_UNSUPPORTED);
    CHECK(lf_lora_cuda_apply(&b, nullptr, nullptr, nullptr, &bytes, nullptr, nullptr) ==
          LF_E_UNSUPPORTED);
    CHECK(lf_lora_cuda_apply_single(0, 0, 8, 8, nullptr, 0, nullptr, 0, nullptr, nullptr, &bytes,
                                    nullptr, nullptr) == LF_E_UNSUPPORTED);
}
#else
TEST_CASE("with CUDA built, the CUDA entry points check host-visible arguments first") {
    size_t bytes = 0;
    CHECK(lf_lora_cuda_apply(nullptr, nullptr, nullptr, nullptr, &bytes, nullptr, nullptr) ==
          LF_E_INVALID_ARGUMENT);
    lf_lora_batch_t b{};
    b.dtype = LF_DTYPE_F16;
    b.h_in = 12; // not a multiple of 8
    b.h_out = 8;
    b.max_rank = 4;
    CHECK(lf_lora_cuda_shrink(&b, nullptr, nullptr, nullptr, nullptr) ==
          LF_E_INVALID_ARGUMENT);
    CHECK(lf_lora_cuda_apply_single(LF_DTYPE_F16, 4, 8, 8, nullptr, 0, nullptr, 0, nullptr,
                                    nullptr, &bytes, nullptr, nullptr) ==
          LF_E_INVALID_ARGUMENT);
}
#endif
