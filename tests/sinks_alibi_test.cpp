// Sinks and ALiBi beyond the golden cases: every schedule (prefill tiles, the split-key decode path over a long
// cache) against the double reference, apply_sinks of a merge equal to one call, the layers and MLA passing them
// through, thread-count independence, and the promise that with neither, results are bit for bit unchanged.
#include <gtest/gtest.h>

#include <attend/attend.hpp>
#include <cmath>
#include <limits>
#include <random>
#include <vector>
#if defined(_OPENMP)
#include <omp.h>
#endif

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

template <class T>
class SinksAlibi : public ::testing::Test {};
TYPED_TEST_SUITE(SinksAlibi, attend_test::Scalars);

Options with_both(Mask m, int heads, std::mt19937& rng) {
  Options o;
  o.mask = m;
  o.alibi_slopes = attend::geometric_alibi_slopes(heads);
  std::normal_distribution<double> n(0.0, 1.5);
  for (int h = 0; h < heads; ++h) o.sinks.push_back(n(rng));
  return o;
}

const Mask kMasks[] = {Mask::none(), Mask::causal(), Mask::causal_top_left(), Mask::sliding_window(40)};

// Long enough for the packed mainloop and cut tiles (prefill), and the split-key path (decode of 1-4 positions over
// 3000 keys, merged over chunks, the sinks applied after the merge).
TYPED_TEST(SinksAlibi, EveryScheduleMatchesTheReference) {
  using T = TypeParam;
  std::mt19937 rng(70);
  const std::pair<Index, Index> shapes[] = {{300, 300}, {70, 500}, {1, 3000}, {4, 3000}, {500, 60}};
  for (auto [lq, lk] : shapes)
    for (const Mask& m : kMasks)
      for (Heads h : {Heads{8, 2}, Heads{3, 3}}) {
        const Options o = with_both(m, h.query, rng);
        const auto q = random_matrix<T>(lq, h.query * 16, rng), k = random_matrix<T>(lk, h.kv * 16, rng);
        const auto v = random_matrix<T>(lk, h.kv * 8, rng);
        const auto got = attend::multi_head_attention_with_lse(q, k, v, h, o);
        const auto want = attend::reference::multi_head_attention_with_lse(q, k, v, h, o);
        ASSERT_LE(max_abs_diff(got.out, want.out), tolerance<T>()) << lq << "x" << lk << " " << m;
        ASSERT_LE(max_abs_diff(got.lse, want.lse), 10 * tolerance<T>()) << lq << "x" << lk << " " << m;
      }
}

// ALiBi's distances |i + D - j| far from 0: a diagonal D (Mask::with_diagonal) past float's integers (2^24) and
// past int32 (3 * 2^30), on the row-major (decode) and panel (prefill) layouts, matches the double reference.
// Slopes this small keep the penalties (~D * 2^-20) from swamping the scores.
TYPED_TEST(SinksAlibi, DiagonalsFarBeyondTheKeysMatchTheReference) {
  using T = TypeParam;
  std::mt19937 rng(71);
  const Heads h{4, 2};
  for (Index diagonal : {Index(1) << 20, (Index(1) << 24) - 100, Index(3) << 30})
    for (auto [lq, lk] : {std::pair<Index, Index>{300, 300}, {1, 3000}, {4, 700}}) {
      Options o;
      o.mask = Mask::none().with_diagonal(diagonal);
      o.alibi_slopes = {std::ldexp(1.0, -20), std::ldexp(1.0, -21), 0.0, std::ldexp(1.0, -24)};
      const auto q = random_matrix<T>(lq, h.query * 16, rng), k = random_matrix<T>(lk, h.kv * 16, rng);
      const auto v = random_matrix<T>(lk, h.kv * 8, rng);
      const auto got = attend::multi_head_attention_with_lse(q, k, v, h, o);
      const auto want = attend::reference::multi_head_attention_with_lse(q, k, v, h, o);
      ASSERT_LE(max_abs_diff(got.out, want.out), tolerance<T>()) << lq << "x" << lk << " D " << diagonal;
      // The lse holds the penalty itself (~D * 2^-20 ~ 3000): relative to it.
      ASSERT_LE(max_abs_diff(got.lse, want.lse), 10 * tolerance<T>() * (1 + want.lse.cwiseAbs().maxCoeff()))
          << lq << "x" << lk << " D " << diagonal;
    }
}

// A bias together with ALiBi and a sink, with and without a softcap: without one the terms are the product's
// starting values (ScoreTransform::terms_before_product()), with one they follow the cap; both match the reference,
// a bias whose -inf entries hide keys included, on prefill tiles, cut tiles and a decode.
TYPED_TEST(SinksAlibi, ABiasWithAlibiMatchesTheReferenceWithAndWithoutASoftcap) {
  using T = TypeParam;
  std::mt19937 rng(75);
  for (auto [lq, lk] : {std::pair<Index, Index>{300, 300}, {70, 500}, {1, 3000}})
    for (const Mask& m : kMasks)
      for (double softcap : {0.0, 4.0}) {
        Options o;
        o.mask = m;
        o.softcap = softcap;
        o.alibi_slopes = {0.25};
        o.sinks = {0.5};
        const auto q = random_matrix<T>(lq, 32, rng), k = random_matrix<T>(lk, 32, rng);
        const auto v = random_matrix<T>(lk, 16, rng);
        Matrix<T> bias = random_matrix<T>(lq, lk, rng);
        for (Index i = 0; i < lq; ++i) bias(i, (7 * i) % lk) = -std::numeric_limits<T>::infinity();
        const Matrix<double> bias_d = bias.template cast<double>();
        const auto got = attend::scaled_dot_product_attention(q, k, v, bias, o);
        const auto want = attend::reference::scaled_dot_product_attention_with_lse(q, k, v, o, &bias_d);
        ASSERT_LE(max_abs_diff(got, want.out), tolerance<T>()) << lq << "x" << lk << " " << m << " cap " << softcap;
      }
}

TYPED_TEST(SinksAlibi, ApplySinksOfAMergeEqualsOneCallWithSinks) {
  using T = TypeParam;
  std::mt19937 rng(71);
  const Heads h{4, 2};
  const auto q = random_matrix<T>(9, 4 * 8, rng), k = random_matrix<T>(30, 2 * 8, rng);
  const auto v = random_matrix<T>(30, 2 * 8, rng);
  for (const Mask& m : kMasks) {
    Options with_sinks = with_both(m.with_diagonal(m.hides_future() ? 21 : 0), h.query, rng), without = with_sinks;
    without.sinks.clear();
    // Key blocks of one sequence: the mask's diagonal (and so ALiBi's) placed at each block's offset.
    std::vector<attend::AttentionResult<T>> parts;
    for (auto [b, e] : {std::pair<Index, Index>{0, 11}, {11, 12}, {12, 30}}) {
      Options o = without;
      if (m.hides_future()) o.mask = m.with_diagonal(21 - b);
      o.alibi_slopes = without.alibi_slopes;
      parts.push_back(attend::multi_head_attention_with_lse(q, k.middleRows(b, e - b), v.middleRows(b, e - b), h, o));
    }
    if (!m.hides_future()) continue;  // none() has no diagonal to place the blocks' ALiBi distances
    const auto merged = attend::apply_sinks(attend::merge_attention(parts), with_sinks.sinks);
    const auto whole = attend::multi_head_attention_with_lse(q, k, v, h, with_sinks);
    EXPECT_LE(max_abs_diff(merged.out, whole.out), tolerance<T>()) << m;
    EXPECT_LE(max_abs_diff(merged.lse, whole.lse), 10 * tolerance<T>()) << m;
  }
}

TYPED_TEST(SinksAlibi, RowsThatSeeNoKeyAreZeroWithTheSinkAsTheirLse) {
  using T = TypeParam;
  std::mt19937 rng(72);
  const Heads h{2, 1};
  Options o = with_both(Mask::causal(), 2, rng);
  const auto q = random_matrix<T>(6, 2 * 4, rng), k = random_matrix<T>(2, 4, rng), v = random_matrix<T>(2, 4, rng);
  const auto r = attend::multi_head_attention_with_lse(q, k, v, h, o);
  EXPECT_TRUE(r.out.topRows(4).isZero(0));
  for (Index i = 0; i < 4; ++i)
    for (int head = 0; head < 2; ++head) EXPECT_EQ(r.lse(i, head), static_cast<T>(o.sinks[head]));
  const auto none = attend::multi_head_attention_with_lse(q, Matrix<T>(0, 4), Matrix<T>(0, 4), h, o);
  EXPECT_TRUE(none.out.isZero(0));
  EXPECT_EQ(none.lse(5, 1), static_cast<T>(o.sinks[1]));
}

// Empty vectors are the default; slopes of 0 add nothing: both give exactly the results without the options.
TYPED_TEST(SinksAlibi, WithoutSinksAndWithZeroSlopesResultsAreBitForBitUnchanged) {
  using T = TypeParam;
  std::mt19937 rng(73);
  for (auto [lq, lk] : {std::pair<Index, Index>{300, 300}, {2, 3000}}) {
    const auto q = random_matrix<T>(lq, 4 * 8, rng), k = random_matrix<T>(lk, 2 * 8, rng);
    const auto v = random_matrix<T>(lk, 2 * 8, rng);
    Options plain;
    plain.mask = Mask::causal();
    Options zero = plain;
    zero.alibi_slopes.assign(4, 0.0);
    EXPECT_EQ(attend::multi_head_attention(q, k, v, Heads{4, 2}, plain),
              attend::multi_head_attention(q, k, v, Heads{4, 2}, zero));
  }
}

TYPED_TEST(SinksAlibi, LayersPassThemThroughAndDecodeEqualsOneForward) {
  using T = TypeParam;
  std::mt19937 rng(74);
  auto mha = attend_test::random_mha<T>(32, 4, 2, 8, rng);
  const Options o = with_both(Mask::causal(), 4, rng);
  const auto x = random_matrix<T>(40, 32, rng);
  const Matrix<T> whole = mha.forward(x, o);
  // The layer is the kernel on its projections.
  const Matrix<T> q = mha.q_proj(x), k = mha.k_proj(x), v = mha.v_proj(x);
  EXPECT_LE(max_abs_diff(whole, mha.o_proj(attend::multi_head_attention(q, k, v, Heads{4, 2}, o))), tolerance<T>());
  // Chunks through a cache give the rows of one causal forward: ALiBi's distances and the sinks agree.
  attend::KVCache<T> cache;
  Matrix<T> chunked(40, 32);
  for (auto [b, n] : {std::pair<Index, Index>{0, 25}, {25, 1}, {26, 14}})
    chunked.middleRows(b, n) = mha.forward(x.middleRows(b, n), cache, o);
  EXPECT_LE(max_abs_diff(chunked, whole), 10 * tolerance<T>());

  typename attend::MultiHeadLatentAttention<T>::Config cfg{32, 4, 0, 16, 8, 4, 8};
  attend::MultiHeadLatentAttention<T> mla(cfg);
  for (auto* lin : {&mla.q_proj, &mla.kv_a_proj_with_mqa, &mla.kv_b_proj, &mla.o_proj})
    attend_test::randomize(*lin, rng, false);
  const Matrix<T> decompressed = mla.forward(x, o);
  attend::LatentCache<T> latent;
  Matrix<T> absorbed(40, 32);
  for (Index i = 0; i < 40; i += 8) absorbed.middleRows(i, 8) = mla.forward(x.middleRows(i, 8), latent, o);
  EXPECT_LE(max_abs_diff(absorbed, decompressed), 20 * tolerance<T>());
}

TYPED_TEST(SinksAlibi, OneAndTwoThreadsAgreeBitForBit) {
#if defined(_OPENMP)
  using T = TypeParam;
  std::mt19937 rng(75);
  const int restore = omp_get_max_threads();
  for (auto [lq, lk] : {std::pair<Index, Index>{600, 600}, {3, 9000}}) {
    const Options o = with_both(Mask::causal(), 8, rng);
    const auto q = random_matrix<T>(lq, 8 * 16, rng), k = random_matrix<T>(lk, 2 * 16, rng);
    const auto v = random_matrix<T>(lk, 2 * 16, rng);
    attend::AttentionResult<T> r[2];
    for (int t : {1, 2}) {
      omp_set_num_threads(t);
      r[t - 1] = attend::multi_head_attention_with_lse(q, k, v, Heads{8, 2}, o);
    }
    EXPECT_EQ(r[0].out, r[1].out);
    EXPECT_EQ(r[0].lse, r[1].lse);
  }
  omp_set_num_threads(restore);
#else
  GTEST_SKIP() << "built without OpenMP";
#endif
}

TEST(SinksAlibiSlopes, PowersOfTwoFollowTwoToTheMinusEightHOverH) {
  for (int heads : {1, 2, 4, 8, 16, 32}) {
    const std::vector<double> s = attend::geometric_alibi_slopes(heads);
    for (int h = 0; h < heads; ++h) EXPECT_DOUBLE_EQ(s[h], std::exp2(-8.0 * (h + 1) / heads)) << heads << " " << h;
  }
  // Not a power of two: the first 8 of 12 heads are those of 8 heads, the next interleave those of 16.
  const std::vector<double> s12 = attend::geometric_alibi_slopes(12), s8 = attend::geometric_alibi_slopes(8),
                            s16 = attend::geometric_alibi_slopes(16);
  for (int h = 0; h < 8; ++h) EXPECT_DOUBLE_EQ(s12[h], s8[h]);
  for (int h = 8; h < 12; ++h) EXPECT_DOUBLE_EQ(s12[h], s16[2 * (h - 8)]);
}

}  // namespace
