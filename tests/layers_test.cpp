// Layer-level properties that need no external reference: chunked decoding equals one causal pass for every
// layer kind, MLA's absorbed decode equals its decompressed form (and a wrong scale breaks that), head-count
// identities (GQA with kv == heads is MHA, MQA is GQA with one head), conversions, cache accounting, errors.
#include <gtest/gtest.h>

#include <attend/attend.hpp>
#include <random>
#include <string>
#include <vector>

#include "test_util.hpp"

using attend::Index;
using attend::Mask;
using attend::Matrix;
using attend::Options;
using attend::Vector;
using attend_test::expect_error;
using attend_test::max_abs_diff;
using attend_test::random_matrix;
using attend_test::random_mha;
using attend_test::randomize;

namespace {

template <class T>
attend::MultiHeadLatentAttention<T> random_mla(typename attend::MultiHeadLatentAttention<T>::Config c,
                                               std::mt19937& rng) {
  attend::MultiHeadLatentAttention<T> m(c);
  for (auto* lin : {&m.q_proj, &m.q_a_proj, &m.q_b_proj, &m.kv_a_proj_with_mqa, &m.kv_b_proj, &m.o_proj})
    if (lin->weight.size() != 0) randomize(*lin, rng, false);
  if (c.q_lora_rank > 0)
    m.q_a_layernorm.weight = Vector<T>(random_matrix<T>(c.q_lora_rank, 1, rng, 0.3)).array() + T(1);
  m.kv_a_layernorm.weight = Vector<T>(random_matrix<T>(c.kv_lora_rank, 1, rng, 0.3)).array() + T(1);
  return m;
}

Options causal() {
  Options o;
  o.mask = Mask::causal();
  return o;
}

// Feeds x through `step(chunk)` in the given chunk sizes and stacks the outputs.
template <class T, class Step>
Matrix<T> in_chunks(const Matrix<T>& x, std::vector<Index> sizes, Step step) {
  Matrix<T> out(x.rows(), x.cols());
  Index pos = 0;
  for (Index n : sizes) {
    out.middleRows(pos, n) = step(x.middleRows(pos, n));
    pos += n;
  }
  EXPECT_EQ(pos, x.rows());
  return out;
}

// Layers chain several products of width <= 64 with weights ~0.3: float keeps ~1e-5 relative to outputs ~1.
template <class T>
constexpr double layer_tol() {
  return std::is_same_v<T, float> ? 1e-4 : 1e-11;
}

template <class T>
class Layers : public ::testing::Test {};
TYPED_TEST_SUITE(Layers, attend_test::Scalars);

TYPED_TEST(Layers, ChunkedDecodingEqualsOneCausalPassForEveryHeadLayout) {
  using T = TypeParam;
  std::mt19937 rng(21);
  for (auto [heads, kv] : {std::pair{4, 4}, std::pair{4, 2}, std::pair{4, 1}}) {
    const auto layer = random_mha<T>(24, heads, kv, 10, rng);  // head_dim 10 != d_model / heads
    const auto x = random_matrix<T>(70, 24, rng);
    const Matrix<T> full = layer.forward(x, causal());
    for (std::vector<Index> sizes : {std::vector<Index>{70}, {1, 1, 1, 67}, {5, 64, 1}, {33, 37}}) {
      attend::KVCache<T> cache;
      const Matrix<T> chunked =
          in_chunks<T>(x, sizes, [&](const auto& c) { return layer.forward(c, cache, causal()); });
      EXPECT_LE(max_abs_diff(chunked, full), layer_tol<T>()) << heads << "/" << kv;
      EXPECT_EQ(cache.size(), 70);
    }
  }
}

TYPED_TEST(Layers, ForwardMatchesTheKernelOnProjections) {
  using T = TypeParam;
  std::mt19937 rng(22);
  const auto layer = random_mha<T>(16, 4, 2, 6, rng);
  const auto x = random_matrix<T>(9, 16, rng), ctx = random_matrix<T>(13, 16, rng);
  const auto proj = [](const attend::Linear<T>& l, const Matrix<T>& in) {
    Matrix<T> y = in * l.weight.transpose();
    y.rowwise() += l.bias.transpose();
    return y;
  };
  const Matrix<double> heads = attend::reference::multi_head_attention(proj(layer.q_proj, x), proj(layer.k_proj, ctx),
                                                                       proj(layer.v_proj, ctx), attend::Heads{4, 2});
  const Matrix<double> want = (heads * layer.o_proj.weight.template cast<double>().transpose()).rowwise() +
                              layer.o_proj.bias.template cast<double>().transpose();
  EXPECT_LE(max_abs_diff(layer.forward(x, ctx), want), layer_tol<T>());
}

TYPED_TEST(Layers, GqaWithAllKvHeadsIsMhaAndMqaIsGqaWithOneHead) {
  using T = TypeParam;
  std::mt19937 rng(23);
  const auto mha = random_mha<T>(32, 4, 4, 8, rng);
  const auto x = random_matrix<T>(11, 32, rng);
  // to_grouped with the same kv count is the same layer.
  EXPECT_LE(max_abs_diff(attend::to_grouped(mha, 4).forward(x, causal()), mha.forward(x, causal())), 0.0);
  // A GQA layer whose kv heads are equal copies behaves as the MQA layer with that one head.
  auto mqa = attend::to_grouped(mha, 1);
  attend::MultiHeadAttention<T> gqa(32, 4, 2, 8);
  gqa.q_proj = mqa.q_proj;
  gqa.o_proj = mqa.o_proj;
  for (auto [dst, src] : {std::pair{&gqa.k_proj, &mqa.k_proj}, std::pair{&gqa.v_proj, &mqa.v_proj}}) {
    dst->weight << src->weight, src->weight;
    dst->bias.resize(16);
    dst->bias << src->bias, src->bias;
  }
  EXPECT_LE(max_abs_diff(gqa.forward(x, causal()), mqa.forward(x, causal())), layer_tol<T>());
  EXPECT_EQ(mha.kv_cache_elements_per_token(), 2u * 4 * 8);
  EXPECT_EQ(gqa.kv_cache_elements_per_token(), 2u * 2 * 8);
  EXPECT_EQ(mqa.kv_cache_elements_per_token(), 2u * 1 * 8);
}

TYPED_TEST(Layers, ToGroupedMeanPoolsEachGroup) {
  using T = TypeParam;
  std::mt19937 rng(24);
  const auto mha = random_mha<T>(12, 6, 6, 4, rng);
  const auto gqa = attend::to_grouped(mha, 2);
  ASSERT_EQ(gqa.kv_heads, 2);
  for (int g = 0; g < 2; ++g) {
    const Matrix<T> mean =
        (mha.k_proj.weight.middleRows((3 * g) * 4, 4) + mha.k_proj.weight.middleRows((3 * g + 1) * 4, 4) +
         mha.k_proj.weight.middleRows((3 * g + 2) * 4, 4)) /
        T(3);
    EXPECT_LE(max_abs_diff(gqa.k_proj.weight.middleRows(g * 4, 4), mean), 1e-6);
  }
  EXPECT_EQ(gqa.q_proj.weight, mha.q_proj.weight);
}

struct MlaShape {
  int q_lora;
  int nope, rope, v;
  attend::RopeLayout layout;
};

TYPED_TEST(Layers, MlaAbsorbedDecodeEqualsDecompressedForward) {
  using T = TypeParam;
  std::mt19937 rng(25);
  for (MlaShape s : {MlaShape{0, 8, 4, 8, attend::RopeLayout::interleaved},
                     {12, 8, 4, 6, attend::RopeLayout::interleaved},
                     {12, 6, 8, 10, attend::RopeLayout::half_split},
                     {0, 0, 8, 4, attend::RopeLayout::half_split}}) {
    typename attend::MultiHeadLatentAttention<T>::Config c;
    c.d_model = 32;
    c.heads = 4;
    c.q_lora_rank = s.q_lora;
    c.kv_lora_rank = 10;
    c.qk_nope_head_dim = s.nope;
    c.qk_rope_head_dim = s.rope;
    c.v_head_dim = s.v;
    c.rope_layout = s.layout;
    const auto mla = random_mla<T>(c, rng);
    const auto x = random_matrix<T>(40, 32, rng);
    const Matrix<T> full = mla.forward(x, causal());
    attend::LatentCache<T> cache;
    const Matrix<T> decoded =
        in_chunks<T>(x, {1, 7, 1, 31}, [&](const auto& ch) { return mla.forward(ch, cache, causal()); });
    EXPECT_LE(max_abs_diff(decoded, full), layer_tol<T>()) << "q_lora " << s.q_lora << " nope " << s.nope;
    EXPECT_EQ(cache.size(), 40);
    EXPECT_EQ(cache.entries().cols(), Index(mla.kv_cache_elements_per_token()));
    EXPECT_EQ(mla.kv_cache_elements_per_token(), std::size_t(10 + s.rope));
  }
}

// The proof that the equality above can fail: the natural slip of scaling absorbed scores by the latent width
// 1/sqrt(kv_lora_rank + rope) instead of 1/sqrt(nope + rope) moves outputs far beyond the tolerance.
TYPED_TEST(Layers, WrongMlaScaleBreaksTheEquality) {
  using T = TypeParam;
  std::mt19937 rng(26);
  typename attend::MultiHeadLatentAttention<T>::Config c{32, 4, 0, 24, 8, 4, 8};
  auto mla = random_mla<T>(c, rng);
  mla.q_proj.weight *= T(4);  // sharper attention so the scale matters
  const auto x = random_matrix<T>(16, 32, rng);
  const Matrix<T> full = mla.forward(x, causal());
  Options wrong = causal();
  wrong.scale = 1.0 / std::sqrt(double(c.kv_lora_rank + c.qk_rope_head_dim));
  attend::LatentCache<T> cache;
  const Matrix<T> decoded = mla.forward(x, cache, wrong);
  EXPECT_GT(max_abs_diff(decoded, full), 1e3 * layer_tol<T>());
  cache.clear();
  EXPECT_LE(max_abs_diff(mla.forward(x, cache, causal()), full), layer_tol<T>());
}

TYPED_TEST(Layers, ToLatentIsExactAtFullRankAndTheBestFitBelow) {
  using T = TypeParam;
  std::mt19937 rng(27);
  for (auto [heads, kv] : {std::pair{4, 4}, std::pair{4, 2}}) {
    const auto mha = random_mha<T>(24, heads, kv, 6, rng);
    const auto x = random_matrix<T>(10, 24, rng);
    const Matrix<T> want = mha.forward(x, causal());
    const Eigen::VectorXd sv = attend::kv_singular_values(mha);
    const int full_rank = std::min<int>(24, 2 * kv * 6);
    for (int r = 1; r <= 24; ++r) {
      const auto mla = attend::to_latent(mha, r);
      const Matrix<T> got = mla.forward(x, causal());
      // Reconstruction error of the stacked weights is the root sum of squares of the dropped singular values.
      Eigen::MatrixXd stacked(heads * 12, 24);
      for (int h = 0; h < heads; ++h) {
        const int g = h / (heads / kv);
        stacked.middleRows(h * 12, 6) = mha.k_proj.weight.middleRows(g * 6, 6).template cast<double>();
        stacked.middleRows(h * 12 + 6, 6) = mha.v_proj.weight.middleRows(g * 6, 6).template cast<double>();
      }
      const Eigen::MatrixXd approx =
          mla.kv_b_proj.weight.template cast<double>() * mla.kv_a_proj_with_mqa.weight.template cast<double>();
      const double dropped = sv.size() > r ? sv.tail(sv.size() - r).norm() : 0.0;
      const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-9;
      EXPECT_NEAR((stacked - approx).norm(), dropped, tol) << "rank " << r;
      if (r >= full_rank) {
        EXPECT_LE(max_abs_diff(got, want), layer_tol<T>()) << "rank " << r;
        attend::LatentCache<T> cache;  // and its absorbed decode too
        EXPECT_LE(max_abs_diff(mla.forward(x, cache, causal()), want), layer_tol<T>());
      }
    }
    for (Index i = 1; i < sv.size(); ++i) EXPECT_LE(sv(i), sv(i - 1));  // largest first
    if (full_rank < sv.size()) {
      EXPECT_LT(sv(full_rank), 1e-5);  // a GQA stack repeats heads: its rank is 2 * kv_heads * head_dim
    }
  }
}

TYPED_TEST(Layers, CacheGrowsGeometrically) {
  using T = TypeParam;
  std::mt19937 rng(28);
  const auto layer = random_mha<T>(8, 2, 1, 4, rng);
  attend::KVCache<T> cache;
  Index reallocations = 0, last_capacity = 0;
  for (int t = 0; t < 1000; ++t) {
    layer.forward(random_matrix<T>(1, 8, rng), cache, causal());
    if (cache.capacity() != last_capacity) ++reallocations, last_capacity = cache.capacity();
  }
  EXPECT_EQ(cache.size(), 1000);
  EXPECT_LE(reallocations, 8);  // 16, 32, ..., 1024
  cache.clear();
  EXPECT_EQ(cache.size(), 0);
  cache.reserve(5000, 4, 4);
  EXPECT_GE(cache.capacity(), 5000);
}

// A cache moved from (construction or assignment) is empty and serves a layer of any size, exactly as a fresh
// cache; the cache moved to continues exactly where the source was. detail::RowStore's moves make the source
// empty; the layout the source remembered goes with its tokens.
TYPED_TEST(Layers, MovedFromCachesAreEmptyAndServeALayerOfAnySize) {
  using T = TypeParam;
  std::mt19937 rng(29);
  const auto a = random_mha<T>(16, 4, 2, 4, rng), b = random_mha<T>(16, 4, 4, 2, rng);  // both cache 8 + 8 features
  const auto x = random_matrix<T>(5, 16, rng), y = random_matrix<T>(3, 16, rng);
  attend::KVCache<T> source;
  a.forward(x, source, causal());
  attend::KVCache<T> copy = source;  // what the moved-to cache must continue as
  attend::KVCache<T> moved(std::move(source));
  EXPECT_EQ(moved.size(), 5);
  EXPECT_EQ(moved.kv_heads(), 2);
  EXPECT_EQ(a.forward(y, moved, causal()), a.forward(y, copy, causal()));
  // The moved-from cache: empty, no layout, and it takes b (other heads, same widths) as a fresh cache would.
  EXPECT_EQ(source.size(), 0);
  EXPECT_EQ(source.keys().rows(), 0);
  EXPECT_EQ(source.kv_heads(), 0);
  attend::KVCache<T> fresh;
  EXPECT_EQ(b.forward(x, source, causal()), b.forward(x, fresh, causal()));
  EXPECT_EQ(Matrix<T>(source.keys()), Matrix<T>(fresh.keys()));
  EXPECT_EQ(source.kv_heads(), 4);
  EXPECT_EQ(source.head_dim(), 2);
  // Move assignment, over a cache holding tokens of another layer.
  moved = std::move(source);
  EXPECT_EQ(moved.size(), 5);
  EXPECT_EQ(moved.kv_heads(), 4);
  EXPECT_EQ(source.size(), 0);
  attend::KVCache<T> fresh_a;
  EXPECT_EQ(a.forward(y, source, causal()), a.forward(y, fresh_a, causal()));
  expect_error([&] { a.forward(y, moved, causal()); }, {"expected 2 kv heads of head dim 4"});

  typename attend::MultiHeadLatentAttention<T>::Config c{16, 2, 0, 6, 4, 2, 4}, c2{16, 2, 0, 4, 4, 4, 4};
  const auto mla = random_mla<T>(c, rng), mla2 = random_mla<T>(c2, rng);  // both cache 8 features per token
  attend::LatentCache<T> lsource;
  mla.forward(x, lsource, causal());
  attend::LatentCache<T> lcopy = lsource;
  attend::LatentCache<T> lmoved(std::move(lsource));
  EXPECT_EQ(lmoved.size(), 5);
  EXPECT_EQ(mla.forward(y, lmoved, causal()), mla.forward(y, lcopy, causal()));
  EXPECT_EQ(lsource.size(), 0);
  attend::LatentCache<T> lfresh;
  EXPECT_EQ(mla2.forward(x, lsource, causal()), mla2.forward(x, lfresh, causal()));
  EXPECT_EQ(Matrix<T>(lsource.latent()), Matrix<T>(lfresh.latent()));
  lmoved = std::move(lsource);
  EXPECT_EQ(lmoved.size(), 5);
  EXPECT_EQ(Matrix<T>(lmoved.latent()).cols(), 4);
  EXPECT_EQ(lsource.size(), 0);
  EXPECT_NO_THROW(mla.forward(y, lsource, causal()));
  expect_error([&] { mla.forward(y, lmoved, causal()); }, {"cache holds latents of 4 and rope keys of 4"});
}

// The cache remembers the heads of the layer that filled it: a layer of other heads but the same widths is
// refused (2 kv heads of 4 and 4 kv heads of 2 both cache 8 + 8 features per token), and so is an append()
// that says another layout. An append() without a layout checks the widths only.
TEST(LayerErrors, CachesRefuseALayerOfOtherHeadsButTheSameWidths) {
  std::mt19937 rng(32);
  const auto a = random_mha<float>(16, 4, 2, 4, rng), b = random_mha<float>(16, 4, 4, 2, rng);
  const auto mqa = random_mha<float>(16, 4, 1, 8, rng);
  const Matrix<float> x = random_matrix<float>(3, 16, rng);
  attend::KVCache<float> cache;
  a.forward(x, cache);
  expect_error([&] { b.forward(x, cache); },
               {"MultiHeadAttention::forward: cache holds tokens of 2 kv heads of head dim 4 (8 features per token), "
                "expected 4 kv heads of head dim 2 (it was filled by a layer of other sizes)"});
  expect_error([&] { mqa.forward(x, cache); }, {"expected 1 kv heads of head dim 8"});
  EXPECT_EQ(cache.size(), 3);
  cache.clear();
  EXPECT_NO_THROW(b.forward(x, cache));  // a cleared cache serves any layer
  EXPECT_EQ(cache.kv_heads(), 4);
  // Filled without a layout: widths only.
  attend::KVCache<float> raw;
  raw.append(random_matrix<float>(2, 8, rng), random_matrix<float>(2, 8, rng));
  EXPECT_EQ(raw.kv_heads(), 0);
  EXPECT_NO_THROW(a.forward(x, raw));
  EXPECT_NO_THROW(b.forward(x, raw));
  EXPECT_EQ(raw.size(), 8);
}

TYPED_TEST(Layers, RmsNormAndLinear) {
  using T = TypeParam;
  Matrix<T> x(2, 2);
  x << 3, 4, 0, 0;
  attend::RMSNorm<T> norm{Vector<T>::Constant(2, T(2)), 0.0};
  const Matrix<T> y = norm(x);  // rms of (3,4) is sqrt(12.5)
  EXPECT_NEAR(y(0, 0), 2 * 3 / std::sqrt(12.5), 1e-6);
  EXPECT_NEAR(y(0, 1), 2 * 4 / std::sqrt(12.5), 1e-6);
  EXPECT_EQ(attend::RMSNorm<T>{}(x), x);  // empty weight: identity
  attend::Linear<T> lin{Matrix<T>::Identity(2, 2) * T(2), Vector<T>::Ones(2)};
  EXPECT_EQ(lin(x), (Matrix<T>(2, 2) << 7, 9, 1, 1).finished());
}

// ---------------------------------------------------------------------------------------------------------------

TEST(LayerErrors, ConstructorsRejectBadSizes) {
  expect_error([] { attend::MultiHeadAttention<float>(0, 2, 2, 4); }, {"MultiHeadAttention", "d_model is 0"});
  expect_error([] { attend::MultiHeadAttention<float>(8, 4, 3, 4); }, {"heads (4) is not a multiple of kv_heads (3)"});
  expect_error([] { attend::MultiHeadAttention<float>(8, 4, 0, 4); }, {"kv_heads is 0"});
  expect_error(
      [] {
        attend::MultiHeadLatentAttention<float>({16, 2, 0, 8, 4, 3, 4});
      },
      {"MultiHeadLatentAttention", "qk_rope_head_dim is 3", "even"});
  expect_error([] { attend::MultiHeadLatentAttention<float>({16, 2, 0, 0, 4, 2, 4}); }, {"kv_lora_rank is 0"});
}

TEST(LayerErrors, ForwardRejectsWrongWeightsInputsAndCaches) {
  std::mt19937 rng(30);
  auto layer = random_mha<float>(8, 2, 1, 4, rng);
  const Matrix<float> x = random_matrix<float>(3, 8, rng);
  expect_error([&] { layer.forward(random_matrix<float>(3, 7, rng)); },
               {"MultiHeadAttention::forward", "x is [3, 7], expected 8 columns"});
  expect_error([&] { layer.forward(x, random_matrix<float>(5, 6, rng)); }, {"context is [5, 6]"});
  auto bad = layer;
  bad.k_proj.weight = Matrix<float>::Zero(8, 8);
  expect_error([&] { bad.forward(x); }, {"k_proj.weight is [8, 8], expected [4, 8]"});
  bad = layer;
  bad.o_proj.bias = Vector<float>::Zero(3);
  expect_error([&] { bad.forward(x); }, {"o_proj.bias has 3 entries"});
  // A cache filled by a layer of other sizes is refused and left as it was.
  attend::KVCache<float> cache;
  layer.forward(x, cache);
  const auto other = random_mha<float>(8, 2, 2, 4, rng);
  expect_error([&] { other.forward(x, cache); }, {"cache holds keys of 4", "expected 8 and 8"});
  EXPECT_EQ(cache.size(), 3);
  Options o;
  o.softcap = -1;
  expect_error([&] { layer.forward(x, cache, o); }, {"options.softcap"});
  EXPECT_EQ(cache.size(), 3);

  typename attend::MultiHeadLatentAttention<float>::Config c{8, 2, 0, 4, 4, 2, 4};
  auto mla = random_mla<float>(c, rng);
  attend::LatentCache<float> lc;
  mla.forward(x, lc);
  typename attend::MultiHeadLatentAttention<float>::Config c2{8, 2, 0, 6, 4, 2, 4};
  const auto mla2 = random_mla<float>(c2, rng);
  expect_error([&] { mla2.forward(x, lc); }, {"cache holds latents of 4", "kv_lora_rank 6"});
  EXPECT_EQ(lc.size(), 3);
  auto bad_mla = mla;
  bad_mla.kv_a_layernorm.weight = Vector<float>::Ones(5);
  expect_error([&] { bad_mla.forward(x); }, {"kv_a_layernorm.weight has 5 entries"});
  bad_mla = mla;
  bad_mla.kv_b_proj.weight = Matrix<float>::Zero(16, 5);
  expect_error([&] { bad_mla.forward(x, lc); }, {"kv_b_proj.weight is [16, 5], expected [16, 4]"});
  EXPECT_EQ(lc.size(), 3);
}

TEST(LayerErrors, ConversionsRejectImpossibleArguments) {
  std::mt19937 rng(31);
  const auto mha = random_mha<double>(8, 4, 4, 2, rng);
  expect_error([&] { attend::to_grouped(mha, 3); }, {"to_grouped", "kv_heads is 3"});
  expect_error([&] { attend::to_grouped(mha, 0); }, {"to_grouped", "kv_heads is 0"});
  expect_error([&] { attend::to_latent(mha, 0); }, {"to_latent", "kv_lora_rank is 0", "expected 1..8"});
  expect_error([&] { attend::to_latent(mha, 9); }, {"kv_lora_rank is 9"});
}

}  // namespace
