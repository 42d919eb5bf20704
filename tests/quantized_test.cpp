// 8-bit keys and values: the quantizer on hand-computed blocks, the contract's two NMSE bounds, every mask and
// schedule, rows with no key, decode through an 8-bit cache equal to a causal forward over the same quantized
// keys and values, thread-count independence, and the errors; and the decode loop's integer scores
// (detail::RowProductsQ8) against double products at the edges of its 16-key blocks.
#include <gtest/gtest.h>

#include <attend/attend.hpp>
#include <attend/detail/row_products_q8.hpp>
#include <cmath>
#include <limits>
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
using attend::Q8Matrix;
using attend_test::random_matrix;

namespace {

template <class A, class B>
double nmse(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  const Eigen::MatrixXd x = a.template cast<double>(), y = b.template cast<double>();
  return (x - y).squaredNorm() / y.squaredNorm();
}

// ---------------------------------------------------------------------------------------------------------------
// The quantizer.

TEST(QuantizeQ8, ABlockIsScaledByItsLargestMagnitudeOver127) {
  Matrix<float> x = Matrix<float>::Zero(1, 32);
  x(0, 0) = 2.54f;  // max |x|: scale = 2.54 / 127 = 0.02
  x(0, 1) = -2.54f;
  x(0, 2) = 1.0f;    // 1 / 0.02 = 50 (50.0000008 in float: rounds to 50)
  x(0, 3) = 0.03f;   // 1.5 -> 2 (half away from zero)
  x(0, 4) = -0.03f;  // -1.5 -> -2
  x(0, 5) = 0.009f;  // 0.45 -> 0
  const Q8Matrix m = attend::quantize_q8(x);
  ASSERT_EQ(m.rows(), 1);
  ASSERT_EQ(m.cols(), 32);
  EXPECT_EQ(m.scale(0, 0), 2.54f / 127.f);
  EXPECT_EQ(m.q(0, 0), 127);
  EXPECT_EQ(m.q(0, 1), -127);
  EXPECT_EQ(m.q(0, 2), int(std::round(1.0f / (2.54f / 127.f))));
  EXPECT_EQ(m.q(0, 3), int(std::round(0.03f / (2.54f / 127.f))));
  EXPECT_EQ(m.q(0, 4), -m.q(0, 3));
  EXPECT_EQ(m.q(0, 5), 0);
  for (Index c = 6; c < 32; ++c) EXPECT_EQ(m.q(0, c), 0);
  // dequantize is scale * q.
  const Matrix<float> back = attend::dequantize(m);
  for (Index c = 0; c < 32; ++c) EXPECT_EQ(back(0, c), m.scale(0, 0) * float(m.q(0, c)));
}

TEST(QuantizeQ8, TiesRoundHalfAwayFromZero) {
  Matrix<float> x = Matrix<float>::Zero(1, 32);
  x(0, 0) = 127.f;  // scale exactly 1: every value an exact half or integer
  for (int i = 1; i < 16; ++i) {
    x(0, 2 * i) = float(i) + 0.5f;
    x(0, 2 * i + 1) = -(float(i) + 0.5f);
  }
  const Q8Matrix m = attend::quantize_q8(x);
  EXPECT_EQ(m.scale(0, 0), 1.f);
  for (int i = 1; i < 16; ++i) {
    EXPECT_EQ(m.q(0, 2 * i), i + 1) << "+" << i << ".5";
    EXPECT_EQ(m.q(0, 2 * i + 1), -(i + 1)) << "-" << i << ".5";
  }
}

TEST(QuantizeQ8, AllZeroBlocksHaveScaleZeroAndBlocksAreIndependent) {
  Matrix<float> x = Matrix<float>::Zero(2, 64);
  x(0, 40) = -3.f;  // block 1 of row 0 only
  x(1, 0) = 1e-30f;
  const Q8Matrix m = attend::quantize_q8(x);
  EXPECT_EQ(m.scale(0, 0), 0.f);
  EXPECT_EQ(m.scale(0, 1), 3.f / 127.f);
  EXPECT_EQ(m.q(0, 40), -127);
  EXPECT_EQ(m.scale(1, 1), 0.f);
  EXPECT_EQ(m.q(1, 0), 127);  // a tiny block is scaled up: q8 keeps relative precision per block
  EXPECT_TRUE(attend::dequantize(m).row(0).head(32).isZero(0));
}

TEST(QuantizeQ8, ValuesStayWithinPlusMinus127AndHalfAStepOfTheInput) {
  std::mt19937 rng(1);
  const Matrix<float> x = random_matrix<float>(50, 128, rng, 3.0);
  const Q8Matrix m = attend::quantize_q8(x);
  const Matrix<float> back = attend::dequantize(m);
  for (Index r = 0; r < 50; ++r)
    for (Index c = 0; c < 128; ++c) {
      ASSERT_GE(m.q(r, c), -127);
      ASSERT_LE(m.q(r, c), 127);
      ASSERT_LE(std::abs(back(r, c) - x(r, c)), 0.5f * m.scale(r, c / 32) * 1.0001f) << r << ", " << c;
    }
  // The extremes: the largest magnitude of each block maps to +-127 exactly.
  EXPECT_EQ(m.cols(), 128);
  EXPECT_EQ(m.blocks(), 4);
}

TEST(QuantizeQ8, RefusesWidthsThatAreNotBlocksAndNonFiniteValues) {
  attend_test::expect_error([] { attend::quantize_q8(Matrix<float>::Zero(2, 33)); },
                            {"attend::quantize_q8: ", "x is [2, 33], expected a multiple of 32 columns"});
  Matrix<float> x = Matrix<float>::Zero(2, 32);
  x(1, 7) = std::numeric_limits<float>::infinity();
  attend_test::expect_error([&] { attend::quantize_q8(x); }, {"attend::quantize_q8: ", "x(1, 7) is inf"});
  x(1, 7) = std::numeric_limits<float>::quiet_NaN();
  attend_test::expect_error([&] { attend::quantize_q8(x); }, {"x(1, 7) is nan"});
  attend_test::expect_error([] { Q8Matrix(3, 20); }, {"attend::Q8Matrix: ", "cols is 20, expected a multiple of 32"});
}

// ---------------------------------------------------------------------------------------------------------------
// The kernels.

const Mask kMasks[] = {Mask::none(), Mask::causal(), Mask::causal_top_left(), Mask::sliding_window(37)};

// NMSE against the float call on the dequantized keys and values (<= 1e-4) and against double on the unquantized
// values (<= 5e-4, inputs of unit scale), over prefill and decode shapes, every mask, GQA/MQA.
TEST(Q8Kernels, MeetTheContractsTwoBoundsOnEverySchedule) {
  std::mt19937 rng(2);
  struct Shape {
    Index lq, lk;
    Heads h;
  };
  double worst_deq = 0, worst_double = 0;
  for (const Shape& s : {Shape{1, 5000, {8, 2}}, Shape{4, 2000, {8, 8}}, Shape{300, 300, {4, 1}},
                         Shape{33, 700, {6, 3}}, Shape{700, 40, {2, 2}}})
    for (const Mask& m : kMasks) {
      Options o;
      o.mask = m;
      const Matrix<float> q = random_matrix<float>(s.lq, s.h.query * 64, rng);
      const Matrix<float> k = random_matrix<float>(s.lk, s.h.kv * 64, rng);
      const Matrix<float> v = random_matrix<float>(s.lk, s.h.kv * 32, rng);
      const Q8Matrix kq = attend::quantize_q8(k), vq = attend::quantize_q8(v);
      const auto got = attend::multi_head_attention_with_lse(q, kq, vq, s.h, o);
      const auto deq = attend::multi_head_attention_with_lse(q, attend::dequantize(kq), attend::dequantize(vq), s.h, o);
      const Matrix<double> want = attend::reference::multi_head_attention(q, k, v, s.h, o);
      worst_deq = std::max(worst_deq, nmse(got.out, deq.out));
      worst_double = std::max(worst_double, nmse(got.out, want));
      ASSERT_LE(nmse(got.out, deq.out), 1e-4) << s.lq << "x" << s.lk << " " << m;
      ASSERT_LE(nmse(got.out, want), 5e-4) << s.lq << "x" << s.lk << " " << m;
      // lse over the same (dequantized) scores as the float call.
      for (Index i = 0; i < s.lq; ++i)
        for (Index h = 0; h < s.h.query; ++h) {
          if (std::isinf(deq.lse(i, h)))
            ASSERT_EQ(got.lse(i, h), deq.lse(i, h));
          else
            ASSERT_NEAR(got.lse(i, h), deq.lse(i, h), 1e-4);
        }
      // Rows that see no key are exactly zero.
      for (Index i = 0; i < s.lq; ++i) {
        if (want.row(i).isZero(0)) {
          ASSERT_TRUE(got.out.row(i).isZero(0)) << "row " << i;
        }
      }
    }
  std::printf("worst NMSE: %.3g vs the dequantized float call, %.3g vs double on the unquantized values\n", worst_deq,
              worst_double);
}

// Structured inputs: rows of very different magnitudes (per-block scales keep each one's precision), a constant
// block, and large softmax logits.
TEST(Q8Kernels, StructuredInputsKeepTheBounds) {
  std::mt19937 rng(3);
  Matrix<float> q = random_matrix<float>(20, 4 * 64, rng), k = random_matrix<float>(600, 2 * 64, rng);
  Matrix<float> v = random_matrix<float>(600, 2 * 64, rng);
  for (Index j = 0; j < 600; j += 7) k.row(j) *= 1e-3f;
  for (Index j = 3; j < 600; j += 11) v.row(j) *= 50.f;
  k.block(5, 0, 1, 32).setConstant(0.25f);
  Options o;
  o.mask = Mask::causal();
  o.scale = 0.5;
  const Matrix<float> got = attend::multi_head_attention(q, attend::quantize_q8(k), attend::quantize_q8(v), {4, 2}, o);
  const Matrix<float> deq = attend::multi_head_attention(q, attend::dequantize(attend::quantize_q8(k)),
                                                         attend::dequantize(attend::quantize_q8(v)), {4, 2}, o);
  EXPECT_LE(nmse(got, deq), 1e-4);
}

// With the narrow (AVX-512) loops off, decode dequantizes key tiles into the float mainloop: the same bounds.
TEST(Q8Kernels, TheGenericPathMeetsTheSameBounds) {
  std::mt19937 rng(10);
  attend::detail::set_bf16_path(attend::detail::Bf16Path::generic);
  for (auto [lq, lk] : {std::pair<Index, Index>{1, 3000}, {64, 64}}) {
    Options o;
    o.mask = Mask::causal();
    const Matrix<float> q = random_matrix<float>(lq, 8 * 64, rng), k = random_matrix<float>(lk, 2 * 64, rng);
    const Matrix<float> v = random_matrix<float>(lk, 2 * 64, rng);
    const Q8Matrix kq = attend::quantize_q8(k), vq = attend::quantize_q8(v);
    const Matrix<float> got = attend::multi_head_attention(q, kq, vq, Heads{8, 2}, o);
    EXPECT_LE(nmse(got, attend::multi_head_attention(q, attend::dequantize(kq), attend::dequantize(vq), {8, 2}, o)),
              1e-4);
    EXPECT_LE(nmse(got, attend::reference::multi_head_attention(q, k, v, Heads{8, 2}, o)), 5e-4);
  }
  attend::detail::reset_bf16_path();
}

TEST(Q8Kernels, EveryEntryPointTakesQ8AndAgreesWithMultiHead) {
  std::mt19937 rng(4);
  const Matrix<float> q = random_matrix<float>(9, 4 * 32, rng), k = random_matrix<float>(70, 32, rng);
  const Matrix<float> v = random_matrix<float>(70, 64, rng);
  const Q8Matrix kq = attend::quantize_q8(k), vq = attend::quantize_q8(v);
  const Matrix<float> mqa = attend::multi_query_attention(q, kq, vq, 4);
  EXPECT_EQ(mqa, attend::multi_head_attention(q, kq, vq, Heads{4, 1}));
  EXPECT_EQ(mqa, attend::grouped_query_attention(q, kq, vq, 4, 1));
  const Matrix<float> q1 = q.leftCols(32);
  const auto s = attend::scaled_dot_product_attention_with_lse(q1, kq, vq);
  EXPECT_EQ(s.out, attend::scaled_dot_product_attention(q1, kq, vq));
  EXPECT_EQ(s.out, attend::multi_head_attention(q1, kq, vq, Heads{1, 1}));
  EXPECT_EQ(s.lse.cols(), 1);
}

TEST(Q8Kernels, OneAndTwoThreadsAgreeBitForBit) {
#if defined(_OPENMP)
  std::mt19937 rng(5);
  const int restore = omp_get_max_threads();
  for (auto [lq, lk] : {std::pair<Index, Index>{2, 9000}, {500, 500}}) {
    Options o;
    o.mask = Mask::causal();
    const Matrix<float> q = random_matrix<float>(lq, 8 * 64, rng);
    const Q8Matrix k = attend::quantize_q8(random_matrix<float>(lk, 2 * 64, rng));
    const Q8Matrix v = attend::quantize_q8(random_matrix<float>(lk, 2 * 64, rng));
    attend::AttentionResult<float> r[2];
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

TEST(Q8Kernels, HeadDimsThatAreNotBlocksAreRefused) {
  std::mt19937 rng(6);
  const Matrix<float> q = random_matrix<float>(3, 2 * 48, rng);
  const Q8Matrix k(5, 96), v(5, 64);
  attend_test::expect_error(
      [&] {
        attend::multi_head_attention(q, k, v, Heads{2, 2});
      },
      {"attend::multi_head_attention: ", "head dims d = 48 and dv = 32 must be multiples of 32"});
  attend_test::expect_error(
      [&] {
        attend::multi_head_attention(q, k, v, Heads{2, 1});
      },
      {"attend::multi_head_attention: ", "k has 96 columns, expected kv heads (1) * head dim (48)"});
}

// ---------------------------------------------------------------------------------------------------------------
// The 8-bit caches.

TEST(Q8Caches, DecodingEqualsACausalForwardOverTheSameQuantizedCache) {
  std::mt19937 rng(7);
  const auto mha = attend_test::random_mha<float>(64, 8, 2, 32, rng);
  const Matrix<float> x = random_matrix<float>(60, 64, rng);
  Options o;
  o.mask = Mask::causal();
  attend::KVCache<float, attend::q8> cache;
  Matrix<float> y(60, 64);
  for (auto [b, n] : {std::pair<Index, Index>{0, 30}, {30, 1}, {31, 29}})
    y.middleRows(b, n) = mha.forward(x.middleRows(b, n), cache, o);
  // The whole sequence at once over what the cache holds.
  const Matrix<float> q = mha.q_proj(x);
  const Matrix<float> want =
      mha.o_proj(attend::multi_head_attention(q, cache.keys_dequantized(), cache.values_dequantized(), Heads{8, 2}, o));
  // The chunks of 30 and 29 tokens read the same values in float as the forward does.
  const double tolerance = 1e-5 * (1 + want.cwiseAbs().maxCoeff());
  EXPECT_LE(attend_test::max_abs_diff(y.topRows(30), want.topRows(30)), tolerance);
  EXPECT_LE(attend_test::max_abs_diff(y.bottomRows(29), want.bottomRows(29)), tolerance);
  // The one-token step (the decode loop) writes q in two 8-bit digits for integer products with the keys
  // (row_products_q8.hpp): about 2^-15 of each block's largest value, far inside the contract's 1e-4.
  std::printf("decode step vs the forward: NMSE %.3g\n", nmse(y.row(30), want.row(30)));
  EXPECT_LE(nmse(y.row(30), want.row(30)), 1e-7);
  // And against the float cache: the contract's bound.
  attend::KVCache<float> float_cache;
  const Matrix<float> y_float = mha.forward(x, float_cache, o);
  EXPECT_LE(nmse(y, y_float), 5e-4);
  // 34 bytes per 32 values against 128: at most 0.27 of the float cache.
  EXPECT_EQ(cache.bytes(), std::size_t(60 * 2 * (64 + 2 * 2)));
  EXPECT_LE(double(cache.bytes()) / double(60 * 2 * 64 * 4), 0.27);
}

TEST(Q8Caches, TheLatentCacheQuantizesWholeRowsAndDecodesWithinTheBound) {
  std::mt19937 rng(8);
  typename attend::MultiHeadLatentAttention<float>::Config cfg{64, 4, 0, 64, 16, 32, 16};
  attend::MultiHeadLatentAttention<float> mla(cfg);
  for (auto* lin : {&mla.q_proj, &mla.kv_a_proj_with_mqa, &mla.kv_b_proj, &mla.o_proj})
    attend_test::randomize(*lin, rng, false);
  const Matrix<float> x = random_matrix<float>(40, 64, rng);
  Options o;
  o.mask = Mask::causal();
  attend::LatentCache<float, attend::q8> cache;
  Matrix<float> z(40, 64);
  for (Index i = 0; i < 40; i += 8) z.middleRows(i, 8) = mla.forward(x.middleRows(i, 8), cache, o);
  EXPECT_LE(nmse(z, mla.forward(x, o)), 5e-4);
  EXPECT_EQ(cache.entries().cols(), 96);
  // A rank that is not whole blocks cannot use an 8-bit latent cache.
  typename attend::MultiHeadLatentAttention<float>::Config bad{64, 4, 0, 48, 16, 32, 16};
  attend::MultiHeadLatentAttention<float> odd(bad);
  attend::LatentCache<float, attend::q8> empty;
  attend_test::expect_error(
      [&] { odd.forward(x.topRows(2), empty, o); },
      {"attend::MultiHeadLatentAttention::forward: ", "kv_lora_rank is 48, expected a multiple of 32"});
  EXPECT_EQ(empty.size(), 0);
}

TEST(Q8Caches, ErrorsLeaveTheCacheUnchanged) {
  std::mt19937 rng(9);
  const auto mha = attend_test::random_mha<float>(64, 8, 2, 32, rng);
  attend::KVCache<float, attend::q8> cache;
  mha.forward(random_matrix<float>(5, 64, rng), cache);
  const Matrix<float> keys = cache.keys_dequantized();
  // A token that is not finite cannot be quantized: refused, nothing appended.
  Matrix<float> x = random_matrix<float>(2, 64, rng);
  x(1, 3) = std::numeric_limits<float>::quiet_NaN();
  attend_test::expect_error([&] { mha.forward(x, cache); },
                            {"attend::KVCache::append: ", "q8 stores finite values only"});
  EXPECT_EQ(cache.size(), 5);
  EXPECT_EQ(cache.keys_dequantized(), keys);
  // A layer whose widths are not blocks.
  const auto narrow = attend_test::random_mha<float>(64, 4, 2, 8, rng);
  attend_test::expect_error([&] { narrow.forward(random_matrix<float>(1, 64, rng), cache); },
                            {"attend::MultiHeadAttention::forward: ", "key_width is 16, expected a multiple of 32"});
  EXPECT_EQ(cache.size(), 5);
}

// ---------------------------------------------------------------------------------------------------------------
// The decode loop's integer scores (row_products_q8.hpp).

// The two digits hold each query value to within scale / 256 (scale = max |x| / 127 of its block), in range, with
// the offsets that pay back the keys' sign flip; a block that is not finite is refused.
TEST(Q8Queries, TwoDigitsHoldEachValueToAQuarterOfAPercentOfItsBlocksStep) {
  std::mt19937 rng(11);
  const Index rows = 3, d = 96, ldq = 100;
  Matrix<float> q = random_matrix<float>(rows, ldq, rng);
  q.block(1, 32, 1, 32).setZero();  // an all-zero block
  q(2, 70) = 1e4f;                  // a block with one large value
  attend::detail::Q8Queries digits;
  ASSERT_TRUE(digits.quantize(q.data(), ldq, rows, d));
  for (Index r = 0; r < rows; ++r)
    for (Index b = 0; b < d / 32; ++b) {
      const double step = q.row(r).segment(b * 32, 32).cwiseAbs().maxCoeff() / 127.0;
      EXPECT_FLOAT_EQ(digits.scale(r, b), float(step / 128));
      std::int32_t hi_sum = 0, lo_sum = 0;
      for (Index i = b * 32; i < b * 32 + 32; ++i) {
        const int hi = digits.hi(r)[i], lo = digits.lo(r)[i];
        ASSERT_LE(std::abs(hi), 127);
        ASSERT_LE(std::abs(lo), 64);
        EXPECT_NEAR(double(digits.scale(r, b)) * (128 * hi + lo), q(r, i), step / 256 * 1.001 + 1e-30) << r << " " << i;
        hi_sum += hi;
        lo_sum += lo;
      }
      EXPECT_EQ(digits.hi_offset(r, b), -128 * hi_sum);
      EXPECT_EQ(digits.lo_offset(r, b), -128 * lo_sum);
    }
  q(1, 5) = std::numeric_limits<float>::infinity();
  EXPECT_FALSE(digits.quantize(q.data(), ldq, rows, d));
  q(1, 5) = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(digits.quantize(q.data(), ldq, rows, d));
}

#if defined(ATTEND_X86_DISPATCH)
// Scores of every row count around the 16-key lane blocks and depths of 1 to 5 blocks, on keys with a row stride
// wider than their width: equal to the double products of the same digits and keys up to float's rounding of the
// per-block terms. Half scales are widened to float first, as the rows mainloop does.
TEST(Q8Scores, IntegerScoresEqualDoubleProductsOfTheSameDigitsAndKeys) {
  if (!attend::detail::cpu().avx512vnni) GTEST_SKIP() << "no AVX512-VNNI on this CPU";
  std::mt19937 rng(12);
  for (Index depth : {32, 64, 96, 128, 160})
    for (Index keys : {1, 2, 15, 16, 17, 31, 33, 50})
      for (Index rows : {1, 3, 4, 5})
        for (bool half : {false, true}) {
          const Q8Matrix k = attend::quantize_q8(random_matrix<float>(keys, depth + 64, rng));  // stride > depth
          const Matrix<float> q = random_matrix<float>(rows, depth, rng);
          attend::detail::Q8Queries digits;
          ASSERT_TRUE(digits.quantize(q.data(), depth, rows, depth));
          const Index blocks = k.blocks();
          std::vector<float> scales(k.scales(), k.scales() + keys * blocks), widened(std::size_t(keys * (depth / 32)));
          attend::detail::RowsQ8<float> source(k.data(), k.cols(), k.scales(), blocks);
          if (half) {  // the scales rounded to half, widened as an 8-bit cache's are
            std::vector<Eigen::half> stored(scales.size());
            for (std::size_t i = 0; i < scales.size(); ++i) stored[i] = Eigen::half(scales[i]);
            for (std::size_t i = 0; i < scales.size(); ++i) scales[i] = float(stored[i]);
            attend::detail::widen_scales(attend::detail::RowsQ8<Eigen::half>(k.data(), k.cols(), stored.data(), blocks),
                                         keys, depth / 32, widened.data());
            source = attend::detail::RowsQ8<float>(k.data(), k.cols(), widened.data(), depth / 32);
          }
          Matrix<float> s = Matrix<float>::Constant(rows, keys + 3, 1000);
          attend::detail::RowProductsQ8::scores(s.data(), s.outerStride(), digits, 0, rows, source, keys, depth);
          for (Index r = 0; r < rows; ++r)
            for (Index j = 0; j < keys; ++j) {
              double want = 0, magnitude = 0;
              for (Index b = 0; b < depth / 32; ++b) {
                double dot = 0;
                for (Index i = b * 32; i < b * 32 + 32; ++i)
                  dot += double(128 * digits.hi(r)[i] + digits.lo(r)[i]) * k.q(j, i);
                const double term = double(digits.scale(r, b)) * double(scales[std::size_t(j * blocks + b)]) * dot;
                want += term;
                magnitude += std::abs(term);
              }
              ASSERT_NEAR(s(r, j), want, 1e-6 * magnitude + 1e-30)
                  << "depth " << depth << " keys " << keys << " rows " << rows << " half " << half << " at " << r
                  << ", " << j;
            }
          for (Index r = 0; r < rows; ++r)  // nothing written past the keys
            for (Index j = keys; j < keys + 3; ++j) ASSERT_EQ(s(r, j), 1000);
        }
}
#endif

// A query that is not finite takes the float products (its kv group's tile): the 8-bit decode gives what the float
// call on the dequantized keys gives, NaN where it has NaN.
TEST(Q8Kernels, ANonFiniteQueryDecodesAsTheFloatCallDoes) {
  std::mt19937 rng(13);
  Matrix<float> q = random_matrix<float>(1, 8 * 64, rng);
  const Q8Matrix k = attend::quantize_q8(random_matrix<float>(300, 2 * 64, rng));
  const Q8Matrix v = attend::quantize_q8(random_matrix<float>(300, 2 * 64, rng));
  q(0, 70) = std::numeric_limits<float>::infinity();  // query head 1, kv group 0
  const Matrix<float> got = attend::multi_head_attention(q, k, v, Heads{8, 2});
  const Matrix<float> want = attend::multi_head_attention(q, attend::dequantize(k), attend::dequantize(v), Heads{8, 2});
  for (Index i = 0; i < got.cols(); ++i) {
    ASSERT_EQ(std::isnan(got(0, i)), std::isnan(want(0, i))) << i;
    // Group 0's heads (columns 0 .. 255) took the float products; group 1's the integer ones.
    if (!std::isnan(want(0, i))) {
      ASSERT_NEAR(got(0, i), want(0, i), i < 4 * 64 ? 1e-5 : 3e-4) << i;
    }
  }
}

}  // namespace
