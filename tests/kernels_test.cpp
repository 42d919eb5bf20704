// The weight-free kernels against hand-computed values and the double-precision attend::reference, across
// tile boundaries, every mask, decode and cross shapes, float and double.
#include <gtest/gtest.h>

#include <attend/attend.hpp>
#include <cmath>
#include <limits>
#include <random>

#include "kernel_seam.hpp"
#include "test_util.hpp"

using attend::Heads;
using attend::Index;
using attend::Mask;
using attend::Matrix;
using attend::Options;
using attend_test::max_abs_diff;
using attend_test::random_matrix;
using attend_test::tolerance;

namespace {

Options with_mask(Mask m) {
  Options o;
  o.mask = m;
  return o;
}

const Mask kMasks[] = {Mask::none(),
                       Mask::causal(),
                       Mask::causal_top_left(),
                       Mask::sliding_window(1),
                       Mask::sliding_window(5),
                       Mask::sliding_window(300)};

// ---------------------------------------------------------------------------------------------------------------
// Values a reader can check on paper.

// Q=[[1,0],[0,1]], K=[[1,0],[0,1],[1,1]], V=[[1,2],[3,4],[5,6]], scale 1/sqrt(2), e = exp(1/sqrt(2)):
// row 0 scores [1,0,1]/sqrt2 -> weights [e,1,e]/(2e+1); by symmetry of keys 0 and 2 around key 1 the output is
// the middle value row [3,4]. Row 1 scores [0,1,1]/sqrt2 -> weights [1,e,e]/(1+2e):
// ([1,2] + e*[8,10]) / (1+2e) = [3.406673, 4.406673].
TEST(HandComputed, TwoQueriesOverThreeKeysGiveThePaperValues) {
  Matrix<double> q(2, 2), k(3, 2), v(3, 2);
  q << 1, 0, 0, 1;
  k << 1, 0, 0, 1, 1, 1;
  v << 1, 2, 3, 4, 5, 6;
  const Matrix<double> o = attend::scaled_dot_product_attention(q, k, v);
  const double e = std::exp(1 / std::sqrt(2.0));
  EXPECT_NEAR(o(0, 0), 3.0, 1e-14);
  EXPECT_NEAR(o(0, 1), 4.0, 1e-14);
  EXPECT_NEAR(o(1, 0), (1 + 8 * e) / (1 + 2 * e), 1e-14);
  EXPECT_NEAR(o(1, 0), 3.406673, 1e-6);
  EXPECT_NEAR(o(1, 1), 4.406673, 1e-6);
}

// Same inputs, bottom-right causal (Lq=2, Lk=3): query 0 sees keys 0 and 1 with weights [e,1]/(e+1) =
// [0.669762, 0.330238] -> [1.660476, 2.660476]; query 1 sees all three keys, as unmasked.
TEST(HandComputed, BottomRightCausalHidesTheLastKeyFromTheFirstQuery) {
  Matrix<float> q(2, 2), k(3, 2), v(3, 2);
  q << 1, 0, 0, 1;
  k << 1, 0, 0, 1, 1, 1;
  v << 1, 2, 3, 4, 5, 6;
  const Matrix<float> w = attend::attention_weights(q, k, with_mask(Mask::causal()));
  EXPECT_NEAR(w(0, 0), 0.669762f, 1e-6);
  EXPECT_NEAR(w(0, 1), 0.330238f, 1e-6);
  EXPECT_EQ(w(0, 2), 0.0f);
  const Matrix<float> o = attend::scaled_dot_product_attention(q, k, v, with_mask(Mask::causal()));
  EXPECT_NEAR(o(0, 0), 1.660476f, 2e-6);
  EXPECT_NEAR(o(0, 1), 2.660476f, 2e-6);
  EXPECT_NEAR(o(1, 0), 3.406673f, 2e-6);
  // Top-left alignment: query 0 sees only key 0, so it returns V's first row exactly.
  const Matrix<float> t = attend::scaled_dot_product_attention(q, k, v, with_mask(Mask::causal_top_left()));
  EXPECT_EQ(t(0, 0), 1.0f);
  EXPECT_EQ(t(0, 1), 2.0f);
}

// Identical keys get identical scores, so the output is the plain mean of the value rows whatever q is.
TEST(HandComputed, EqualKeysAverageValues) {
  Matrix<double> q(1, 3), k(4, 3), v(4, 1);
  q << 0.3, -2, 7;
  k.rowwise() = Eigen::RowVector3d(1, 2, 3);
  v << 1, 2, 3, 10;
  EXPECT_NEAR(attend::scaled_dot_product_attention(q, k, v)(0, 0), 4.0, 1e-15);
}

// Softcap 1 with scale 1: scores q.k = [10, 0] become [tanh(10), 0] = [0.9999999959, 0]; weights
// [e^t, 1]/(e^t + 1) = [0.7310585778, 0.2689414222] instead of nearly [1, 0] without the cap.
TEST(HandComputed, SoftcapBoundsTheScores) {
  Matrix<double> q(1, 1), k(2, 1), v(2, 1);
  q << 10;
  k << 1, 0;
  v << 1, 0;
  Options o;
  o.scale = 1.0;
  o.softcap = 1.0;
  EXPECT_NEAR(attend::scaled_dot_product_attention(q, k, v, o)(0, 0), 0.7310585778, 1e-9);
  o.softcap = 0;
  EXPECT_NEAR(attend::scaled_dot_product_attention(q, k, v, o)(0, 0), 0.9999546021, 1e-9);
}

// A bias of log(3) on key 0 with equal raw scores triples its weight: [3,1]/4.
TEST(HandComputed, AdditiveBiasOfLogThreeTriplesAWeight) {
  Matrix<double> q = Matrix<double>::Zero(1, 2), k = Matrix<double>::Ones(2, 2), v(2, 1), b(1, 2);
  v << 4, 8;
  b << std::log(3.0), 0;
  EXPECT_NEAR(attend::scaled_dot_product_attention(q, k, v, b)(0, 0), 0.75 * 4 + 0.25 * 8, 1e-14);
}

// ---------------------------------------------------------------------------------------------------------------
// Against the double-precision reference.

template <class T>
class Kernels : public ::testing::Test {};
TYPED_TEST_SUITE(Kernels, attend_test::Scalars);

// Sizes straddle the default tiles: query tiles of 256 rows (one head, so 256 positions), key tiles of 256 and cut
// tiles of 64, 16 rows as the limit of the rows mainloop, and more than 1024 keys for the split-key decode path: 1,
// B-1, B, B+1 on both axes, Lq != Lk, decode.
TYPED_TEST(Kernels, ScaledDotProductMatchesReferenceAroundTheDefaultTiles) {
  using T = TypeParam;
  std::mt19937 rng(7);
  const Index lqs[] = {1, 15, 16, 17, 255, 256, 257};
  const Index lks[] = {1, 63, 65, 255, 256, 257, 1500};
  for (Index lq : lqs)
    for (Index lk : lks)
      for (const Mask& m : {Mask::none(), Mask::causal(), Mask::causal_top_left(), Mask::sliding_window(70)}) {
        const auto q = random_matrix<T>(lq, 16, rng), k = random_matrix<T>(lk, 16, rng);
        const auto v = random_matrix<T>(lk, 12, rng);
        const Matrix<T> got = attend::scaled_dot_product_attention(q, k, v, with_mask(m));
        const Matrix<double> want = attend::reference::scaled_dot_product_attention(q, k, v, with_mask(m));
        ASSERT_LE(max_abs_diff(got, want), tolerance<T>()) << "lq=" << lq << " lk=" << lk << " mask=" << m;
      }
}

// Small tiles through the kernel itself reach every tile case (skipped, cut by the mask, fully visible,
// partial last tile) with cheap sizes: 1, B-1, B, B+1, 3B+2 for tiles of 4 queries and 8 keys. Short queries
// (one query tile per group) take the split-key decode path with chunks of 8 keys.
TYPED_TEST(Kernels, SmallTilesReachEveryTileCaseAndMatchTheReference) {
  using T = TypeParam;
  std::mt19937 rng(11);
  for (Index few_rows : {16, 0}) {  // products on unpacked rows; packed products on every tile
    const auto tiles = attend_test::tiles()
                           .with_queries(4)
                           .with_keys(8)
                           .with_decode_chunk(8)
                           .with_few_rows_keys(8)
                           .with_cut_keys(3)
                           .with_few_rows(few_rows);
    for (Index lq : {1, 3, 4, 5, 14})
      for (Index lk : {1, 7, 8, 9, 26})
        for (const Mask& m : kMasks)
          for (Heads h : {Heads{1, 1}, Heads{4, 2}, Heads{3, 1}}) {
            const auto q = random_matrix<T>(lq, h.query * 5, rng), k = random_matrix<T>(lk, h.kv * 5, rng);
            const auto v = random_matrix<T>(lk, h.kv * 3, rng);
            Matrix<T> lse;
            const Matrix<T> got = attend_test::kernel(q, k, v, h, with_mask(m), tiles, nullptr, &lse);
            const Matrix<double> want = attend::reference::multi_head_attention(q, k, v, h, with_mask(m));
            ASSERT_LE(max_abs_diff(got, want), tolerance<T>())
                << "lq=" << lq << " lk=" << lk << " mask=" << m << " heads " << h.query << "/" << h.kv
                << " few_rows=" << few_rows;
            // The log-sum-exp is that of the visible scaled scores: check it for head 0 against a direct sum.
            for (Index i = 0; i < lq; ++i) {
              const attend::KeyRange r = m.keys(i, lq, lk);
              double sum = 0;
              for (Index j = r.begin; j < r.end; ++j)
                sum += std::exp(
                    double(q.row(i).head(5).template cast<double>().dot(k.row(j).head(5).template cast<double>())) /
                    std::sqrt(5.0));
              if (r.empty())
                EXPECT_EQ(lse(i, 0), -std::numeric_limits<T>::infinity());
              else
                EXPECT_NEAR(lse(i, 0), std::log(sum), 10 * tolerance<T>())
                    << "row " << i << ", lq=" << lq << " lk=" << lk << " mask=" << m << " heads " << h.query << "/"
                    << h.kv << " few_rows=" << few_rows;
            }
          }
  }
}

// The decode path walks each key tile through every group a few key rows at a time (16 per step): tiles of 37
// keys in chunks of 100 keys give full and short steps, short tiles at chunk ends and tiles cut by every mask, with
// 4, 8 and 16 stacked rows per group (1, 2 and 4 query positions of GQA 8/2) and MHA, with and without a bias
// that hides some keys.
TYPED_TEST(Kernels, DecodeWalksKeyRowsThroughEveryGroup) {
  using T = TypeParam;
  std::mt19937 rng(19);
  const auto tiles =
      attend_test::tiles().with_queries(64).with_keys(64).with_decode_chunk(100).with_few_rows_keys(37).with_cut_keys(
          16);
  for (Index lq : {1, 2, 4})
    for (Index lk : {101, 250})
      for (const Mask& m : kMasks)
        for (Heads h : {Heads{8, 2}, Heads{3, 3}})
          for (bool with_bias : {false, true}) {
            constexpr Index d = 24, dv = 20;  // one packet and a remainder with AVX-512 floats
            const auto q = random_matrix<T>(lq, h.query * d, rng), k = random_matrix<T>(lk, h.kv * d, rng);
            const auto v = random_matrix<T>(lk, h.kv * dv, rng);
            Matrix<T> bias = random_matrix<T>(lq, lk, rng);
            bias.col(3).setConstant(-std::numeric_limits<T>::infinity());
            bias(0, lk - 1) = -std::numeric_limits<T>::infinity();
            const Matrix<T> got = attend_test::kernel(q, k, v, h, with_mask(m), tiles, with_bias ? &bias : nullptr);
            const Matrix<double> bias_d = bias.template cast<double>();
            const int stack = h.query / h.kv;
            for (int head = 0; head < h.query; ++head) {
              const int g = head / stack;
              const Matrix<T> qh = q.middleCols(head * d, d), kg = k.middleCols(g * d, d),
                              vg = v.middleCols(g * dv, dv);
              const Matrix<double> want = attend::reference::scaled_dot_product_attention(
                  qh, kg, vg, with_mask(m), with_bias ? &bias_d : nullptr);
              ASSERT_LE(max_abs_diff(got.middleCols(head * dv, dv), want), tolerance<T>())
                  << "lq=" << lq << " lk=" << lk << " mask=" << m << " heads " << h.query << "/" << h.kv << " head "
                  << head << (with_bias ? " with bias" : "");
            }
          }
}

// Packing each kv group whole once, or each key tile when it is used, feeds the same values to the same products
// on the same tiles: bit for bit the same result, for every mask and head grouping (packed products on every tile;
// 8 groups take the whole-group tasks when the team has 2 threads).
TYPED_TEST(Kernels, PackedGroupsGiveTheSameBitsAsPackedTiles) {
  using T = TypeParam;
  std::mt19937 rng(17);
  const auto groups = attend_test::tiles()
                          .with_queries(8)
                          .with_keys(8)
                          .with_decode_chunk(8)
                          .with_few_rows_keys(8)
                          .with_cut_keys(4)
                          .with_few_rows(0);
  const auto per_tile = attend_test::Tiles(groups).with_pack_groups(false);
  for (const Mask& m : kMasks)
    for (Heads h : {Heads{4, 4}, Heads{4, 2}, Heads{6, 3}, Heads{8, 8}}) {
      const auto q = random_matrix<T>(37, h.query * 5, rng), k = random_matrix<T>(41, h.kv * 5, rng);
      const auto v = random_matrix<T>(41, h.kv * 3, rng);
      const Matrix<T> a = attend_test::kernel(q, k, v, h, with_mask(m), groups);
      const Matrix<T> b = attend_test::kernel(q, k, v, h, with_mask(m), per_tile);
      ASSERT_EQ(a, b) << "mask=" << m << " heads " << h.query << "/" << h.kv;
      ASSERT_LE(max_abs_diff(a, attend::reference::multi_head_attention(q, k, v, h, with_mask(m))), tolerance<T>());
    }
}

TYPED_TEST(Kernels, AttentionWeightsMatchReferenceAndRowsSumToOneOrZero) {
  using T = TypeParam;
  std::mt19937 rng(3);
  for (const Mask& m : kMasks)
    for (auto [lq, lk] : {std::pair<Index, Index>{7, 7}, {3, 9}, {9, 3}, {1, 20}}) {
      const auto q = random_matrix<T>(lq, 8, rng), k = random_matrix<T>(lk, 8, rng);
      Options o = with_mask(m);
      o.softcap = 2.0;
      const Matrix<T> w = attend::attention_weights(q, k, o);
      ASSERT_LE(max_abs_diff(w, attend::reference::attention_weights(q, k, o)), tolerance<T>());
      for (Index i = 0; i < lq; ++i) {
        const double s = w.row(i).template cast<double>().sum();
        EXPECT_TRUE(std::abs(s - 1) < 1e-5 || (s == 0 && m.keys(i, lq, lk).empty())) << "row " << i << " sum " << s;
      }
    }
}

TYPED_TEST(Kernels, ScaleSoftcapAndBiasMatchTheReference) {
  using T = TypeParam;
  std::mt19937 rng(5);
  const auto q = random_matrix<T>(10, 8, rng, 3.0), k = random_matrix<T>(12, 8, rng, 3.0);
  const auto v = random_matrix<T>(12, 4, rng);
  Matrix<T> bias = random_matrix<T>(10, 12, rng);
  bias(2, 5) = -std::numeric_limits<T>::infinity();
  bias.row(4).setConstant(-std::numeric_limits<T>::infinity());  // row 4 sees nothing
  Options o;
  o.scale = 0.7;
  o.softcap = 3.0;
  o.mask = Mask::causal();
  const Matrix<double> bias_d = bias.template cast<double>();
  const Matrix<T> got = attend::scaled_dot_product_attention(q, k, v, bias, o);
  EXPECT_LE(max_abs_diff(got, attend::reference::scaled_dot_product_attention(q, k, v, o, &bias_d)), tolerance<T>());
  EXPECT_TRUE(got.row(4).isZero(0));
  const Matrix<T> w = attend::attention_weights(q, k, bias, o);
  EXPECT_EQ(w(2, 5), T(0));
  EXPECT_LE(max_abs_diff(w, attend::reference::attention_weights(q, k, o, &bias_d)), tolerance<T>());
}

TYPED_TEST(Kernels, MultiHeadMatchesReferenceForEveryGrouping) {
  using T = TypeParam;
  std::mt19937 rng(9);
  for (Heads h : {Heads{1, 1}, Heads{4, 4}, Heads{4, 2}, Heads{6, 3}, Heads{8, 1}, Heads{5, 5}})
    for (auto [lq, lk] : {std::pair<Index, Index>{9, 9}, {1, 70}, {20, 7}, {70, 300}})
      for (const Mask& m : {Mask::none(), Mask::causal(), Mask::sliding_window(4)}) {
        const Index d = 8, dv = 6;
        const auto q = random_matrix<T>(lq, h.query * d, rng), k = random_matrix<T>(lk, h.kv * d, rng);
        const auto v = random_matrix<T>(lk, h.kv * dv, rng);
        const Matrix<T> got = attend::multi_head_attention(q, k, v, h, with_mask(m));
        ASSERT_EQ(got.cols(), h.query * dv);
        ASSERT_LE(max_abs_diff(got, attend::reference::multi_head_attention(q, k, v, h, with_mask(m))), tolerance<T>())
            << "heads " << h.query << "/" << h.kv << " lq=" << lq << " lk=" << lk << " mask=" << m;
      }
}

// Splitting the embedding: head h of multi-head attention is plain attention on column slice h.
TYPED_TEST(Kernels, MultiHeadIsConcatenationOfPerHeadAttention) {
  using T = TypeParam;
  std::mt19937 rng(1);
  const int H = 32, d = 16;  // a 512-wide embedding in 32 heads of 16
  const auto x = random_matrix<T>(12, H * d, rng);
  const Matrix<T> mha = attend::multi_head_attention(x, x, x, Heads{H, H});
  for (int h = 0; h < H; ++h) {
    const auto s = x.middleCols(h * d, d);
    ASSERT_LE(max_abs_diff(mha.middleCols(h * d, d), attend::scaled_dot_product_attention(s, s, s)), 1e-6) << h;
  }
}

TYPED_TEST(Kernels, GqaAndMqaAreHeadCountsOfOneKernel) {
  using T = TypeParam;
  std::mt19937 rng(2);
  const auto q = random_matrix<T>(6, 8 * 4, rng), k = random_matrix<T>(9, 2 * 4, rng);
  const auto v = random_matrix<T>(9, 2 * 3, rng);
  const auto k1 = random_matrix<T>(9, 4, rng), v1 = random_matrix<T>(9, 3, rng);
  const Options o = with_mask(Mask::causal());
  EXPECT_EQ(attend::grouped_query_attention(q, k, v, 8, 2, o), attend::multi_head_attention(q, k, v, Heads{8, 2}, o));
  EXPECT_EQ(attend::multi_query_attention(q, k1, v1, 8, o), attend::multi_head_attention(q, k1, v1, Heads{8, 1}, o));
  // MQA equals GQA whose kv heads are all copies of the one head.
  Matrix<T> k_rep(9, 2 * 4), v_rep(9, 2 * 3);
  k_rep << k1, k1;
  v_rep << v1, v1;
  EXPECT_LE(max_abs_diff(attend::multi_query_attention(q, k1, v1, 8, o),
                         attend::grouped_query_attention(q, k_rep, v_rep, 8, 2, o)),
            0.0);
}

// Any Eigen expression of the scalar is accepted: column-major, blocks, maps, products.
TYPED_TEST(Kernels, AcceptsAnyDenseExpression) {
  using T = TypeParam;
  using ColMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  std::mt19937 rng(4);
  const auto q = random_matrix<T>(5, 6, rng), k = random_matrix<T>(7, 6, rng), v = random_matrix<T>(7, 3, rng);
  const Matrix<T> want = attend::scaled_dot_product_attention(q, k, v);
  const ColMajor qc = q, kc = k, vc = v;
  EXPECT_LE(max_abs_diff(attend::scaled_dot_product_attention(qc, kc, vc), want), tolerance<T>());
  const Matrix<T> big = random_matrix<T>(20, 20, rng);
  Matrix<T> padded = big;
  padded.block(2, 3, 5, 6) = q;
  EXPECT_LE(max_abs_diff(attend::scaled_dot_product_attention(padded.block(2, 3, 5, 6), k, v), want), tolerance<T>());
  Eigen::Map<const Matrix<T>> qm(q.data(), 5, 6);
  EXPECT_LE(max_abs_diff(attend::scaled_dot_product_attention(qm, k, v), want), tolerance<T>());
  const Matrix<T> id = Matrix<T>::Identity(6, 6);
  EXPECT_LE(max_abs_diff(attend::scaled_dot_product_attention(q * id, k.transpose().transpose(), v * T(1)), want),
            tolerance<T>());
}

TYPED_TEST(Kernels, IntoOverloadsWriteTheSameResult) {
  using T = TypeParam;
  std::mt19937 rng(6);
  const auto q = random_matrix<T>(5, 8, rng), k = random_matrix<T>(9, 4, rng), v = random_matrix<T>(9, 6, rng);
  const Options o = with_mask(Mask::causal());
  Matrix<T> out(5, 12);
  attend::multi_head_attention_into(q, k, v, Heads{2, 1}, out, o);
  EXPECT_EQ(out, attend::multi_head_attention(q, k, v, Heads{2, 1}, o));
  Matrix<T> wide = Matrix<T>::Constant(5, 20, T(7));
  attend::scaled_dot_product_attention_into(q.leftCols(4), k, v, wide.middleCols(3, 6), o);
  EXPECT_EQ(Matrix<T>(wide.middleCols(3, 6)), attend::scaled_dot_product_attention(q.leftCols(4), k, v, o));
  EXPECT_TRUE((wide.leftCols(3).array() == T(7)).all());
}

}  // namespace
