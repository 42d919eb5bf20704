// Memory layouts of the arguments: every layout Eigen can express (strides of 0, padded, negative and inner
// strides, overlapping rows, column-major maps, blocks of them, expressions) is read as Eigen reads it, by every
// public function that takes matrices; an `out` of the *_into forms may share memory with the inputs (the
// result is then as if the inputs were read first), and an `out` whose rows overlap is refused.
//
// Each layout is compared with the same call on a plain copy of the same view (Matrix<T> m = view: Eigen's own
// reading of the view), bit for bit, and the kernels also with attend::reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <attend/attend.hpp>
#include <functional>
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
using attend_test::max_abs_diff;
using attend_test::random_matrix;
using attend_test::tolerance;

namespace {

template <class T>
using ColMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
using Dyn = Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>;

template <class T>
bool same_bits(const Matrix<T>& a, const Matrix<T>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         (a.array() == b.array() || (a.array().isNaN() && b.array().isNaN())).all();
}

// Calls f(name, view) with views of `rows` x `cols` values in every layout below. Each view reads values of
// `source` (a few layouts repeat a row, a column or a value, as their strides say): the test compares a call on the
// view with the same call on Matrix<T>(view). The buffers live until f returns.
template <class T, class F>
void for_each_layout(const Matrix<T>& source, F&& f) {
  const Index r = source.rows(), c = source.cols();
  const T* s = source.data();
  // A fresh buffer of exactly n values (the source's, repeated) per view, so that AddressSanitizer sees any read
  // past a view's memory.
  std::vector<std::vector<T>> buffers;
  const auto fill = [&](std::size_t n) {
    std::vector<T>& buf = buffers.emplace_back(n);
    for (std::size_t i = 0; i < n; ++i) buf[i] = s[i % static_cast<std::size_t>(source.size())];
    return buf.data();
  };
  const auto n = [](Index x) { return static_cast<std::size_t>(x); };
  f("plain row-major", source);
  f("column-major matrix", ColMajor<T>(source));
  f("Map, Stride<0, 0>", Eigen::Map<const Matrix<T>, 0, Eigen::Stride<0, 0>>(fill(n(r * c)), r, c));
  f("Map, OuterStride<0>", Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<0>>(fill(n(r * c)), r, c));
  f("Map, padded OuterStride<>",
    Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>>(fill(n(r * (c + 3))), r, c, Eigen::OuterStride<>(c + 3)));
  f("Map, OuterStride<>(0): one row repeated",
    Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>>(fill(n(c)), r, c, Eigen::OuterStride<>(0)));
  f("block of a Map with OuterStride<>(0)",
    Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>>(fill(n(c + 2)), r + 3, c + 2, Eigen::OuterStride<>(0))
        .block(1, 2, r, c));
  f("Map, inner stride 2", Eigen::Map<const Matrix<T>, 0, Dyn>(fill(n(2 * r * c)), r, c, Dyn(2 * c, 2)));
  f("Map, inner stride 0: one value per row", Eigen::Map<const Matrix<T>, 0, Dyn>(fill(n(r)), r, c, Dyn(1, 0)));
  f("Map, strides 0 and 0: one value", Eigen::Map<const Matrix<T>, 0, Dyn>(fill(1), r, c, Dyn(0, 0)));
  f("Map, negative outer stride",
    Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>>(fill(n(r * c)) + (r - 1) * c, r, c, Eigen::OuterStride<>(-c)));
  f("Map, negative inner stride", Eigen::Map<const Matrix<T>, 0, Dyn>(fill(n(r * c)) + c - 1, r, c, Dyn(c, -1)));
  f("Map, overlapping rows (outer stride 1)",
    Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>>(fill(n(r + c)), r, c, Eigen::OuterStride<>(1)));
  f("column-major Map, padded",
    Eigen::Map<const ColMajor<T>, 0, Eigen::OuterStride<>>(fill(n((r + 2) * c)), r, c, Eigen::OuterStride<>(r + 2)));
  f("column-major Map, OuterStride<>(0): one column repeated",
    Eigen::Map<const ColMajor<T>, 0, Eigen::OuterStride<>>(fill(n(r)), r, c, Eigen::OuterStride<>(0)));
  f("column-major Map, inner stride 3", Eigen::Map<const ColMajor<T>, 0, Dyn>(fill(n(3 * r * c)), r, c, Dyn(3 * r, 3)));
  const ColMajor<T> transposed = source.transpose();
  f("transpose of a column-major matrix", transposed.transpose());
  f("expression (2 * x)", T(2) * source);
  const Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>> padded(fill(n(r * (c + 1))), r, c,
                                                                    Eigen::OuterStride<>(c + 1));
  f("Eigen::Ref of a padded Map", Eigen::Ref<const Matrix<T>, 0, Eigen::OuterStride<>>(padded));
}

template <class T>
class Layouts : public ::testing::Test {};
TYPED_TEST_SUITE(Layouts, attend_test::Scalars);

// The kernels, each argument in each layout in turn (the others plain), against the call on plain copies (bit
// for bit) and the reference.
TYPED_TEST(Layouts, KernelInputsOfEveryLayoutAreReadAsEigenReadsThem) {
  using T = TypeParam;
  std::mt19937 rng(500);
  const Matrix<T> q = random_matrix<T>(5, 8, rng), k = random_matrix<T>(7, 8, rng), v = random_matrix<T>(7, 6, rng);
  const Matrix<T> bias = random_matrix<T>(5, 7, rng);
  Options o;
  o.mask = Mask::causal();
  o.softcap = 4;
  // Each kernel is a call (q, k, v, bias) -> result; the multi-head ones take Heads{2, 1} (d = 4, dv = 3: k and v
  // are cut to one kv head). For each argument, the call with that argument in every layout.
  int checked = 0;
  const auto check = [&](const char* name, auto call, const auto& reference, int args) {
    const Matrix<T>* plain[4] = {&q, &k, &v, &bias};
    for (int a = 0; a < args; ++a)
      for_each_layout(*plain[a], [&](const std::string& layout, const auto& view) {
        const Matrix<T> copy = view;  // what Eigen reads from the view
        const Matrix<T>* in[4] = {&q, &k, &v, &bias};
        in[a] = &copy;
        const Matrix<T> want = call(*in[0], *in[1], *in[2], *in[3]);
        Matrix<T> got;
        switch (a) {
          case 0:
            got = call(view, *in[1], *in[2], *in[3]);
            break;
          case 1:
            got = call(*in[0], view, *in[2], *in[3]);
            break;
          case 2:
            got = call(*in[0], *in[1], view, *in[3]);
            break;
          default:
            got = call(*in[0], *in[1], *in[2], view);
        }
        ASSERT_TRUE(same_bits(got, want))
            << name << ", argument " << a << " as " << layout << ": max |difference| " << max_abs_diff(got, want);
        ASSERT_LE(max_abs_diff(got, reference(*in[0], *in[1], *in[2], *in[3])), tolerance<T>())
            << name << ", argument " << a << " as " << layout;
        ++checked;
      });
  };
  const auto ref_sdpa = [&](const auto& q_, const auto& k_, const auto& v_, const auto&) {
    return attend::reference::scaled_dot_product_attention(q_, k_, v_, o);
  };
  const auto ref_biased = [&](const auto& q_, const auto& k_, const auto& v_, const auto& b_) {
    const Matrix<double> bd = b_.template cast<double>();
    return attend::reference::scaled_dot_product_attention(q_, k_, v_, o, &bd);
  };
  const auto ref_weights = [&](const auto& q_, const auto& k_, const auto&, const auto& b_) {
    const Matrix<double> bd = b_.template cast<double>();
    return attend::reference::attention_weights(q_, k_, o, &bd);
  };
  const auto ref_mha = [&](const auto& q_, const auto& k_, const auto& v_, const auto&) {
    return attend::reference::multi_head_attention(q_, k_.leftCols(4), v_.leftCols(3), Heads{2, 1}, o);
  };
  check(
      "scaled_dot_product_attention",
      [&](const auto& q_, const auto& k_, const auto& v_, const auto&) {
        return Matrix<T>(attend::scaled_dot_product_attention(q_, k_, v_, o));
      },
      ref_sdpa, 3);
  check(
      "scaled_dot_product_attention with bias",
      [&](const auto& q_, const auto& k_, const auto& v_, const auto& b_) {
        return Matrix<T>(attend::scaled_dot_product_attention(q_, k_, v_, b_, o));
      },
      ref_biased, 4);
  check(
      "scaled_dot_product_attention_with_lse",
      [&](const auto& q_, const auto& k_, const auto& v_, const auto&) {
        return Matrix<T>(attend::scaled_dot_product_attention_with_lse(q_, k_, v_, o).out);
      },
      ref_sdpa, 3);
  check(
      "scaled_dot_product_attention_into",
      [&](const auto& q_, const auto& k_, const auto& v_, const auto&) {
        Matrix<T> out(5, 6);
        attend::scaled_dot_product_attention_into(q_, k_, v_, out, o);
        return out;
      },
      ref_sdpa, 3);
  check(
      "attention_weights",
      [&](const auto& q_, const auto& k_, const auto&, const auto&) {
        return Matrix<T>(attend::attention_weights(q_, k_, o));
      },
      [&](const auto& q_, const auto& k_, const auto&, const auto&) {
        return attend::reference::attention_weights(q_, k_, o);
      },
      2);
  check(
      "attention_weights with bias",
      [&](const auto& q_, const auto& k_, const auto&, const auto& b_) {
        return Matrix<T>(attend::attention_weights(q_, k_, b_, o));
      },
      ref_weights, 4);
  check(
      "multi_head_attention",
      [&](const auto& q_, const auto& k_, const auto& v_, const auto&) {
        return Matrix<T>(attend::multi_head_attention(q_, k_.leftCols(4), v_.leftCols(3), Heads{2, 1}, o));
      },
      ref_mha, 3);
  check(
      "multi_head_attention_into",
      [&](const auto& q_, const auto& k_, const auto& v_, const auto&) {
        Matrix<T> out(5, 6);
        attend::multi_head_attention_into(q_, k_.leftCols(4), v_.leftCols(3), Heads{2, 1}, out, o);
        return out;
      },
      ref_mha, 3);
  check(
      "multi_query_attention",
      [&](const auto& q_, const auto& k_, const auto& v_, const auto&) {
        return Matrix<T>(attend::multi_query_attention(q_, k_.leftCols(4), v_.leftCols(3), 2, o));
      },
      ref_mha, 3);
  EXPECT_GT(checked, 400);
}

// The layers and the functions around them, with their matrix input in every layout.
TYPED_TEST(Layouts, LayerInputsOfEveryLayoutAreReadAsEigenReadsThem) {
  using T = TypeParam;
  std::mt19937 rng(501);
  const Matrix<T> x = random_matrix<T>(6, 16, rng), ctx = random_matrix<T>(9, 16, rng);
  const auto mha = attend_test::random_mha<T>(16, 4, 2, 4, rng);
  attend::MultiHeadLatentAttention<T> mla({16, 2, 8, 6, 4, 2, 4});
  for (auto* lin : {&mla.q_a_proj, &mla.q_b_proj, &mla.kv_a_proj_with_mqa, &mla.kv_b_proj, &mla.o_proj})
    attend_test::randomize(*lin, rng);
  mla.q_a_layernorm.weight = attend::Vector<T>::Constant(8, T(1.1));
  mla.kv_a_layernorm.weight = attend::Vector<T>::Constant(6, T(0.9));
  attend::RMSNorm<T> norm;
  norm.weight = attend::Vector<T>::Constant(16, T(1.2));
  Options causal;
  causal.mask = Mask::causal();
  int checked = 0;
  const auto check = [&](const char* name, const Matrix<T>& source, auto call) {
    for_each_layout(source, [&](const std::string& layout, const auto& view) {
      const Matrix<T> copy = view;
      const std::vector<Matrix<T>> want = call(copy), got = call(view);
      ASSERT_EQ(got.size(), want.size());
      for (std::size_t i = 0; i < got.size(); ++i)
        ASSERT_TRUE(same_bits(got[i], want[i]))
            << name << " (result " << i << ") on " << layout << ": max |difference| " << max_abs_diff(got[i], want[i]);
      ++checked;
    });
  };
  using R = std::vector<Matrix<T>>;
  check("MultiHeadAttention::forward(x)", x, [&](const auto& in) { return R{mha.forward(in, causal)}; });
  check("MultiHeadAttention::forward(x, context), x", x, [&](const auto& in) { return R{mha.forward(in, ctx)}; });
  check("MultiHeadAttention::forward(x, context), context", ctx, [&](const auto& in) { return R{mha.forward(x, in)}; });
  check("MultiHeadAttention::forward(x, cache)", x, [&](const auto& in) {
    attend::KVCache<T> cache;
    R r{mha.forward(in, cache, causal)};
    r.push_back(mha.forward(in, cache, causal));
    r.push_back(cache.keys());
    return r;
  });
  check("MultiHeadLatentAttention::forward(x)", x, [&](const auto& in) { return R{mla.forward(in, causal)}; });
  check("MultiHeadLatentAttention::forward(x, cache)", x, [&](const auto& in) {
    attend::LatentCache<T> cache;
    R r{mla.forward(in, cache, causal)};
    r.push_back(cache.entries());
    return r;
  });
  check("Linear", x, [&](const auto& in) { return R{mha.q_proj(in)}; });
  check("RMSNorm", x, [&](const auto& in) { return R{norm(in)}; });
  check("apply_rope", x, [&](const auto& in) { return R{attend::apply_rope(in, 4, 3)}; });
  check("softmax", x, [&](const auto& in) { return R{attend::softmax(in)}; });
  check("KVCache::append", x, [&](const auto& in) {
    attend::KVCache<T> cache;
    cache.append(in, in.leftCols(8));
    return R{cache.keys(), cache.values()};
  });
  check("LatentCache::append", x, [&](const auto& in) {
    attend::LatentCache<T> cache;
    cache.append(in, 10);
    return R{cache.latent(), cache.rope_keys()};
  });
  EXPECT_GT(checked, 200);
}

// out of the *_into forms in the layouts Eigen::Ref binds in place: padded rows, a block of a larger matrix,
// reversed rows. Each gets the plain call's bits.
TYPED_TEST(Layouts, IntoWritesOutputsOfAnyRowStride) {
  using T = TypeParam;
  std::mt19937 rng(502);
  const Matrix<T> q = random_matrix<T>(5, 8, rng), k = random_matrix<T>(7, 8, rng), v = random_matrix<T>(7, 6, rng);
  const Matrix<T> want = attend::scaled_dot_product_attention(q, k, v);
  const Matrix<T> want_mh = attend::multi_head_attention(q, k, v, Heads{2, 2});
  std::vector<T> buf(200, T(-1));
  Eigen::Map<Matrix<T>, 0, Eigen::OuterStride<>> padded(buf.data(), 5, 6, Eigen::OuterStride<>(9));
  attend::scaled_dot_product_attention_into(q, k, v, padded);
  EXPECT_TRUE(same_bits(Matrix<T>(padded), want));
  Eigen::Map<Matrix<T>, 0, Eigen::OuterStride<>> reversed(buf.data() + 100 + 4 * 6, 5, 6, Eigen::OuterStride<>(-6));
  attend::multi_head_attention_into(q, k, v, Heads{2, 2}, reversed);
  EXPECT_TRUE(same_bits(Matrix<T>(reversed), want_mh));
  Matrix<T> big = Matrix<T>::Constant(9, 11, T(3));
  attend::scaled_dot_product_attention_into(q, k, v, big.block(2, 4, 5, 6));
  EXPECT_TRUE(same_bits(Matrix<T>(big.block(2, 4, 5, 6)), want));
  EXPECT_TRUE((big.topRows(2).array() == T(3)).all() && (big.leftCols(4).array() == T(3)).all());
}

// An out whose rows overlap (outer stride below the row length) would be written by several rows at once: refused,
// and nothing is written.
TEST(Layouts, IntoRefusesAnOutWhoseRowsOverlap) {
  std::mt19937 rng(503);
  const Matrix<float> q = random_matrix<float>(5, 8, rng), k = random_matrix<float>(7, 8, rng),
                      v = random_matrix<float>(7, 6, rng);
  std::vector<float> buf(64, 7.f);
  Eigen::Map<Matrix<float>, 0, Eigen::OuterStride<>> overlapping(buf.data(), 5, 6, Eigen::OuterStride<>(2));
  attend_test::expect_error([&] { attend::scaled_dot_product_attention_into(q, k, v, overlapping); },
                            {"attend::scaled_dot_product_attention_into: out has rows of 6 values 2 apart",
                             "its rows overlap in memory, expected an outer stride of at least 6"});
  attend_test::expect_error(
      [&] {
        attend::multi_head_attention_into(q, k, v, Heads{2, 2}, overlapping);
      },
      {"attend::multi_head_attention_into: out has rows of 6 values 2 apart"});
  EXPECT_TRUE(std::all_of(buf.begin(), buf.end(), [](float x) { return x == 7.f; }));
}

// ---------------------------------------------------------------------------------------------------------------
// out sharing memory with the inputs.

template <class T>
class Aliasing : public ::testing::Test {};
TYPED_TEST_SUITE(Aliasing, attend_test::Scalars);

// Runs `body` at one thread and at two (with OpenMP), so that tasks writing out while others read the inputs show.
template <class Body>
void at_one_and_two_threads(Body body) {
#if defined(_OPENMP)
  const int saved = omp_get_max_threads();
  for (int t : {1, 2}) {
    omp_set_num_threads(t);
    body(t);
  }
  omp_set_num_threads(saved);
#else
  body(1);
#endif
}

// In-place self-attention: one matrix as q, k, v and out, in prefill (threaded: 4 heads x 1500 rows, with and
// without a causal mask) and in the split-key decode path (2 query rows over 5000 keys, the query rows and out being
// the first rows of the keys). GQA in place: q and out one matrix, k and v its two halves, so that one kv group's
// output rows are the other group's keys.
TYPED_TEST(Aliasing, OutSharingEveryInputGivesTheOutOfPlaceResult) {
  using T = TypeParam;
  std::mt19937 rng(510);
  const Matrix<T> x0 = random_matrix<T>(1500, 4 * 32, rng), long0 = random_matrix<T>(5000, 4 * 32, rng);
  Options causal;
  causal.mask = Mask::causal();
  const Heads h{4, 4};
  const Matrix<T> want = attend::multi_head_attention(x0, x0, x0, h, causal);
  const Matrix<T> want_none = attend::multi_head_attention(x0, x0, x0, h);
  const Matrix<T> want_gqa = attend::multi_head_attention(x0, x0.leftCols(64), x0.rightCols(64), Heads{4, 2});
  const Matrix<T> want_decode = attend::multi_head_attention(long0.topRows(2), long0, long0, h);
  const Matrix<T> want_single = attend::scaled_dot_product_attention(x0.leftCols(32), x0.leftCols(32), x0.leftCols(32));
  at_one_and_two_threads([&](int threads) {
    Matrix<T> x = x0;
    attend::multi_head_attention_into(x, x, x, h, x, causal);
    EXPECT_TRUE(same_bits(x, want)) << threads << " threads: max |difference| " << max_abs_diff(x, want);
    x = x0;
    attend::multi_head_attention_into(x, x, x, h, x);
    EXPECT_TRUE(same_bits(x, want_none)) << threads << " threads, no mask";
    x = x0;
    attend::multi_head_attention_into(x, x.leftCols(64), x.rightCols(64), Heads{4, 2}, x);
    EXPECT_TRUE(same_bits(x, want_gqa)) << threads << " threads, GQA";
    Matrix<T> y = long0;
    attend::multi_head_attention_into(y.topRows(2), y, y, h, y.topRows(2));
    EXPECT_TRUE(same_bits(Matrix<T>(y.topRows(2)), want_decode)) << threads << " threads, decode";
    EXPECT_TRUE(same_bits(Matrix<T>(y.bottomRows(4998)), Matrix<T>(long0.bottomRows(4998))));
    Matrix<T> z = x0.leftCols(32);
    attend::scaled_dot_product_attention_into(z, z, z, z);
    EXPECT_TRUE(same_bits(z, want_single)) << threads << " threads, scaled_dot_product_attention_into";
  });
}

// out sharing memory with one input only, or with part of one: q's rows, the keys, the values, columns interleaved
// with an input's (conservatively treated as shared), and an expression that reads out (evaluated before).
TYPED_TEST(Aliasing, OutSharingOneInputOrPartOfOneGivesTheOutOfPlaceResult) {
  using T = TypeParam;
  std::mt19937 rng(511);
  const Heads h{4, 2};
  const Matrix<T> q0 = random_matrix<T>(600, 4 * 16, rng), k0 = random_matrix<T>(600, 2 * 16, rng);
  const Matrix<T> v0 = random_matrix<T>(600, 2 * 16, rng);
  const Matrix<T> want = attend::multi_head_attention(q0, k0, v0, h);  // [600, 64]
  at_one_and_two_threads([&](int threads) {
    {  // out is q
      Matrix<T> q = q0;
      attend::multi_head_attention_into(q, k0, v0, h, q);
      EXPECT_TRUE(same_bits(q, want)) << threads << " threads, out = q";
    }
    {  // out overlaps the keys and values: one buffer [600, 64 + 32 + 32] holding out | k | v side by side
      Matrix<T> buf(600, 128);
      buf.middleCols(64, 32) = k0;
      buf.middleCols(96, 32) = v0;
      buf.leftCols(64).setConstant(T(9));
      attend::multi_head_attention_into(q0, buf.middleCols(64, 32), buf.middleCols(96, 32), h, buf.leftCols(64));
      EXPECT_TRUE(same_bits(Matrix<T>(buf.leftCols(64)), want)) << threads << " threads, interleaved columns";
      EXPECT_TRUE(same_bits(Matrix<T>(buf.middleCols(64, 32)), k0));
    }
    {  // out is the keys' memory: k [600, 32] and v as the first 32 columns of out's own [600, 64]
      Matrix<T> out(600, 64);
      out.leftCols(32) = k0;
      out.rightCols(32) = v0;
      attend::multi_head_attention_into(q0, out.leftCols(32), out.rightCols(32), h, out);
      EXPECT_TRUE(same_bits(out, want)) << threads << " threads, out = [k | v]";
    }
    {  // an expression of out as q: evaluated before the call writes out
      Matrix<T> out = q0 / T(2);
      attend::multi_head_attention_into(out * T(2), k0, v0, h, out);
      EXPECT_TRUE(same_bits(out, want)) << threads << " threads, q = 2 * out";
    }
  });
}

}  // namespace
