// Numerical edge cases beyond kernels_test.cpp: logits of +-1e4 with known answers on every path (one pass,
// online rescaling across tiles, split-key decode), NaN confined to its own query row (and head) in kernels and
// layers, non-finite keys hidden by every mask kind never reaching an output (default and small tiles, decode,
// multi-head), fully masked rows on every path, denormal inputs, Lq = 1, Lk = 1, head_dim = 1, and rows of
// 100 000 keys whose float error stays near the double reference.
#include <gtest/gtest.h>

#include <attend/attend.hpp>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "kernel_seam.hpp"
#include "test_util.hpp"

using attend::Heads;
using attend::Index;
using attend::Mask;
using attend::Matrix;
using attend::Options;
using attend::Vector;
using attend_test::kernel;
using attend_test::max_abs_diff;
using attend_test::random_matrix;
using attend_test::random_mha;
using attend_test::tiles;
using attend_test::tolerance;

namespace {

template <class T>
constexpr T inf() {
  return std::numeric_limits<T>::infinity();
}
template <class T>
constexpr T nan() {
  return std::numeric_limits<T>::quiet_NaN();
}

Options with(Mask m, std::optional<double> scale = std::nullopt, double softcap = 0) {
  Options o;
  o.mask = m;
  o.scale = scale;
  o.softcap = softcap;
  return o;
}

// Every way the kernel can be entered for multi-head inputs: the public function (default tiles, which take the
// split-key decode path for short queries over more than 1024 keys) and small tiles that cut everything.
template <class T>
std::vector<std::pair<
    const char*, std::function<Matrix<T>(const Matrix<T>&, const Matrix<T>&, const Matrix<T>&, Heads, const Options&)>>>
paths() {
  return {
      {"public", [](const Matrix<T>& q, const Matrix<T>& k, const Matrix<T>& v, Heads h,
                    const Options& o) { return attend::multi_head_attention(q, k, v, h, o); }},
      {"tiles 4x8, chunks of 16",
       [](const Matrix<T>& q, const Matrix<T>& k, const Matrix<T>& v, Heads h, const Options& o) {
         return kernel<T>(q, k, v, h, o, tiles().with_queries(4).with_keys(8).with_decode_chunk(16));
       }},
      {"tiles 1x1, chunks of 3",
       [](const Matrix<T>& q, const Matrix<T>& k, const Matrix<T>& v, Heads h, const Options& o) {
         return kernel<T>(q, k, v, h, o, tiles().with_queries(1).with_keys(1).with_decode_chunk(3));
       }},
  };
}

template <class T>
class Numerics : public ::testing::Test {};
TYPED_TEST_SUITE(Numerics, attend_test::Scalars);

// ---------------------------------------------------------------------------------------------------------------
// Logits of +-1e4.

// One query (q = 100, scale 1) over keys 100, -100, 99.99 gives scores 1e4, -1e4, 9999: weights
// [1, 0, e^-1] / (1 + e^-1) exactly as computed in double, whatever tile or chunk each key falls in.
TYPED_TEST(Numerics, LogitsOfTenThousandHaveTheExactAnswerOnEveryPath) {
  using T = TypeParam;
  const double big = 1e4;
  // Keys placed so that the maximum comes first, last, or in the middle of a long row (split-key decode and
  // online rescaling both see it), with the rest of the row at -1e4.
  for (Index lk : {3, 40, 3000})
    for (Index at : {Index(0), lk / 2, lk - 1}) {
      Matrix<T> q(1, 1), k = Matrix<T>::Constant(lk, 1, T(-100)), v = Matrix<T>::Zero(lk, 2);
      q << T(100);
      const Index second = at == 0 ? lk - 1 : 0;
      k(at, 0) = T(100);
      k(second, 0) = T(99.99);
      v.row(at) << T(1), T(-3);
      v.row(second) << T(5), T(7);
      // In T, 100 * 99.99 is not exactly 9999 (the grid of T near 1e4 is ~1e-3 in float): expect the score the
      // kernel forms, one product rounded to T.
      const double s2 = double(T(T(100) * T(99.99)));
      const double e = std::exp(s2 - big);
      const double w0 = 1 / (1 + e), w1 = e / (1 + e);
      Options o;
      o.scale = 1.0;
      for (const auto& [name, run] : paths<T>()) {
        const Matrix<T> out = run(q, k, v, Heads{1, 1}, o);
        EXPECT_NEAR(out(0, 0), w0 * 1 + w1 * 5, 4 * tolerance<T>()) << name << " lk " << lk << " at " << at;
        EXPECT_NEAR(out(0, 1), w0 * -3 + w1 * 7, 4 * tolerance<T>()) << name << " lk " << lk << " at " << at;
      }
      const auto r = attend::scaled_dot_product_attention_with_lse(q, k, v, o);
      // lse = 1e4 + log(1 + e^-1 + (lk - 2) e^-2e4): relative to 1e4, exact to T's rounding.
      EXPECT_NEAR(double(r.lse(0, 0)), big + std::log1p(e), big * 4 * std::numeric_limits<T>::epsilon());
      const Matrix<T> w = attend::attention_weights(q, k, o);
      EXPECT_NEAR(w(0, at), w0, 4 * tolerance<T>());
      EXPECT_NEAR(w(0, second), w1, 4 * tolerance<T>());
      EXPECT_NEAR(double(w.sum()), 1.0, 4 * tolerance<T>());
    }
}

// Every score of a row near -1e4 (no key is favoured): the stable softmax still gives the exact weights; a
// naive exp() would underflow every term to 0 and return 0/0.
TYPED_TEST(Numerics, AllScoresNearMinusTenThousandDoNotUnderflow) {
  using T = TypeParam;
  Matrix<T> q(2, 1), k(3, 1), v(3, 1);
  q << T(-100), T(100);
  k << T(100), T(100), T(99.99);
  v << T(2), T(4), T(8);
  Options o;
  o.scale = 1.0;
  const Matrix<T> out = attend::scaled_dot_product_attention(q, k, v, o);
  ASSERT_TRUE(out.allFinite());
  // Row 0: scores -1e4, -1e4, -9999: the last key wins by e^1. Row 1: 1e4, 1e4, 9999.
  const double s = double(T(T(100) * T(99.99))) - 1e4;  // ~ -1, as rounded in T
  const double e0 = std::exp(-s), e1 = std::exp(s);
  EXPECT_NEAR(out(0, 0), (2 + 4 + 8 * e0) / (2 + e0), 4 * tolerance<T>());
  EXPECT_NEAR(out(1, 0), (2 + 4 + 8 * e1) / (2 + e1), 4 * tolerance<T>());
  const Matrix<T> mh = attend::multi_head_attention(q, k, v, Heads{1, 1}, o);
  EXPECT_EQ(mh, out);
}

// A bias of +-1e4 on top of ordinary scores selects or removes keys exactly, and a softcap bounds scores of 1e4.
TYPED_TEST(Numerics, BiasAndSoftcapAtTenThousand) {
  using T = TypeParam;
  std::mt19937 rng(100);
  const auto q = random_matrix<T>(5, 8, rng), k = random_matrix<T>(7, 8, rng), v = random_matrix<T>(7, 3, rng);
  Matrix<T> bias = Matrix<T>::Constant(5, 7, T(-1e4));
  for (Index i = 0; i < 5; ++i) bias(i, (2 * i) % 7) = T(1e4);  // each row picks one key
  const Matrix<T> out = attend::scaled_dot_product_attention(q, k, v, bias);
  for (Index i = 0; i < 5; ++i) EXPECT_LE(max_abs_diff(out.row(i), v.row((2 * i) % 7)), tolerance<T>()) << "row " << i;
  const Matrix<double> bias_d = bias.template cast<double>();
  Matrix<T> got =
      kernel<T>(q, k, v, Heads{1, 1}, Options{}, tiles().with_queries(2).with_keys(2).with_decode_chunk(2), &bias);
  EXPECT_LE(max_abs_diff(got, attend::reference::scaled_dot_product_attention(q, k, v, Options{}, &bias_d)),
            tolerance<T>());
  // Softcap 30 with scale 1e4: raw scores of ~1e4 become 30 tanh(s / 30), within [-30, 30]. Saturated scores
  // are exact; a raw score near 0 carries T's rounding of q . k times 1e4 (~3e-3 in float) through the cap.
  const Options capped = with(Mask::causal(), 1e4, 30.0);
  EXPECT_LE(max_abs_diff(attend::scaled_dot_product_attention(q, k, v, capped),
                         attend::reference::scaled_dot_product_attention(q, k, v, capped)),
            (std::is_same_v<T, float> ? 1e-2 : 1e-9));
}

// ---------------------------------------------------------------------------------------------------------------
// NaN in one query row.

// NaN in query head h of row r: exactly that row's head-h output (and its lse) is NaN; every other head of the
// row, and every other row, is finite. For MHA, GQA (heads of a group share a tile) and MQA, on every path.
TYPED_TEST(Numerics, NanInOneQueryHeadStaysInThatHeadAndRow) {
  using T = TypeParam;
  std::mt19937 rng(101);
  for (Heads h : {Heads{3, 3}, Heads{4, 2}, Heads{4, 1}})
    for (auto [lq, lk] : {std::pair<Index, Index>{9, 30}, {2, 3000}, {300, 300}})
      for (const Mask& m : {Mask::none(), Mask::causal(), Mask::sliding_window(7)}) {
        const Index d = 4, dv = 3;
        auto q = random_matrix<T>(lq, h.query * d, rng);
        const auto k = random_matrix<T>(lk, h.kv * d, rng), v = random_matrix<T>(lk, h.kv * dv, rng);
        const Index r = lq / 2, head = h.query - 1;
        q(r, head * d + 1) = nan<T>();
        for (const auto& [name, run] : paths<T>()) {
          if (lq * lk > 20000 && std::string(name) != "public") continue;  // small tiles: small shapes only
          const Matrix<T> out = run(q, k, v, h, with(m));
          for (Index i = 0; i < lq; ++i)
            for (Index hh = 0; hh < h.query; ++hh) {
              const bool poisoned = i == r && hh == head && !m.keys(i, lq, lk).empty();
              const auto block = out.block(i, hh * dv, 1, dv);
              if (poisoned)
                EXPECT_TRUE(block.array().isNaN().all()) << name << " row " << i << " head " << hh;
              else
                ASSERT_TRUE(block.allFinite()) << name << " row " << i << " head " << hh << " heads " << h.query << "/"
                                               << h.kv << " lq " << lq << " lk " << lk << " " << m;
            }
        }
        const auto with_lse = attend::multi_head_attention_with_lse(q, k, v, h, with(m));
        for (Index i = 0; i < lq; ++i)
          for (Index hh = 0; hh < h.query; ++hh)
            EXPECT_EQ(std::isnan(with_lse.lse(i, hh)), i == r && hh == head) << i << " " << hh;
      }
}

TYPED_TEST(Numerics, NanInOneQueryRowOfWeightsAndBiasedAttention) {
  using T = TypeParam;
  std::mt19937 rng(102);
  auto q = random_matrix<T>(6, 4, rng);
  const auto k = random_matrix<T>(9, 4, rng), v = random_matrix<T>(9, 2, rng), bias = random_matrix<T>(6, 9, rng);
  q(4, 0) = nan<T>();
  const Options o = with(Mask::causal(), std::nullopt, 5.0);  // softcap: tanh(NaN) is NaN
  const Matrix<T> w = attend::attention_weights(q, k, bias, o);
  const Matrix<T> out = attend::scaled_dot_product_attention(q, k, v, bias, o);
  for (Index i = 0; i < 6; ++i) {
    EXPECT_EQ(w.row(i).array().isNaN().any(), i == 4) << i;
    EXPECT_EQ(out.row(i).array().isNaN().any(), i == 4) << i;
  }
}

template <class T>
attend::MultiHeadLatentAttention<T> random_mla(typename attend::MultiHeadLatentAttention<T>::Config c,
                                               std::mt19937& rng) {
  attend::MultiHeadLatentAttention<T> m(c);
  for (auto* lin : {&m.q_proj, &m.q_a_proj, &m.q_b_proj, &m.kv_a_proj_with_mqa, &m.kv_b_proj, &m.o_proj})
    if (lin->weight.size() != 0) {
      lin->weight = random_matrix<T>(lin->weight.rows(), lin->weight.cols(), rng, 0.3);
    }
  if (c.q_lora_rank > 0) m.q_a_layernorm.weight = Vector<T>::Constant(c.q_lora_rank, T(1.1));
  m.kv_a_layernorm.weight = Vector<T>::Constant(c.kv_lora_rank, T(0.9));
  return m;
}

// Layers: a token whose input row is NaN is also a NaN key and value. In cross-attention only its own output
// row is NaN; in causal self-attention (whole, or decoded through a cache) the rows before it never see it.
TYPED_TEST(Numerics, NanInOneTokenOfALayerStaysWhereTheMaskLetsItGo) {
  using T = TypeParam;
  std::mt19937 rng(103);
  const Options causal = with(Mask::causal());
  const Index L = 12, r = 7;
  const auto expect_rows = [&](const Matrix<T>& out, Index nan_from, Index nan_to, const char* what) {
    for (Index i = 0; i < out.rows(); ++i) {
      if (i >= nan_from && i < nan_to)
        EXPECT_TRUE(out.row(i).array().isNaN().all()) << what << " row " << i;
      else
        EXPECT_TRUE(out.row(i).allFinite()) << what << " row " << i;
    }
  };
  for (auto [heads, kv] : {std::pair{4, 4}, std::pair{4, 2}, std::pair{4, 1}}) {
    const auto mha = random_mha<T>(16, heads, kv, 4, rng);
    auto x = random_matrix<T>(L, 16, rng);
    const auto ctx = random_matrix<T>(9, 16, rng);
    x(r, 3) = nan<T>();
    expect_rows(mha.forward(x, ctx), r, r + 1, "cross");
    expect_rows(mha.forward(x, causal), r, L, "causal self");
    attend::KVCache<T> cache;
    Matrix<T> decoded(L, 16);
    for (Index i = 0; i < L; i += 3) decoded.middleRows(i, 3) = mha.forward(x.middleRows(i, 3), cache, causal);
    expect_rows(decoded, r, L, "decoded");
    // Sliding window 3: the NaN token leaves the window after three steps.
    expect_rows(mha.forward(x, with(Mask::sliding_window(3))), r, r + 3, "window 3");
  }
  typename attend::MultiHeadLatentAttention<T>::Config c{16, 2, 8, 6, 4, 2, 4};
  const auto mla = random_mla<T>(c, rng);
  auto x = random_matrix<T>(L, 16, rng);
  x(r, 0) = nan<T>();
  expect_rows(mla.forward(x, causal), r, L, "mla causal");
  attend::LatentCache<T> lc;
  Matrix<T> decoded(L, 16);
  for (Index i = 0; i < L; i += 4) decoded.middleRows(i, 4) = mla.forward(x.middleRows(i, 4), lc, causal);
  expect_rows(decoded, r, L, "mla decoded");
}

// softmax(): a NaN anywhere in a row makes that whole row NaN, wherever it sits (first, in a later packet, last,
// among entries that are all -inf otherwise) and no other row; +inf makes its row NaN too (inf - inf, as in the
// reference); a row of -inf only stays zero. softmax() used to zero a row holding one NaN among -inf entries.
TYPED_TEST(Numerics, SoftmaxMakesEveryRowANanReachesNanAndNoOther) {
  using T = TypeParam;
  const Index lk = 37;
  for (Index at : {Index(0), Index(5), Index(16), lk - 1})
    for (bool others_hidden : {false, true}) {
      std::mt19937 rng(120 + static_cast<unsigned>(at));
      Matrix<T> s = random_matrix<T>(4, lk, rng);
      if (others_hidden) s.row(1).setConstant(-inf<T>());
      s(1, at) = nan<T>();
      s.row(2).setConstant(-inf<T>());
      s(3, at) = inf<T>();
      const Matrix<T> p = attend::softmax(s);
      EXPECT_TRUE(p.row(1).array().isNaN().all()) << "NaN at " << at << (others_hidden ? " among -inf" : "");
      EXPECT_TRUE(p.row(3).array().isNaN().all()) << "+inf at " << at;
      EXPECT_TRUE(p.row(2).isZero(0));
      ASSERT_TRUE(p.row(0).allFinite());
      EXPECT_NEAR(double(p.row(0).sum()), 1.0, 4 * tolerance<T>());
    }
}

// attention_weights(): a NaN in a query row, in a visible key or in a visible bias entry makes each row it reaches
// NaN, whole, exactly as the reference says, also where the NaN is all a row sees (causal row 0 with a NaN query,
// a window of one); a NaN in a key or bias entry that the mask hides reaches nothing. The kernel makes the same
// rows NaN. Before, a row that saw only NaN scores came out zero (in both attention_weights and the reference).
TYPED_TEST(Numerics, AttentionWeightsAreNanExactlyWhereANanReaches) {
  using T = TypeParam;
  std::mt19937 rng(121);
  const auto q0 = random_matrix<T>(6, 4, rng), k0 = random_matrix<T>(9, 4, rng), v = random_matrix<T>(9, 3, rng);
  const auto b0 = random_matrix<T>(6, 9, rng);
  struct Poison {
    const char* what;
    std::function<void(Matrix<T>&, Matrix<T>&, Matrix<T>&)> apply;
  };
  Index nan_rows = 0;
  const std::vector<Poison> poisons = {
      {"query row 0", [](Matrix<T>& q, Matrix<T>&, Matrix<T>&) { q(0, 1) = nan<T>(); }},
      {"query row 4", [](Matrix<T>& q, Matrix<T>&, Matrix<T>&) { q(4, 3) = nan<T>(); }},
      {"key 5", [](Matrix<T>&, Matrix<T>& k, Matrix<T>&) { k(5, 2) = nan<T>(); }},
      {"key 8 (hidden from every row but the last)", [](Matrix<T>&, Matrix<T>& k, Matrix<T>&) { k(8, 0) = nan<T>(); }},
      {"bias entries (1, 2) and (4, 8)",
       [](Matrix<T>&, Matrix<T>&, Matrix<T>& b) { b(1, 2) = nan<T>(), b(4, 8) = nan<T>(); }},
  };
  for (const Poison& poison : poisons)
    for (const Mask& m : {Mask::causal(), Mask::sliding_window(1), Mask::none()}) {
      Matrix<T> q = q0, k = k0, b = b0;
      poison.apply(q, k, b);
      const Options o = with(m, std::nullopt, 3.0);
      const Matrix<double> bd = b.template cast<double>();
      const Matrix<T> w = attend::attention_weights(q, k, b, o);
      const Matrix<double> want = attend::reference::attention_weights(q, k, o, &bd);
      const Matrix<T> out = attend::scaled_dot_product_attention(q, k, v, b, o);
      for (Index i = 0; i < 6; ++i) {
        const bool nan_row = want.row(i).array().isNaN().all();
        ASSERT_TRUE(nan_row || want.row(i).allFinite()) << "the reference: a row is NaN whole or not at all";
        EXPECT_EQ(w.row(i).array().isNaN().all(), nan_row) << poison.what << ", " << m << ", row " << i;
        EXPECT_EQ(out.row(i).array().isNaN().all(), nan_row) << "kernel: " << poison.what << ", " << m << ", row " << i;
        if (!nan_row) {
          EXPECT_TRUE(w.row(i).allFinite() && out.row(i).allFinite()) << poison.what << ", " << m << ", row " << i;
          EXPECT_LE(max_abs_diff(w.row(i), want.row(i)), tolerance<T>()) << poison.what << ", " << m << ", row " << i;
        }
      }
      for (Index i = 0; i < 6; ++i) nan_rows += want.row(i).hasNaN() ? 1 : 0;
    }
  EXPECT_GT(nan_rows, 20);  // the poisons reach rows under most masks (not the hidden bias entries in a window of 1)
}

// Weights far below the row maximum are exact to rounding down to denormals and 0, in attention_weights() and
// softmax(), with and without a sink far above every score. The softmax now runs Eigen's vectorized exp, which alone
// returns values near the smallest normal (up to 8e-39 in float, 6e-309 in double) for every argument below
// log(min normal) (-87.3, -708.4), -inf included; and the sink's exp(sink - max) used to overflow float, which made
// every weight of the row 0 (against 3.7e-44 here).
TYPED_TEST(Numerics, WeightsFarBelowTheRowMaximumAreExactDownToZero) {
  using T = TypeParam;
  constexpr bool is_float = std::is_same_v<T, float>;
  // Scores: 0 (the maximum), then a ladder from -80 to -112 (float) or -700 to -764 (double), past the smallest
  // denormal, over 64 keys so that every packet lane holds some; the last key hidden by a -inf bias.
  const Index lk = 64;
  const double top = is_float ? -80 : -700, step = is_float ? 0.5 : 1.0;
  Matrix<T> q(1, 1), k(lk, 1), bias = Matrix<T>::Zero(1, lk);
  q << T(1);
  for (Index j = 0; j < lk; ++j) k(j, 0) = j == 0 ? T(0) : T(top - step * double(j));
  bias(0, lk - 1) = -inf<T>();
  const Matrix<double> bias_d = bias.template cast<double>();
  const double denorm = std::numeric_limits<T>::denorm_min(), eps = std::numeric_limits<T>::epsilon();
  const auto expect_exact = [&](const Matrix<T>& got, const Matrix<double>& want, const char* what) {
    for (Index j = 0; j < lk; ++j)
      EXPECT_LE(std::abs(double(got(0, j)) - want(0, j)), 4 * eps * want(0, j) + denorm)
          << what << ", key " << j << ": " << double(got(0, j)) << " against " << want(0, j);
    EXPECT_EQ(got(0, lk - 1), T(0)) << what << ": the hidden key";
  };
  for (const double sink : {std::nan(""), is_float ? 100.0 : 800.0}) {
    Options o;
    o.scale = 1.0;
    if (!std::isnan(sink)) o.sinks = {sink};
    const char* what = std::isnan(sink) ? "attention_weights" : "attention_weights with a sink far above";
    expect_exact(attend::attention_weights(q, k, bias, o), attend::reference::attention_weights(q, k, o, &bias_d),
                 what);
  }
  // softmax() of the same scores.
  Matrix<T> s = k.transpose();
  s(0, lk - 1) = -inf<T>();
  Matrix<double> want(1, lk);
  double sum = 0;
  for (Index j = 0; j < lk; ++j) sum += (want(0, j) = std::exp(double(s(0, j))));
  want /= sum;
  expect_exact(attend::softmax(s), want, "softmax");
}

// attention_weights() forms s = scale * (q . k) as the contract says: with q = 1e30 (1e300 in double), keys of
// 1e-30 and 2e-30 and scale 1e9 the scores are 1e9 and 2e9, weights 0 and 1, where scaling q first overflows to
// inf and NaN (as the blocked product of 641d62d did: Eigen's own product had applied the factor after the sums). The
// kernel does scale q first (one multiply per query value): with one key, the lse is the score the kernel formed, and
// it stays within rounding of scale * (q . k) (at most 3 eps * scale * sum_t |q_t k_t|; the largest measured while
// choosing to keep the fold was 2.3).
TYPED_TEST(Numerics, ScoresAreScaleTimesTheDotProductWithinRounding) {
  using T = TypeParam;
  const T big = std::is_same_v<T, float> ? T(1e30) : T(1e300);
  Matrix<T> q(1, 2), k(2, 2);
  q << big, T(0);
  k << T(1) / big, T(0), T(2) / big, T(0);
  Options o;
  o.scale = 1e9;
  const Matrix<T> w = attend::attention_weights(q, k, o);
  EXPECT_EQ(w(0, 0), T(0));
  EXPECT_EQ(w(0, 1), T(1));
  EXPECT_LE(max_abs_diff(w, attend::reference::attention_weights(q, k, o)), tolerance<T>());

  std::mt19937 rng(122);
  const double eps = std::numeric_limits<T>::epsilon();
  for (Index d : {16, 64, 96, 128})
    for (std::optional<double> scale : {std::optional<double>(), std::optional<double>(0.3),
                                        std::optional<double>(1e-3), std::optional<double>(7.7)}) {
      const auto qs = random_matrix<T>(300, d, rng), key = random_matrix<T>(1, d, rng),
                 val = random_matrix<T>(1, 2, rng);
      Options os;
      os.scale = scale;
      const double sc = double(T(attend::detail::scale_for(os, d)));
      const auto r = attend::scaled_dot_product_attention_with_lse(qs, key, val, os);
      for (Index i = 0; i < qs.rows(); ++i) {
        double exact = 0, bound = 0;
        for (Index t = 0; t < d; ++t) {
          exact += double(qs(i, t)) * double(key(0, t));
          bound += std::abs(double(qs(i, t)) * double(key(0, t)));
        }
        ASSERT_LE(std::abs(double(r.lse(i, 0)) - sc * exact), 3 * eps * sc * bound)
            << "d " << d << ", scale " << sc << ", row " << i;
      }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Non-finite keys hidden by the mask.

struct HiddenCase {
  Mask mask;
  Index lq, lk;
  std::vector<Index> poisoned;  // keys whose k and v rows hold inf, -inf and NaN
};

// Poisons whole key and value rows, then checks every (row, head) that sees no poisoned key: finite and equal
// to the reference over the clean inputs.
template <class T>
void check_hidden(const HiddenCase& hc, Heads h, std::mt19937& rng) {
  const Index d = 3, dv = 2;
  const auto q = random_matrix<T>(hc.lq, h.query * d, rng);
  const auto k_clean = random_matrix<T>(hc.lk, h.kv * d, rng), v_clean = random_matrix<T>(hc.lk, h.kv * dv, rng);
  Matrix<T> k = k_clean, v = v_clean;
  for (Index j : hc.poisoned) {
    for (Index c = 0; c < k.cols(); ++c) k(j, c) = c % 3 == 0 ? inf<T>() : c % 3 == 1 ? -inf<T>() : nan<T>();
    for (Index c = 0; c < v.cols(); ++c) v(j, c) = c % 2 == 0 ? nan<T>() : inf<T>();
  }
  const Options o = with(hc.mask);
  const Matrix<double> want = attend::reference::multi_head_attention(q, k_clean, v_clean, h, o);
  Index checked = 0;
  for (const auto& [name, run] : paths<T>()) {
    if (hc.lq * hc.lk > 50000 && std::string(name) != "public") continue;
    const Matrix<T> got = run(q, k, v, h, o);
    for (Index i = 0; i < hc.lq; ++i) {
      bool sees = false;
      for (Index j : hc.poisoned) sees = sees || hc.mask.visible(i, j, hc.lq, hc.lk);
      if (sees) continue;
      ++checked;
      ASSERT_TRUE(got.row(i).allFinite()) << name << " " << hc.mask << " lq " << hc.lq << " lk " << hc.lk << " row "
                                          << i << " heads " << h.query << "/" << h.kv;
      ASSERT_LE(max_abs_diff(got.row(i), want.row(i)), tolerance<T>()) << name << " " << hc.mask << " row " << i;
    }
  }
  EXPECT_GT(checked, 0) << "no row was hidden from the poisoned keys: the case tests nothing";
}

TYPED_TEST(Numerics, NonFiniteKeysHiddenByEveryMaskKindNeverReachAnOutput) {
  using T = TypeParam;
  std::mt19937 rng(104);
  const std::vector<HiddenCase> cases = {
      // Prefill with the default 256-row tiles cut by the mask (public path) and small tiles.
      {Mask::causal(), 300, 600, {450, 599}},
      {Mask::causal_top_left(), 300, 600, {120, 350, 599}},
      {Mask::sliding_window(100), 300, 600, {0, 250, 599}},
      {Mask::sliding_window(1), 300, 300, {0, 150, 299}},
      {Mask::causal(), 20, 13, {9, 12}},  // Lq > Lk: the first rows see nothing at all
      {Mask::causal_top_left(), 13, 20, {12, 19}},
      {Mask::sliding_window(4), 25, 25, {0, 10, 24}},
      {Mask::causal().with_diagonal(-5), 30, 40, {0, 20, 39}},  // a block of a longer sequence
      {Mask::sliding_window(6).with_diagonal(12), 30, 40, {0, 20, 39}},
      // Decode: few queries over more keys than one chunk (split-key path on the public API).
      {Mask::causal(), 2, 3000, {2999}},
      {Mask::causal_top_left(), 2, 3000, {2, 1023, 1024, 2999}},
      {Mask::sliding_window(500), 3, 3000, {0, 1023, 2400}},
      {Mask::sliding_window(2), 1, 2049, {0, 1024, 2046}},
  };
  for (const HiddenCase& hc : cases)
    for (Heads h : {Heads{1, 1}, Heads{4, 2}, Heads{3, 1}}) check_hidden<T>(hc, h, rng);
}

// ---------------------------------------------------------------------------------------------------------------
// Fully masked rows on every path.

TYPED_TEST(Numerics, RowsWithoutVisibleKeysAreZeroOnEveryPath) {
  using T = TypeParam;
  std::mt19937 rng(105);
  const Heads h{4, 2};
  const auto q = random_matrix<T>(6, 4 * 3, rng);
  // Lk == 0.
  const Matrix<T> k0(0, 2 * 3), v0(0, 2 * 2);
  for (const auto& [name, run] : paths<T>()) EXPECT_TRUE(run(q, k0, v0, h, Options{}).isZero(0)) << name;
  const auto r = attend::multi_head_attention_with_lse(q, k0, v0, h);
  EXPECT_TRUE(r.out.isZero(0));
  EXPECT_TRUE((r.lse.array() == -inf<T>()).all());
  Matrix<T> into = Matrix<T>::Constant(6, 8, T(9));
  attend::multi_head_attention_into(q, k0, v0, h, into);
  EXPECT_TRUE(into.isZero(0));
  // Lq > Lk under bottom-right causal masks, on the decode path too.
  const auto k = random_matrix<T>(2, 2 * 3, rng), v = random_matrix<T>(2, 2 * 2, rng);
  for (const auto& [name, run] : paths<T>()) {
    const Matrix<T> out = run(q, k, v, h, with(Mask::causal()));
    EXPECT_TRUE(out.topRows(4).isZero(0)) << name;
    EXPECT_TRUE(out.bottomRows(2).allFinite()) << name;
  }
  // A bias row of -inf, with a softcap, through small tiles and the public function.
  const auto q1 = random_matrix<T>(5, 3, rng), k1 = random_matrix<T>(40, 3, rng), v1 = random_matrix<T>(40, 2, rng);
  Matrix<T> bias = random_matrix<T>(5, 40, rng);
  bias.row(2).setConstant(-inf<T>());
  const Options capped = with(Mask::none(), std::nullopt, 2.0);
  Matrix<T> lse(5, 1);
  const Matrix<T> tiled = kernel<T>(q1, k1, v1, Heads{1, 1}, capped,
                                    tiles().with_queries(2).with_keys(8).with_decode_chunk(8), &bias, &lse);
  EXPECT_TRUE(tiled.row(2).isZero(0));
  EXPECT_EQ(lse(2, 0), -inf<T>());
  EXPECT_TRUE(attend::scaled_dot_product_attention(q1, k1, v1, bias, capped).row(2).isZero(0));
  EXPECT_TRUE(attend::attention_weights(q1, k1, bias, capped).row(2).isZero(0));
  // Layers: an empty context gives heads of zeros, so the output is o_proj's bias on every row; an empty input
  // gives an empty output.
  const auto mha = random_mha<T>(8, 2, 1, 4, rng);
  const Matrix<T> none = mha.forward(random_matrix<T>(3, 8, rng), Matrix<T>(0, 8));
  for (Index i = 0; i < 3; ++i) EXPECT_EQ(Vector<T>(none.row(i).transpose()), mha.o_proj.bias);
  EXPECT_EQ(mha.forward(Matrix<T>(0, 8)).rows(), 0);
  EXPECT_EQ(mha.forward(Matrix<T>(0, 8)).cols(), 8);
  attend::KVCache<T> cache;
  EXPECT_EQ(mha.forward(Matrix<T>(0, 8), cache).rows(), 0);
  EXPECT_EQ(cache.size(), 0);
}

// ---------------------------------------------------------------------------------------------------------------
// Denormal-range inputs.

template <class T>
constexpr T tiny() {
  return std::is_same_v<T, float> ? T(1e-40) : T(1e-310);  // below the smallest normal of T
}

TYPED_TEST(Numerics, DenormalInputsMatchTheReference) {
  using T = TypeParam;
  static_assert(tiny<T>() < std::numeric_limits<T>::min() && tiny<T>() > 0);
  std::mt19937 rng(106);
  const T t = tiny<T>();
  const auto q = random_matrix<T>(7, 4, rng), k = random_matrix<T>(9, 4, rng), v = random_matrix<T>(9, 3, rng);
  for (const Mask& m : {Mask::none(), Mask::causal(), Mask::sliding_window(3)}) {
    const Options o = with(m);
    // Denormal queries and keys: every score underflows towards 0, weights are uniform over the visible keys.
    const Matrix<T> qd = q * t, kd = k * t;
    const Matrix<T> uniform = attend::scaled_dot_product_attention(qd, kd, v, o);
    ASSERT_TRUE(uniform.allFinite());
    EXPECT_LE(max_abs_diff(uniform, attend::reference::scaled_dot_product_attention(qd, kd, v, o)), tolerance<T>());
    for (Index i = 0; i < 7; ++i) {
      const attend::KeyRange r = m.keys(i, 7, 9);
      const Matrix<T> mean = v.middleRows(r.begin, r.size()).colwise().mean();
      EXPECT_LE(max_abs_diff(uniform.row(i), mean), tolerance<T>()) << m << " row " << i;
    }
    // Denormal values: the output is denormal too, not flushed to zero, and keeps its relative precision (the
    // grid of denormals is ~1e-45 in float: 1e-3 of an output of 1e-40).
    const Matrix<T> vd = v * t;
    const Matrix<T> small = attend::scaled_dot_product_attention(q, k, vd, o);
    const Matrix<double> want = attend::reference::scaled_dot_product_attention(q, k, vd, o);
    EXPECT_LE(max_abs_diff(small.template cast<double>() / double(t), want / double(t)), 1e-3) << m;
    EXPECT_GT(small.cwiseAbs().maxCoeff(), T(0));
    const Matrix<T> tiled =
        kernel<T>(q, k, vd, Heads{1, 1}, o, tiles().with_queries(2).with_keys(2).with_decode_chunk(2));
    EXPECT_LE(max_abs_diff(tiled.template cast<double>() / double(t), want / double(t)), 1e-3) << m;
  }
  // A denormal (but positive, finite) scale: every score ~0, uniform weights.
  Options o;
  o.scale = std::is_same_v<T, float> ? 1e-42 : 1e-310;
  EXPECT_LE(max_abs_diff(attend::scaled_dot_product_attention(q, k, v, o),
                         attend::reference::scaled_dot_product_attention(q, k, v, o)),
            tolerance<T>());
  // A layer fed denormal tokens: finite, and its RMSNorm (eps dominates) does not divide by ~0.
  typename attend::MultiHeadLatentAttention<T>::Config c{8, 2, 4, 4, 2, 2, 2};
  const auto mla = random_mla<T>(c, rng);
  const Matrix<T> x = random_matrix<T>(5, 8, rng) * t;
  EXPECT_TRUE(mla.forward(x, with(Mask::causal())).allFinite());
  EXPECT_TRUE(random_mha<T>(8, 2, 1, 4, rng).forward(x).allFinite());
}

// ---------------------------------------------------------------------------------------------------------------
// Lq = 1, Lk = 1, head_dim = 1.

// With one visible key the weight is exactly 1 and the output is that key's value row, bit for bit.
TYPED_TEST(Numerics, OneKeyGivesItsValueExactly) {
  using T = TypeParam;
  std::mt19937 rng(107);
  for (Index lq : {1, 3})
    for (Index d : {1, 5}) {
      const auto q = random_matrix<T>(lq, 4 * d, rng), k = random_matrix<T>(1, 2 * d, rng);
      const auto v = random_matrix<T>(1, 2 * 3, rng);
      for (const Mask& m : {Mask::none(), Mask::causal(), Mask::causal_top_left(), Mask::sliding_window(1)})
        for (const auto& [name, run] : paths<T>()) {
          const Matrix<T> out = run(q, k, v, Heads{4, 2}, with(m, 0.37, 3.0));
          for (Index i = 0; i < lq; ++i) {
            const bool sees = m.visible(i, 0, lq, 1);
            for (int h = 0; h < 4; ++h) {
              const Matrix<T> want = sees ? Matrix<T>(v.middleCols((h / 2) * 3, 3)) : Matrix<T>::Zero(1, 3);
              EXPECT_EQ(Matrix<T>(out.block(i, h * 3, 1, 3)), want) << name << " " << m << " lq " << lq << " d " << d;
            }
          }
        }
      // The lse of one visible key is its scaled score.
      const auto r = attend::scaled_dot_product_attention_with_lse(q.leftCols(d), k.leftCols(d), v.leftCols(3),
                                                                   with(Mask::none(), 0.5));
      for (Index i = 0; i < lq; ++i)
        EXPECT_NEAR(double(r.lse(i, 0)), 0.5 * double(q.row(i).head(d).dot(k.row(0).head(d))), tolerance<T>());
      EXPECT_TRUE((attend::attention_weights(q.leftCols(d), k.leftCols(d)).array() == T(1)).all());
    }
}

TYPED_TEST(Numerics, OneQueryAndHeadDimOneMatchTheReference) {
  using T = TypeParam;
  std::mt19937 rng(108);
  for (Index d : {1, 2})
    for (Index lq : {1, 2, 70})
      for (Index lk : {1, 2, 300, 1500})
        for (Heads h : {Heads{1, 1}, Heads{4, 2}, Heads{5, 1}})
          for (const Mask& m : {Mask::none(), Mask::causal(), Mask::causal_top_left(), Mask::sliding_window(2)}) {
            const auto q = random_matrix<T>(lq, h.query * d, rng, 2.0), k = random_matrix<T>(lk, h.kv * d, rng, 2.0);
            const auto v = random_matrix<T>(lk, h.kv * 1, rng);  // dv = 1 too
            const Options o = with(m);
            const Matrix<double> want = attend::reference::multi_head_attention(q, k, v, h, o);
            ASSERT_LE(max_abs_diff(attend::multi_head_attention(q, k, v, h, o), want), tolerance<T>())
                << "d " << d << " lq " << lq << " lk " << lk << " heads " << h.query << "/" << h.kv << " " << m;
            if (lq * lk <= 3000) {
              ASSERT_LE(max_abs_diff(
                            kernel<T>(q, k, v, h, o, tiles().with_queries(3).with_keys(4).with_decode_chunk(5)), want),
                        tolerance<T>())
                  << "small tiles d " << d << " lq " << lq << " lk " << lk << " " << m;
            }
          }
}

// Layers of head_dim 1 (MHA/GQA/MQA) and of one-dimensional MLA heads, for one token and a few, against the
// same layers in double.
TYPED_TEST(Numerics, LayersOfHeadDimOneAndOneTokenMatchTheReference) {
  using T = TypeParam;
  std::mt19937 rng(109);
  const auto to_double = [](const attend::Linear<T>& l) {
    return attend::Linear<double>{l.weight.template cast<double>(), l.bias.template cast<double>()};
  };
  for (auto [heads, kv] : {std::pair{4, 4}, std::pair{4, 2}, std::pair{4, 1}}) {
    const auto m = random_mha<T>(6, heads, kv, 1, rng);
    attend::MultiHeadAttention<double> md(6, heads, kv, 1);
    md.q_proj = to_double(m.q_proj), md.k_proj = to_double(m.k_proj), md.v_proj = to_double(m.v_proj);
    md.o_proj = to_double(m.o_proj);
    for (Index L : {1, 2, 9}) {
      const auto x = random_matrix<T>(L, 6, rng);
      const Matrix<double> xd = x.template cast<double>();
      EXPECT_LE(max_abs_diff(m.forward(x, with(Mask::causal())), md.forward(xd, with(Mask::causal()))), 1e-4);
      attend::KVCache<T> c;
      attend::KVCache<double> cd;
      for (Index i = 0; i < L; ++i)
        EXPECT_LE(
            max_abs_diff(m.forward(x.row(i), c, with(Mask::causal())), md.forward(xd.row(i), cd, with(Mask::causal()))),
            1e-4);
    }
    // One token: a single key of weight 1, so the output is o_proj(v_proj(x)) with v repeated per group.
    const auto x1 = random_matrix<T>(1, 6, rng);
    const Matrix<T> v1 = m.v_proj(x1);
    Matrix<T> heads_out(1, heads);
    for (int hh = 0; hh < heads; ++hh) heads_out(0, hh) = v1(0, hh / (heads / kv));
    EXPECT_LE(max_abs_diff(m.forward(x1), m.o_proj(heads_out)), 1e-5);
  }
  for (auto cfg : {typename attend::MultiHeadLatentAttention<T>::Config{6, 3, 0, 2, 1, 0, 1},
                   typename attend::MultiHeadLatentAttention<T>::Config{6, 1, 2, 1, 1, 2, 1}}) {
    const auto m = random_mla<T>(cfg, rng);
    attend::MultiHeadLatentAttention<double> md({cfg.d_model, cfg.heads, cfg.q_lora_rank, cfg.kv_lora_rank,
                                                 cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim});
    for (auto [src, dst] : {std::pair{&m.q_proj, &md.q_proj},
                            {&m.q_a_proj, &md.q_a_proj},
                            {&m.q_b_proj, &md.q_b_proj},
                            {&m.kv_a_proj_with_mqa, &md.kv_a_proj_with_mqa},
                            {&m.kv_b_proj, &md.kv_b_proj},
                            {&m.o_proj, &md.o_proj}})
      *dst = to_double(*src);
    md.q_a_layernorm.weight = m.q_a_layernorm.weight.template cast<double>();
    md.kv_a_layernorm.weight = m.kv_a_layernorm.weight.template cast<double>();
    for (Index L : {1, 5}) {
      const auto x = random_matrix<T>(L, 6, rng);
      const Matrix<double> xd = x.template cast<double>();
      EXPECT_LE(max_abs_diff(m.forward(x, with(Mask::causal())), md.forward(xd, with(Mask::causal()))), 1e-4);
      attend::LatentCache<T> c;
      attend::LatentCache<double> cd;
      EXPECT_LE(max_abs_diff(m.forward(x, c, with(Mask::causal())), md.forward(xd, cd, with(Mask::causal()))), 1e-4);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Rows of 100 000 keys.

// ---------------------------------------------------------------------------------------------------------------
// Edge cases of the scaled dot-product kernel.

TYPED_TEST(Numerics, LogitsInTheThousandsDoNotOverflow) {
  using T = TypeParam;
  std::mt19937 rng(8);
  const auto q = random_matrix<T>(20, 16, rng, 30.0), k = random_matrix<T>(300, 16, rng, 30.0);
  const auto v = random_matrix<T>(300, 8, rng);
  Options o;
  o.scale = 1.0;  // |s| up to ~10^4
  for (const Mask& m : {Mask::none(), Mask::causal()}) {
    o.mask = m;
    const Matrix<T> got = attend::scaled_dot_product_attention(q, k, v, o);
    ASSERT_TRUE(got.allFinite());
    // Scores of ~1e4 in float carry an absolute rounding of ~1e-3, which moves near-tied weights; the double
    // reference on the same inputs still pins the result well below the spread of V.
    const double tol = std::is_same_v<T, float> ? 2e-2 : 1e-9;
    EXPECT_LE(max_abs_diff(got, attend::reference::scaled_dot_product_attention(q, k, v, o)), tol);
    EXPECT_LE(max_abs_diff(attend::attention_weights(q, k, o), attend::reference::attention_weights(q, k, o)), tol);
  }
}

TYPED_TEST(Numerics, RowsWithoutVisibleKeysAreZeroAndEmptyShapesAreEmpty) {
  using T = TypeParam;
  std::mt19937 rng(10);
  // Bottom-right causal with Lq > Lk: the first Lq - Lk rows see nothing.
  const auto q = random_matrix<T>(6, 4, rng), k = random_matrix<T>(2, 4, rng), v = random_matrix<T>(2, 3, rng);
  const Matrix<T> o = attend::scaled_dot_product_attention(q, k, v, with(Mask::causal()));
  EXPECT_TRUE(o.topRows(4).isZero(0));
  EXPECT_TRUE(o.bottomRows(2).allFinite());
  EXPECT_TRUE(attend::attention_weights(q, k, with(Mask::causal())).topRows(4).isZero(0));
  // Lk == 0: every row sees nothing.
  const Matrix<T> none = attend::scaled_dot_product_attention(q, Matrix<T>(0, 4), Matrix<T>(0, 3));
  ASSERT_EQ(none.rows(), 6);
  ASSERT_EQ(none.cols(), 3);
  EXPECT_TRUE(none.isZero(0));
  EXPECT_EQ(attend::attention_weights(q, Matrix<T>(0, 4)).cols(), 0);
  // Lq == 0: an empty result of the right width.
  EXPECT_EQ(attend::scaled_dot_product_attention(Matrix<T>(0, 4), k, v).cols(), 3);
}

TYPED_TEST(Numerics, NanInOneQueryRowOfOneHeadStaysInThatRow) {
  using T = TypeParam;
  std::mt19937 rng(12);
  auto q = random_matrix<T>(70, 8, rng);
  const auto k = random_matrix<T>(300, 8, rng), v = random_matrix<T>(300, 8, rng);
  q(33, 2) = std::numeric_limits<T>::quiet_NaN();
  for (const Mask& m : {Mask::none(), Mask::causal()}) {
    const Matrix<T> o = attend::scaled_dot_product_attention(q, k, v, with(m));
    for (Index i = 0; i < o.rows(); ++i) EXPECT_EQ(o.row(i).array().isNaN().any(), i == 33) << i;
  }
}

// A key the mask hides never reaches an output, even when its key or value holds inf or NaN.
TYPED_TEST(Numerics, HiddenNonFiniteKeysNeverReachOutputsInSmallTiles) {
  using T = TypeParam;
  std::mt19937 rng(13);
  const auto q = random_matrix<T>(10, 4, rng);
  auto k = random_matrix<T>(10, 4, rng), v = random_matrix<T>(10, 3, rng);
  k(9, 0) = std::numeric_limits<T>::infinity();
  v(9, 1) = std::numeric_limits<T>::quiet_NaN();
  v(8, 2) = std::numeric_limits<T>::infinity();
  const Options o = with(Mask::causal());
  const Matrix<T> out = attend::scaled_dot_product_attention(q, k, v, o);
  EXPECT_TRUE(out.topRows(8).allFinite());  // rows 0..7 cannot see keys 8 and 9
  // and when the hidden keys share a tile with visible ones
  const auto small =
      attend_test::tiles().with_queries(4).with_keys(4).with_decode_chunk(4).with_few_rows_keys(4).with_cut_keys(2);
  const Matrix<T> tiled = attend_test::kernel(q, k, v, Heads{1, 1}, o, small);
  EXPECT_TRUE(tiled.topRows(8).allFinite());
  // A -inf bias hides values the same way. (Not keys: an infinite key score plus a -inf bias is NaN, as in
  // PyTorch; the contract promises that only for keys hidden by the Mask.)
  k(9, 0) = 1;
  Matrix<T> bias = Matrix<T>::Zero(10, 10);
  bias.col(8).setConstant(-std::numeric_limits<T>::infinity());
  bias.col(9).setConstant(-std::numeric_limits<T>::infinity());
  EXPECT_TRUE(attend::scaled_dot_product_attention(q, k, v, bias).allFinite());
}

// Float over 100 000 keys: the online softmax over hundreds of key tiles (prefill) or merged key chunks (decode)
// keeps the error at the level of short rows. Measured (seed 110, d = 16, outputs of ~1e-2): 6e-9 to 3.4e-8 absolute,
// <= 1.3e-6 relative, where a sequential float softmax over the same rows is off by 8e-8 to 2.4e-7. The bounds
// leave a ~9x margin over the kernel and sit at the level of that naive float sum.
TEST(LongRows, HundredThousandKeysKeepFloatNearTheDoubleReference) {
  std::mt19937 rng(110);
  const Index lk = 100000, d = 16;
  const auto k = random_matrix<float>(lk, d, rng), v = random_matrix<float>(lk, d, rng);
  struct Run {
    Index lq;
    Mask mask;
  };
  for (Run run : {Run{3, Mask::none()}, Run{1, Mask::sliding_window(60000)}, Run{257, Mask::causal()}}) {
    const auto q = random_matrix<float>(run.lq, d, rng);
    const Options o = with(run.mask);
    const Matrix<float> got = attend::scaled_dot_product_attention(q, k, v, o);
    const Matrix<double> want = attend::reference::scaled_dot_product_attention(q, k, v, o);
    const double err = max_abs_diff(got, want), scale = want.cwiseAbs().maxCoeff();
    EXPECT_LE(err, 3e-7) << "lq " << run.lq << " " << run.mask;
    EXPECT_LE(err / scale, 1e-5) << "lq " << run.lq << " " << run.mask;
    // The log-sum-exp of 1e5 terms: near the double one, and the same output alongside it.
    const auto r = attend::scaled_dot_product_attention_with_lse(q, k, v, o);
    EXPECT_EQ(r.out, got);
    const double scale_qk = 1.0 / std::sqrt(double(d));
    for (Index i = 0; i < run.lq; i += 64) {
      const attend::KeyRange keys = run.mask.keys(i, run.lq, lk);
      const Eigen::VectorXd s =
          (k.middleRows(keys.begin, keys.size()).cast<double>() * q.row(i).cast<double>().transpose()) * scale_qk;
      const double m = s.maxCoeff();
      const double lse = m + std::log((s.array() - m).exp().sum());
      EXPECT_NEAR(double(r.lse(i, 0)), lse, 1e-5 * std::abs(lse) + 1e-5) << "row " << i;
    }
  }
  // Multi-query decode over the same long cache: eight heads share it.
  const auto q8 = random_matrix<float>(1, 8 * d, rng);
  const Matrix<float> got = attend::multi_query_attention(q8, k, v, 8);
  EXPECT_LE(max_abs_diff(got, attend::reference::multi_head_attention(q8, k, v, Heads{8, 1})), 3e-7);
}

}  // namespace
