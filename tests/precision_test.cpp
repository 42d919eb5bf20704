// bfloat16 and half: every kernel on every 16-bit path this machine has (amx, avx512bf16 with each of its prefill
// products, generic, forced in turn through detail::set_bf16_path and set_bf16_products) against the double reference
// on the same, already rounded, inputs. The contract bounds the NMSE of outputs, lse and weights by 1e-4; rows that see
// no key must be exactly zero; results must not depend on the thread count within a path. The worst NMSE per path and
// type is printed (and asserted).
#include <gtest/gtest.h>

#include <attend/attend.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include "test_util.hpp"

using attend::Heads;
using attend::Index;
using attend::Mask;
using attend::Matrix;
using attend::Options;
using attend::detail::Bf16Path;
using attend::detail::Bf16Products;
using bf16 = Eigen::bfloat16;
using half = Eigen::half;

namespace {

// sum (a - b)^2 / sum b^2, 0 when both are zero.
template <class A, class B>
double nmse(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  const Eigen::MatrixXd x = a.template cast<double>(), y = b.template cast<double>();
  if (x.rows() != y.rows() || x.cols() != y.cols()) return std::numeric_limits<double>::infinity();
  const double den = y.squaredNorm(), num = (x - y).squaredNorm();
  return den == 0 ? (num == 0 ? 0 : std::numeric_limits<double>::infinity()) : num / den;
}

// lse compared where finite; -inf (rows that see no key) must match exactly.
template <class A>
double lse_nmse(const Eigen::MatrixBase<A>& got, const Matrix<double>& want) {
  double num = 0, den = 0;
  for (Index i = 0; i < want.rows(); ++i)
    for (Index j = 0; j < want.cols(); ++j) {
      if (std::isinf(want(i, j))) {
        if (double(got(i, j)) != want(i, j)) return std::numeric_limits<double>::infinity();
        continue;
      }
      num += std::pow(double(got(i, j)) - want(i, j), 2);
      den += want(i, j) * want(i, j);
    }
  return den == 0 ? num : num / den;
}

template <class T>
Matrix<T> random16(Index rows, Index cols, std::mt19937& rng, double stddev = 1.0) {
  return attend_test::random_matrix<float>(rows, cols, rng, stddev).template cast<T>();
}

// A 16-bit path and, on the avx512bf16 path, the prefill tile products it takes.
struct Route {
  Bf16Path path;
  Bf16Products products = Bf16Products::widen;
  std::string name() const {
    std::string n = attend::detail::path_name(path);
    return path == Bf16Path::avx512bf16 ? n + "/" + attend::detail::products_name(products) : n;
  }
};

// The routes this machine can take (both products on the avx512bf16 path), each forced for the scope of one test.
std::vector<Route> paths() {
  std::vector<Route> out{{Bf16Path::generic}};
  for (Bf16Path p : {Bf16Path::avx512bf16, Bf16Path::amx}) {
    attend::detail::set_bf16_path(p);
    if (attend::detail::bf16_path_now() != p) continue;
    if (p == Bf16Path::avx512bf16)
      for (Bf16Products k : {Bf16Products::widen, Bf16Products::dot}) out.push_back({p, k});
    else
      out.push_back({p});
  }
  attend::detail::reset_bf16_path();
  return out;
}

struct ForcePath {
  explicit ForcePath(const Route& r) {
    attend::detail::set_bf16_path(r.path);
    attend::detail::set_bf16_products(r.products);
  }
  ~ForcePath() {
    attend::detail::reset_bf16_path();
    attend::detail::reset_bf16_products();
  }
};

// The worst NMSE seen, per path and type, printed at the end of the program.
std::map<std::string, double>& worst() {
  static auto* w = new std::map<std::string, double>;  // outlives print_worst (never destroyed)
  return *w;
}
struct PrintWorst {
  ~PrintWorst() {
    for (const auto& [k, v] : worst()) std::printf("worst NMSE %-28s %.3g\n", k.c_str(), v);
  }
} print_worst;

void record(const std::string& key, double e) { worst()[key] = std::max(worst()[key], e); }

const char* type_name(const bf16*) { return "bf16"; }
const char* type_name(const half*) { return "half"; }

template <class T>
class Precision : public ::testing::Test {};
using Sixteen = ::testing::Types<bf16, half>;
TYPED_TEST_SUITE(Precision, Sixteen);

const Mask kMasks[] = {Mask::none(), Mask::causal(), Mask::causal_top_left(), Mask::sliding_window(37)};

// Prefill and decode shapes around the tiles (query tiles of 256 rows, key tiles of 256 and the 16-bit mainloop's
// 32-key steps), Lq != Lk, head dims 64, 80, 96, 128, dv != d, GQA and MHA, every mask.
TYPED_TEST(Precision, EveryPathMatchesTheDoubleReferenceWithinTheContractsNmse) {
  using T = TypeParam;
  std::mt19937 rng(80);
  struct Shape {
    Index lq, lk, d, dv;
    Heads h;
  };
  const Shape shapes[] = {{300, 300, 64, 64, {4, 4}},  {257, 513, 80, 96, {4, 2}}, {40, 1100, 96, 64, {8, 2}},
                          {1, 3000, 128, 128, {8, 2}}, {4, 700, 128, 80, {8, 8}},  {600, 70, 128, 128, {2, 1}},
                          {33, 33, 96, 96, {3, 3}}};
  for (const Route& path : paths()) {
    const ForcePath force(path);
    const std::string key = path.name() + " " + type_name((T*)nullptr);
    for (const Shape& s : shapes)
      for (const Mask& m : kMasks) {
        Options o;
        o.mask = m;
        const Matrix<T> q = random16<T>(s.lq, s.h.query * s.d, rng), k = random16<T>(s.lk, s.h.kv * s.d, rng);
        const Matrix<T> v = random16<T>(s.lk, s.h.kv * s.dv, rng);
        const auto got = attend::multi_head_attention_with_lse(q, k, v, s.h, o);
        const auto want = attend::reference::multi_head_attention_with_lse(q, k, v, s.h, o);
        const double e = nmse(got.out, want.out), el = lse_nmse(got.lse, want.lse);
        record(key + " out", e);
        record(key + " lse", el);
        ASSERT_LE(e, 1e-4) << key << " " << s.lq << "x" << s.lk << " d " << s.d << " " << m;
        ASSERT_LE(el, 1e-4) << key << " " << s.lq << "x" << s.lk << " d " << s.d << " " << m;
        // Rows that see no key are exactly zero (bottom-right causal with Lq > Lk hides everything from the first
        // Lq - Lk rows).
        for (Index i = 0; i < s.lq; ++i) {
          if (want.out.row(i).isZero(0)) {
            ASSERT_TRUE((got.out.row(i).template cast<float>().array() == 0.f).all()) << key << " row " << i;
          }
        }
      }
  }
}

TYPED_TEST(Precision, SingleHeadWeightsBiasSoftcapAndLkZeroOnEveryPath) {
  using T = TypeParam;
  std::mt19937 rng(81);
  for (const Route& path : paths()) {
    const ForcePath force(path);
    const std::string key = path.name() + " " + type_name((T*)nullptr);
    for (auto [lq, lk] : {std::pair<Index, Index>{300, 260}, {5, 2000}, {64, 64}}) {
      const Matrix<T> q = random16<T>(lq, 64, rng), k = random16<T>(lk, 64, rng), v = random16<T>(lk, 48, rng);
      Matrix<T> bias = random16<T>(lq, lk, rng);
      bias.col(1).setConstant(T(-std::numeric_limits<float>::infinity()));
      Options o;
      o.mask = Mask::causal();
      o.softcap = 4;
      o.scale = 0.3;
      const Matrix<T> out = attend::scaled_dot_product_attention(q, k, v, bias, o);
      const Matrix<double> bias_d = bias.template cast<double>();
      const Matrix<double> want = attend::reference::scaled_dot_product_attention(q, k, v, o, &bias_d);
      record(key + " out", nmse(out, want));
      ASSERT_LE(nmse(out, want), 1e-4) << key << " " << lq << "x" << lk;
      const Matrix<T> w = attend::attention_weights(q, k, bias, o);
      const Matrix<double> ww = attend::reference::attention_weights(q, k, o, &bias_d);
      record(key + " weights", nmse(w, ww));
      ASSERT_LE(nmse(w, ww), 1e-4) << key << " weights";
      for (Index i = 0; i < lq; ++i) EXPECT_EQ(w(i, 1), T(0)) << "a -inf bias hides key 1";
    }
    // Lk = 0: every row sees nothing.
    const Matrix<T> q = random16<T>(7, 64, rng);
    const auto none = attend::scaled_dot_product_attention_with_lse(q, Matrix<T>(0, 64), Matrix<T>(0, 32));
    EXPECT_TRUE((none.out.template cast<float>().array() == 0.f).all());
    EXPECT_TRUE((none.lse.array() == -std::numeric_limits<float>::infinity()).all());
  }
}

// Float queries over 16-bit keys and values (a 16-bit KV cache): the result is float and only k and v are rounded.
TYPED_TEST(Precision, FloatQueriesOver16BitKeysAndValuesRoundOnlyTheCache) {
  using S = TypeParam;
  std::mt19937 rng(82);
  for (const Route& path : paths()) {
    const ForcePath force(path);
    const std::string key = path.name() + " float/" + type_name((S*)nullptr);
    for (auto [lq, lk] : {std::pair<Index, Index>{1, 5000}, {4, 900}, {300, 300}}) {
      Options o;
      o.mask = Mask::causal();
      const Matrix<float> q = attend_test::random_matrix<float>(lq, 8 * 128, rng);
      const Matrix<S> k = random16<S>(lk, 2 * 128, rng), v = random16<S>(lk, 2 * 128, rng);
      const Matrix<float> got = attend::multi_head_attention(q, k, v, Heads{8, 2}, o);
      const Matrix<double> want = attend::reference::multi_head_attention(q, k, v, Heads{8, 2}, o);
      record(key + " out", nmse(got, want));
      // Nothing but k and v is rounded: float accuracy, far inside the contract's 1e-4.
      ASSERT_LE(attend_test::max_abs_diff(got, want), 1e-5) << key << " " << lq << "x" << lk;
    }
    // Head dims that end in a partial vector (72 = 4 x 16 + 8, 40 = 2 x 16 + 8): the narrow products' masked tails.
    for (Index lq : {1, 3}) {
      Options o;
      o.mask = Mask::causal();
      const Matrix<float> q = attend_test::random_matrix<float>(lq, 4 * 72, rng);
      const Matrix<S> k = random16<S>(600, 2 * 72, rng), v = random16<S>(600, 2 * 40, rng);
      const Matrix<float> got = attend::multi_head_attention(q, k, v, Heads{4, 2}, o);
      const Matrix<double> want = attend::reference::multi_head_attention(q, k, v, Heads{4, 2}, o);
      ASSERT_LE(attend_test::max_abs_diff(got, want), 1e-5) << key << " d 72, dv 40, Lq " << lq;
    }
  }
}

TYPED_TEST(Precision, OneAndTwoThreadsAgreeBitForBitOnEveryPath) {
#if defined(_OPENMP)
  using T = TypeParam;
  std::mt19937 rng(83);
  const int restore = omp_get_max_threads();
  for (const Route& path : paths()) {
    const ForcePath force(path);
    for (auto [lq, lk] : {std::pair<Index, Index>{700, 700}, {2, 9000}}) {
      Options o;
      o.mask = Mask::causal();
      const Matrix<T> q = random16<T>(lq, 8 * 64, rng), k = random16<T>(lk, 2 * 64, rng),
                      v = random16<T>(lk, 2 * 64, rng);
      attend::AttentionResult<T> r[2];
      for (int t : {1, 2}) {
        omp_set_num_threads(t);
        r[t - 1] = attend::multi_head_attention_with_lse(q, k, v, Heads{8, 2}, o);
      }
      EXPECT_TRUE(r[0].out == r[1].out) << path.name() << " " << lq << "x" << lk;
      EXPECT_TRUE(r[0].lse == r[1].lse) << path.name() << " " << lq << "x" << lk;
    }
  }
  omp_set_num_threads(restore);
#else
  GTEST_SKIP() << "built without OpenMP";
#endif
}

// Hidden keys with non-finite values never reach an output, also through the 16-bit tile products (which would
// multiply a zero weight by inf).
TYPED_TEST(Precision, HiddenNonFiniteValuesNeverReachAnOutputOnEveryPath) {
  using T = TypeParam;
  std::mt19937 rng(84);
  for (const Route& path : paths()) {
    const ForcePath force(path);
    Matrix<T> q = random16<T>(300, 64, rng), k = random16<T>(300, 64, rng), v = random16<T>(300, 64, rng);
    v(299, 3) = T(std::numeric_limits<float>::infinity());
    v(298, 0) = T(std::numeric_limits<float>::quiet_NaN());
    Options o;
    o.mask = Mask::causal();
    const Matrix<T> out = attend::scaled_dot_product_attention(q, k, v, o);
    EXPECT_TRUE(out.topRows(298).template cast<float>().allFinite()) << path.name();
    // Decoding 4 positions (the rows mainloop, its narrow products skipping zero weights key by key): rows 0 and
    // 1 see neither key, and equal the reference, dv = 64 being two whole 32-value chunks of bfloat16 pairs.
    const Matrix<T> q4 = random16<T>(4, 64, rng);
    const Matrix<T> decoded = attend::scaled_dot_product_attention(q4, k, v, o);
    const auto want = attend::reference::scaled_dot_product_attention(q4, k, v, o);
    EXPECT_TRUE(decoded.topRows(2).template cast<float>().allFinite()) << path.name();
    EXPECT_LE(nmse(decoded.topRows(2), want.topRows(2)), 1e-4) << path.name();
    // Float queries over the same 16-bit keys and values.
    const Matrix<float> q4f = q4.template cast<float>();
    const Matrix<float> mixed = attend::scaled_dot_product_attention(q4f, k, v, o);
    EXPECT_LE(nmse(mixed.topRows(2), want.topRows(2)), 1e-4) << path.name();
  }
}

TYPED_TEST(Precision, MergeAndSinksWorkOn16BitResults) {
  using T = TypeParam;
  std::mt19937 rng(85);
  const Matrix<T> q = random16<T>(20, 4 * 32, rng), k = random16<T>(90, 2 * 32, rng), v = random16<T>(90, 2 * 32, rng);
  std::vector<attend::AttentionResult<T>> parts;
  for (auto [b, e] : {std::pair<Index, Index>{0, 40}, {40, 90}})
    parts.push_back(attend::multi_head_attention_with_lse(q, k.middleRows(b, e - b), v.middleRows(b, e - b), {4, 2}));
  const auto merged = attend::apply_sinks(attend::merge_attention(parts), {0.5, -1, 2, 0});
  Options o;
  o.sinks = {0.5, -1, 2, 0};
  const auto want = attend::reference::multi_head_attention_with_lse(q, k, v, {4, 2}, o);
  EXPECT_LE(nmse(merged.out, want.out), 1e-4);
  EXPECT_LE(lse_nmse(merged.lse, want.lse), 1e-4);
}

// A float layer decoding through a cache stored in 16 bits gives the rows of the float kernel over the rounded
// keys and values (only the cache is rounded); MLA's absorbed decode over a 16-bit latent cache stays within the
// contract's NMSE of its float forward.
TYPED_TEST(Precision, LayersDecodingOver16BitCachesRoundOnlyTheCache) {
  using S = TypeParam;
  std::mt19937 rng(86);
  const auto mha = attend_test::random_mha<float>(64, 8, 2, 16, rng);
  const Matrix<float> x = attend_test::random_matrix<float>(70, 64, rng);
  Options o;
  o.mask = Mask::causal();
  for (const Route& path : paths()) {
    const ForcePath force(path);
    attend::KVCache<float, S> cache;
    Matrix<float> y(70, 64);
    for (auto [b, n] : {std::pair<Index, Index>{0, 40}, {40, 1}, {41, 29}})
      y.middleRows(b, n) = mha.forward(x.middleRows(b, n), cache, o);
    EXPECT_EQ(cache.bytes(), std::size_t(70 * 2 * 2 * 16 * sizeof(S)));
    const Matrix<float> q = mha.q_proj(x), k = mha.k_proj(x), v = mha.v_proj(x);
    const Matrix<S> k16 = k.cast<S>(), v16 = v.cast<S>();
    const Matrix<float> want = mha.o_proj(attend::multi_head_attention(q, k16, v16, Heads{8, 2}, o));
    EXPECT_LE(attend_test::max_abs_diff(y, want), 1e-5 * (1 + want.cwiseAbs().maxCoeff())) << path.name();

    typename attend::MultiHeadLatentAttention<float>::Config cfg{64, 4, 0, 32, 16, 8, 16};
    attend::MultiHeadLatentAttention<float> mla(cfg);
    for (auto* lin : {&mla.q_proj, &mla.kv_a_proj_with_mqa, &mla.kv_b_proj, &mla.o_proj})
      attend_test::randomize(*lin, rng, false);
    attend::LatentCache<float, S> latent;
    Matrix<float> z(70, 64);
    for (Index i = 0; i < 70; i += 10) z.middleRows(i, 10) = mla.forward(x.middleRows(i, 10), latent, o);
    EXPECT_LE(nmse(z, mla.forward(x, o)), 1e-4) << path.name();
  }
}

TEST(PrecisionPath, NamesAPathAndTheTypesComputeInFloat) {
  const std::string p = attend::bf16_path();
  EXPECT_TRUE(p == "amx" || p == "avx512bf16" || p == "generic") << p;
  static_assert(std::is_same_v<attend::accumulator_t<bf16>, float>);
  static_assert(std::is_same_v<attend::accumulator_t<half>, float>);
  static_assert(std::is_same_v<attend::accumulator_t<double>, double>);
  static_assert(std::is_same_v<decltype(attend::AttentionResult<bf16>::lse), Matrix<float>>);
  attend::detail::set_bf16_path(Bf16Path::generic);
  EXPECT_STREQ(attend::bf16_path(), "generic");
  attend::detail::reset_bf16_path();
}

// The avx512bf16 path's prefill products: vdpbf16ps on AMD's cores, widening and FMA on the others, unless
// ATTEND_BF16_PRODUCTS says; set_bf16_products overrides both until reset.
TEST(PrecisionPath, TheVendorChoosesTheAvx512Bf16ProductsUnlessTold) {
  if (std::getenv("ATTEND_BF16_PRODUCTS") == nullptr) {
    const Bf16Products want = attend::detail::cpu().amd ? Bf16Products::dot : Bf16Products::widen;
    EXPECT_EQ(attend::detail::bf16_products_now(), want);
  }
  for (Bf16Products p : {Bf16Products::widen, Bf16Products::dot}) {
    attend::detail::set_bf16_products(p);
    EXPECT_EQ(attend::detail::bf16_products_now(), p);
  }
  attend::detail::reset_bf16_products();
  EXPECT_EQ(attend::detail::bf16_products_now(), attend::detail::env_products());
  EXPECT_STREQ(attend::detail::products_name(Bf16Products::dot), "dot");
  EXPECT_STREQ(attend::detail::products_name(Bf16Products::widen), "widen");
}

}  // namespace
