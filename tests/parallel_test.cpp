// Log-sum-exp outputs, exact merging of partial results, the split-key decode path, and results that are
// bitwise identical for any OpenMP thread count.
#include <gtest/gtest.h>

#include <attend/attend.hpp>
#include <random>
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
using attend_test::max_abs_diff;
using attend_test::random_matrix;
using attend_test::tolerance;

namespace {

template <class T>
class Parallel : public ::testing::Test {};
TYPED_TEST_SUITE(Parallel, attend_test::Scalars);

TYPED_TEST(Parallel, MergingDisjointKeySetsEqualsOnePass) {
  using T = TypeParam;
  std::mt19937 rng(40);
  const Heads h{8, 2};
  const auto q = random_matrix<T>(5, 8 * 16, rng), k = random_matrix<T>(300, 2 * 16, rng);
  const auto v = random_matrix<T>(300, 2 * 8, rng);
  const auto whole = attend::multi_head_attention_with_lse(q, k, v, h);
  EXPECT_EQ(whole.out, attend::multi_head_attention(q, k, v, h));
  std::vector<attend::AttentionResult<T>> parts;
  for (auto [b, e] : {std::pair<Index, Index>{0, 7}, {7, 200}, {200, 300}})
    parts.push_back(attend::multi_head_attention_with_lse(q, k.middleRows(b, e - b), v.middleRows(b, e - b), h));
  const auto merged = attend::merge_attention(parts);
  EXPECT_LE(max_abs_diff(merged.out, whole.out), tolerance<T>());
  EXPECT_LE(max_abs_diff(merged.lse, whole.lse), 10 * tolerance<T>());
  const auto pairwise = attend::merge_attention(attend::merge_attention(parts[0], parts[1]), parts[2]);
  EXPECT_LE(max_abs_diff(pairwise.out, whole.out), tolerance<T>());
}

// The ring-attention primitive: a long causal sequence cut into blocks; each query block attends to each key
// block with the whole sequence's mask placed by with_diagonal(), and merging gives the one-pass result.
TYPED_TEST(Parallel, BlockwiseCausalWithDiagonalsMergesToOnePass) {
  using T = TypeParam;
  std::mt19937 rng(44);
  const Heads h{4, 2};
  const Index n = 50;
  const std::vector<Index> cuts = {0, 13, 14, 31, 50};  // uneven blocks
  const auto q = random_matrix<T>(n, 4 * 8, rng), k = random_matrix<T>(n, 2 * 8, rng),
             v = random_matrix<T>(n, 2 * 8, rng);
  for (const Mask& m : {Mask::causal(), Mask::sliding_window(9)}) {
    Options whole;
    whole.mask = m;
    const Matrix<T> want = attend::multi_head_attention(q, k, v, h, whole);
    for (std::size_t a = 0; a + 1 < cuts.size(); ++a) {
      const Index qo = cuts[a], lq = cuts[a + 1] - qo;
      std::vector<attend::AttentionResult<T>> parts;
      for (std::size_t b = 0; b + 1 < cuts.size(); ++b) {
        const Index ko = cuts[b], lk = cuts[b + 1] - ko;
        Options o;
        o.mask = m.with_diagonal(qo - ko);
        parts.push_back(attend::multi_head_attention_with_lse(q.middleRows(qo, lq), k.middleRows(ko, lk),
                                                              v.middleRows(ko, lk), h, o));
      }
      EXPECT_LE(max_abs_diff(attend::merge_attention(parts).out, want.middleRows(qo, lq)), tolerance<T>())
          << m << " query block " << a;
    }
  }
}

TYPED_TEST(Parallel, LseOfASingleHeadIsTheLogOfTheSoftmaxDenominator) {
  using T = TypeParam;
  Matrix<T> q(1, 1), k(2, 1), v(2, 1);
  q << 2;
  k << 1, -1;
  v << 0, 0;
  Options o;
  o.scale = 1.0;
  const auto r = attend::scaled_dot_product_attention_with_lse(q, k, v, o);
  EXPECT_NEAR(r.lse(0, 0), std::log(std::exp(2.0) + std::exp(-2.0)), 1e-6);
  o.mask = Mask::causal();  // Lq = 1 < Lk: bottom-right sees both keys; top-left sees only the first
  EXPECT_NEAR(attend::scaled_dot_product_attention_with_lse(q, k, v, o).lse(0, 0),
              std::log(std::exp(2.0) + std::exp(-2.0)), 1e-6);
  o.mask = Mask::causal_top_left();
  EXPECT_NEAR(attend::scaled_dot_product_attention_with_lse(q, k, v, o).lse(0, 0), 2.0, 1e-6);
}

TYPED_TEST(Parallel, PartsWithoutVisibleKeysWeighNothing) {
  using T = TypeParam;
  std::mt19937 rng(41);
  const auto q = random_matrix<T>(3, 4, rng), k = random_matrix<T>(6, 4, rng), v = random_matrix<T>(6, 2, rng);
  const auto a = attend::scaled_dot_product_attention_with_lse(q, k, v);
  const auto none = attend::scaled_dot_product_attention_with_lse(q, Matrix<T>(0, 4), Matrix<T>(0, 2));
  EXPECT_TRUE((none.lse.array() == -std::numeric_limits<T>::infinity()).all());
  EXPECT_TRUE(none.out.isZero(0));
  const auto m = attend::merge_attention(a, none);
  EXPECT_EQ(m.out, a.out);
  const auto both_empty = attend::merge_attention(none, none);
  EXPECT_TRUE(both_empty.out.isZero(0));
}

TEST(Parallel, MergeRejectsMismatchedParts) {
  attend::AttentionResult<float> a{Matrix<float>::Zero(2, 4), Matrix<float>::Zero(2, 2)};
  attend::AttentionResult<float> b{Matrix<float>::Zero(3, 4), Matrix<float>::Zero(3, 2)};
  EXPECT_THROW(attend::merge_attention(a, b), attend::shape_error);
  EXPECT_THROW(attend::merge_attention(std::vector<attend::AttentionResult<float>>{}), attend::shape_error);
  attend::AttentionResult<float> c{Matrix<float>::Zero(2, 4), Matrix<float>::Zero(2, 3)};
  EXPECT_THROW(attend::merge_attention(c, c), attend::shape_error);
}

// Decoding (few queries, long cache) splits the keys into chunks: still the reference result, every mask.
TYPED_TEST(Parallel, SplitKeyDecodeMatchesReference) {
  using T = TypeParam;
  std::mt19937 rng(42);
  for (const Mask& m : {Mask::none(), Mask::causal(), Mask::sliding_window(1500)})
    for (Index lq : {1, 3}) {
      const Heads h{8, 2};
      const auto q = random_matrix<T>(lq, 8 * 16, rng), k = random_matrix<T>(5000, 2 * 16, rng);
      const auto v = random_matrix<T>(5000, 2 * 16, rng);
      Options o;
      o.mask = m;
      EXPECT_LE(max_abs_diff(attend::multi_head_attention(q, k, v, h, o),
                             attend::reference::multi_head_attention(q, k, v, h, o)),
                tolerance<T>())
          << m << " lq " << lq;
    }
}

#if defined(_OPENMP)
// Same decomposition whatever the thread count, each task writing its own rows: bitwise equal results.
TYPED_TEST(Parallel, ResultsAreBitwiseIdenticalForAnyThreadCount) {
  using T = TypeParam;
  std::mt19937 rng(43);
  const auto q = random_matrix<T>(700, 4 * 32, rng), k = random_matrix<T>(700, 2 * 32, rng);
  const auto v = random_matrix<T>(700, 2 * 32, rng);
  const auto qd = random_matrix<T>(2, 4 * 32, rng), kd = random_matrix<T>(9000, 2 * 32, rng);
  const auto vd = random_matrix<T>(9000, 2 * 32, rng);
  Options o;
  o.mask = Mask::causal();
  const int saved = omp_get_max_threads();
  std::vector<Matrix<T>> prefill, decode;
  for (int threads : {1, 2, 3}) {
    omp_set_num_threads(threads);
    prefill.push_back(attend::multi_head_attention(q, k, v, Heads{4, 2}, o));
    decode.push_back(attend::multi_head_attention(qd, kd, vd, Heads{4, 2}, o));
  }
  omp_set_num_threads(saved);
  for (std::size_t i = 1; i < prefill.size(); ++i) {
    EXPECT_EQ(prefill[i], prefill[0]);
    EXPECT_EQ(decode[i], decode[0]);
  }
  EXPECT_LE(max_abs_diff(prefill[0], attend::reference::multi_head_attention(q, k, v, Heads{4, 2}, o)), tolerance<T>());
}
#else
TEST(Parallel, ResultsAreBitwiseIdenticalForAnyThreadCount) { GTEST_SKIP() << "built without OpenMP"; }
#endif

}  // namespace
