// Log-sum-exp outputs, exact merging of partial results, the split-key decode path, and results that are
// bitwise identical for any OpenMP thread count, for every public entry point.
#include <gtest/gtest.h>

#include <attend/attend.hpp>
#include <functional>
#include <random>
#include <string>
#include <utility>
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

// Every public entry point that does floating-point work, at 1 and 2 OpenMP threads: the same bits. The sizes are
// large enough that Eigen's own products would start threads and cut their depth by the thread count (projections
// of 512 features, attention_weights over 600 features), which is what the layers and attention_weights used to
// inherit: float and double layers differed in their last bits, attention_weights in float.
TYPED_TEST(Parallel, EveryPublicEntryPointGivesTheSameBitsAtOneAndTwoThreads) {
  using T = TypeParam;
  std::mt19937 rng(45);
  const auto rnd = [&](Index r, Index c, double s = 1.0) { return random_matrix<T>(r, c, rng, s); };
  const Heads h{8, 4};
  const auto q = rnd(300, 8 * 64), k = rnd(400, 4 * 64), v = rnd(400, 4 * 32), bias = rnd(300, 400);
  const auto qd = rnd(2, 8 * 64), kd = rnd(5000, 4 * 64), vd = rnd(5000, 4 * 32);  // split-key decode
  const auto q1 = rnd(300, 600), k1 = rnd(400, 600), v1 = rnd(400, 48);            // one head of 600
  Options o;
  o.mask = Mask::causal();
  o.softcap = 20;
  o.alibi_slopes = attend::geometric_alibi_slopes(8);
  o.sinks = std::vector<double>(8, 0.5);
  Options o1;
  o1.mask = Mask::sliding_window(150);

  attend::MultiHeadAttention<T> mha(512, 8, 4, 64);
  for (auto* lin : {&mha.q_proj, &mha.k_proj, &mha.v_proj, &mha.o_proj}) attend_test::randomize(*lin, rng);
  attend::MultiHeadLatentAttention<T> mla({512, 8, 96, 128, 32, 16, 32});
  attend::MultiHeadLatentAttention<T> mla_q0({512, 8, 0, 128, 32, 16, 32});
  for (auto* m : {&mla, &mla_q0}) {
    for (auto* lin : {&m->q_proj, &m->q_a_proj, &m->q_b_proj, &m->kv_a_proj_with_mqa, &m->kv_b_proj, &m->o_proj})
      if (lin->weight.size() != 0) attend_test::randomize(*lin, rng, lin != &m->kv_b_proj);  // softcap: no key bias
    m->kv_a_layernorm.weight = attend::Vector<T>::Constant(128, T(0.9));
  }
  mla.q_a_layernorm.weight = attend::Vector<T>::Constant(96, T(1.1));
  const auto x = rnd(300, 512), ctx = rnd(200, 512);
  attend::RMSNorm<T> norm;
  norm.weight = attend::Vector<T>::Constant(512, T(1.3));
  const auto dout = rnd(300, 8 * 32), dout1 = rnd(300, 48), dy = rnd(300, 512);  // gradients of the outputs
  const auto parts = [&] {
    return std::vector<attend::AttentionResult<T>>{
        attend::multi_head_attention_with_lse(q, k.topRows(150), v.topRows(150), h),
        attend::multi_head_attention_with_lse(q, k.bottomRows(250), v.bottomRows(250), h)};
  };

  // Each entry: a name and a call returning every matrix it computes.
  using Results = std::vector<Matrix<double>>;
  const auto as_double = [](const auto& m) { return Matrix<double>(m.template cast<double>()); };
  const std::vector<std::pair<std::string, std::function<Results()>>> calls = {
      {"scaled_dot_product_attention",
       [&] { return Results{as_double(attend::scaled_dot_product_attention(q1, k1, v1, o1))}; }},
      {"scaled_dot_product_attention with bias",
       [&] { return Results{as_double(attend::scaled_dot_product_attention(q1, k1, v1, bias, o1))}; }},
      {"scaled_dot_product_attention_with_lse",
       [&] {
         const auto r = attend::scaled_dot_product_attention_with_lse(q1, k1, v1, o1);
         return Results{as_double(r.out), as_double(r.lse)};
       }},
      {"scaled_dot_product_attention_into",
       [&] {
         Matrix<T> out(300, 48);
         attend::scaled_dot_product_attention_into(q1, k1, v1, out, o1);
         return Results{as_double(out)};
       }},
      {"attention_weights", [&] { return Results{as_double(attend::attention_weights(q1, k1, o1))}; }},
      {"attention_weights with bias", [&] { return Results{as_double(attend::attention_weights(q1, k1, bias, o1))}; }},
      {"multi_head_attention", [&] { return Results{as_double(attend::multi_head_attention(q, k, v, h, o))}; }},
      {"multi_head_attention (decode)",
       [&] { return Results{as_double(attend::multi_head_attention(qd, kd, vd, h, o))}; }},
      {"multi_head_attention_with_lse",
       [&] {
         const auto r = attend::multi_head_attention_with_lse(q, k, v, h, o);
         return Results{as_double(r.out), as_double(r.lse)};
       }},
      {"multi_head_attention_into",
       [&] {
         Matrix<T> out(300, 8 * 32);
         attend::multi_head_attention_into(q, k, v, h, out, o);
         return Results{as_double(out)};
       }},
      {"grouped_query_attention",
       [&] { return Results{as_double(attend::grouped_query_attention(q, k, v, 8, 4, o))}; }},
      {"multi_query_attention",
       [&] { return Results{as_double(attend::multi_query_attention(q, k.leftCols(64), v.leftCols(32), 8))}; }},
      {"merge_attention",
       [&] {
         const auto r = attend::merge_attention(parts());
         return Results{as_double(r.out), as_double(r.lse)};
       }},
      {"apply_sinks",
       [&] {
         const auto r = attend::apply_sinks(parts()[0], std::vector<double>(8, -1.0));
         return Results{as_double(r.out), as_double(r.lse)};
       }},
      {"softmax", [&] { return Results{as_double(attend::softmax(bias))}; }},
      {"apply_rope", [&] { return Results{as_double(attend::apply_rope(q, 64, 7))}; }},
      {"Linear", [&] { return Results{as_double(mha.q_proj(x))}; }},
      {"RMSNorm", [&] { return Results{as_double(norm(x))}; }},
      {"MultiHeadAttention::forward(x)", [&] { return Results{as_double(mha.forward(x, o))}; }},
      {"MultiHeadAttention::forward(x, context)", [&] { return Results{as_double(mha.forward(x, ctx))}; }},
      {"MultiHeadAttention::forward(x, cache)",
       [&] {
         attend::KVCache<T> cache;
         Results r{as_double(mha.forward(x.topRows(200), cache, o))};
         r.push_back(as_double(mha.forward(x.bottomRows(100), cache, o)));
         r.push_back(as_double(cache.keys()));
         r.push_back(as_double(cache.values()));
         return r;
       }},
      {"MultiHeadLatentAttention::forward(x)",
       [&] {
         return Results{as_double(mla.forward(x, o)), as_double(mla_q0.forward(x, o))};
       }},
      {"MultiHeadLatentAttention::forward(x, cache)",
       [&] {
         attend::LatentCache<T> cache, cache0;
         Results r{as_double(mla.forward(x.topRows(200), cache, o)), as_double(mla_q0.forward(x, cache0, o))};
         r.push_back(as_double(mla.forward(x.bottomRows(100), cache, o)));
         r.push_back(as_double(cache.entries()));
         return r;
       }},
      {"to_grouped",
       [&] {
         const auto g = attend::to_grouped(mha, 2);
         return Results{as_double(g.k_proj.weight), as_double(g.v_proj.weight), as_double(g.forward(x))};
       }},
      {"to_latent",
       [&] {
         const auto l = attend::to_latent(mha, 200);
         return Results{as_double(l.kv_a_proj_with_mqa.weight), as_double(l.kv_b_proj.weight), as_double(l.forward(x))};
       }},
      {"kv_singular_values", [&] { return Results{Matrix<double>(attend::kv_singular_values(mha))}; }},
      {"multi_head_attention_backward",
       [&] {
         const auto f = attend::multi_head_attention_with_lse(q, k, v, h, o);
         const auto g = attend::multi_head_attention_backward(q, k, v, f.out, f.lse, dout, h, o);
         return Results{as_double(g.dq), as_double(g.dk), as_double(g.dv)};
       }},
      {"scaled_dot_product_attention_backward",
       [&] {
         const auto f = attend::scaled_dot_product_attention_with_lse(q1, k1, v1, bias, o1);
         const auto g = attend::scaled_dot_product_attention_backward(q1, k1, v1, bias, f.out, f.lse, dout1, o1);
         return Results{as_double(g.dq), as_double(g.dk), as_double(g.dv)};
       }},
      {"MultiHeadAttention::backward",
       [&] {
         const auto g = mha.backward(x, dy, o), c = mha.backward(x, ctx, dy);
         return Results{
             as_double(g.dx), as_double(g.q_proj.weight), as_double(g.k_proj.weight), as_double(g.o_proj.bias),
             as_double(c.dx), as_double(c.dcontext),      as_double(c.v_proj.weight)};
       }},
      {"MultiHeadLatentAttention::backward",
       [&] {
         const auto g = mla.backward(x, dy, o), g0 = mla_q0.backward(x, dy, o);
         return Results{as_double(g.dx), as_double(g.kv_b_proj.weight), as_double(g.q_a_proj.weight), as_double(g0.dx),
                        as_double(g0.q_proj.weight)};
       }},
      {"reference::multi_head_attention",
       [&] { return Results{attend::reference::multi_head_attention(q.topRows(40), k, v, h, o)}; }},
      {"reference::attention_weights",
       [&] { return Results{attend::reference::attention_weights(q1.topRows(40), k1, o1)}; }},
  };
  const int saved = omp_get_max_threads();
  for (const auto& [name, call] : calls) {
    omp_set_num_threads(1);
    const Results one = call();
    omp_set_num_threads(2);
    const Results two = call();
    ASSERT_EQ(one.size(), two.size()) << name;
    for (std::size_t i = 0; i < one.size(); ++i) {
      const bool same = one[i].rows() == two[i].rows() && one[i].cols() == two[i].cols() &&
                        (one[i].array() == two[i].array() || (one[i].array().isNaN() && two[i].array().isNaN())).all();
      EXPECT_TRUE(same) << name << ", result " << i << ": max |difference| " << max_abs_diff(one[i], two[i]);
    }
  }
  omp_set_num_threads(saved);
}
#else
TEST(Parallel, ResultsAreBitwiseIdenticalForAnyThreadCount) { GTEST_SKIP() << "built without OpenMP"; }
TEST(Parallel, EveryPublicEntryPointGivesTheSameBitsAtOneAndTwoThreads) { GTEST_SKIP() << "built without OpenMP"; }
#endif

}  // namespace
