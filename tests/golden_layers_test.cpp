// Golden tests of the layer level against PyTorch: tests/data/layers.txt, written by
// tests/reference/generate_layers.py in float64 from
//   mha_layer   torch.nn.MultiheadAttention (packed in_proj split into q/k/v, biases, self / causal / cross)
//   gqa_layer   Llama-style GQA / MQA in torch ops (repeat_kv, head_dim != d_model / heads, with/without bias)
//   mla_layer   DeepSeek-V2 MLA equations in torch ops (query compression or not, RMSNorm, both RoPE
//               layouts, v_head_dim != qk_nope_head_dim, two rope thetas)
//   rope        RoPE alone (DeepSeek/Meta complex form for interleaved, HF rotate_half for half_split)
//   to_grouped  mean-pooled k/v weights and biases (torch .view().mean()) and the pooled layer's forward
//   svd         torch.linalg.svdvals of the per-head interleaved [W_k; W_v], its best rank-r fit, and the
//               source layer's forward
// Every case runs for float and double.  Every causal self-attention case is also fed through a fresh
// KVCache / LatentCache in chunks (1, 3, rest and one token at a time) with Mask::causal(): the rows
// must equal the same reference output, which checks MLA's absorbed latent decode against PyTorch's
// decompressed equations.
//
// Tolerances
// ----------
// Errors are measured as max |got - expected| relative to max |expected| (outputs are O(1): weights have
// std 1/sqrt(fan_in), inputs std 1, so every intermediate activation and score is O(1) too).
//
//   double: 1e-10.  attend and the reference compute in double from the very same inputs (the file holds
//           them exactly); they differ only in summation order and in the softmax/RoPE formulas, i.e. a
//           few ulps (~1e-16) per operation, amplified by a chain of ~5 products of <= 60 terms, an
//           RMSNorm and a softmax with O(1) scores: ~1e-14 at worst.  1e-10 leaves four orders of
//           magnitude for reordered or blocked implementations.  A layer computed partly in float would
//           be ~1e-7 off and fail.
//   float:  1e-4.   The inputs are rounded to float (u = 6e-8) and every stage accumulates in float:
//           ~sqrt(n) u per dot product, the same through the chain, times the softmax's sensitivity
//           (<= 2 max|d score| * max|v|) -> a few 1e-6 in practice.  1e-4 leaves a margin of ~10-100.
//   Singular values: relative to the largest one, 1e-10 (double) and 1e-5 (float: the float weights are
//           the rounded double ones, which moves each singular value by <= ||dW||_2 ~ 1e-7 sigma_max).
//
// Both are far below what a real bug does: a wrong RoPE pairing, start position, scale
// (1/sqrt(kv_lora_rank + rope) for MLA, 1/sqrt(d_model) for MHA), mask or kv-head mapping moves the
// outputs by more than 1e-2 relative; the test ErrorsThatMustBeCaught checks exactly that on these
// cases, so these tolerances (1e-4 at most) can fail.  Run with ATTEND_GOLDEN_VERBOSE=1 to see each
// comparison's relative error.

#include <gtest/gtest.h>

#include <algorithm>
#include <attend/attend.hpp>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <map>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include "golden.hpp"

namespace {

using attend_test::GoldenCase;

const std::vector<GoldenCase>& all_cases() {
  static const std::vector<GoldenCase> cases = attend_test::load_golden("layers.txt");
  return cases;
}

std::vector<const GoldenCase*> cases_of(const std::string& kind) {
  std::vector<const GoldenCase*> out;
  for (const GoldenCase& c : all_cases())
    if (c.kind == kind) out.push_back(&c);
  return out;
}

template <class T>
std::string type_tag() {
  return std::is_same<T, float>::value ? "float" : "double";
}

// ---------------------------------------------------------------------------------------------
// Tolerances and comparison (see the comment at the top)
// ---------------------------------------------------------------------------------------------

template <class T>
double rel_tol() {
  return std::is_same<T, float>::value ? 1e-4 : 1e-10;
}

template <class T>
double sv_rel_tol() {
  return std::is_same<T, float>::value ? 1e-5 : 1e-10;
}

struct Worst {
  double ratio = 0;
  std::string where;
  void update(double r, const std::string& w) {
    if (r > ratio) ratio = r, where = w;
  }
  void print(const std::string& test) const {
    std::cout << "[ golden   ] " << test << ": worst error/tolerance = " << ratio
              << (where.empty() ? "" : " (" + where + ")") << "\n";
  }
};

double max_abs(const Eigen::MatrixXd& m) { return m.size() == 0 ? 0.0 : m.cwiseAbs().maxCoeff(); }

// max |got - want| / max |want| (infinite on a shape mismatch or NaN).
double rel_error(const Eigen::MatrixXd& got, const Eigen::MatrixXd& want) {
  if (got.rows() != want.rows() || got.cols() != want.cols()) return std::numeric_limits<double>::infinity();
  if (want.size() == 0) return 0;
  double err = 0;
  for (Eigen::Index i = 0; i < got.size(); ++i) {
    const double e = std::abs(got(i) - want(i));
    if (!(e <= err)) err = e;  // NaN propagates
  }
  return err / std::max(max_abs(want), std::numeric_limits<double>::min());
}

void expect_close(const Eigen::MatrixXd& got, const Eigen::MatrixXd& want, double rel_tol, const std::string& what,
                  Worst& worst) {
  ASSERT_EQ(got.rows(), want.rows()) << what << ": rows";
  ASSERT_EQ(got.cols(), want.cols()) << what << ": cols";
  EXPECT_TRUE(got.allFinite()) << what << ": non-finite value in the result";
  const double rel = rel_error(got, want);
  Eigen::Index er = 0, ec = 0;
  if (got.size() > 0) (got - want).cwiseAbs().maxCoeff(&er, &ec);
  EXPECT_LE(rel, rel_tol) << what << ": max |got - expected| / max |expected| = " << rel << "; worst at (" << er << ", "
                          << ec << "): got " << (got.size() ? got(er, ec) : 0.0) << ", expected "
                          << (want.size() ? want(er, ec) : 0.0);
  if (std::isfinite(rel)) worst.update(rel / rel_tol, what);
  if (std::getenv("ATTEND_GOLDEN_VERBOSE") != nullptr)
    std::cout << "[ golden   ]   " << what << ": relative error " << rel << ", tolerance " << rel_tol << "\n";
}

template <class M>
Eigen::MatrixXd to_double(const M& m) {
  return m.template cast<double>();
}

// ---------------------------------------------------------------------------------------------
// Building attend layers from a case
// ---------------------------------------------------------------------------------------------

template <class T>
attend::Matrix<T> mat(const GoldenCase& c, const std::string& key) {
  return c.at(key).cast<T>();
}

// A 1 x n row of the file (bias, norm weight, singular values) as a vector.
template <class T>
attend::Vector<T> vec(const GoldenCase& c, const std::string& key) {
  const Eigen::MatrixXd& m = c.at(key);
  if (m.rows() != 1) throw std::runtime_error("golden case " + c.name + ": '" + key + "' is not a 1 x n row");
  return m.row(0).transpose().cast<T>();
}

template <class T>
attend::Linear<T> linear(const GoldenCase& c, const std::string& prefix) {
  attend::Linear<T> lin;
  lin.weight = mat<T>(c, prefix + ".weight");
  if (c.has(prefix + ".bias")) lin.bias = vec<T>(c, prefix + ".bias");
  return lin;
}

template <class T>
attend::MultiHeadAttention<T> make_mha(const GoldenCase& c) {
  attend::MultiHeadAttention<T> layer(c.integer("d_model"), c.integer("heads"), c.integer("kv_heads"),
                                      c.integer("head_dim"));
  layer.q_proj = linear<T>(c, "q_proj");
  layer.k_proj = linear<T>(c, "k_proj");
  layer.v_proj = linear<T>(c, "v_proj");
  layer.o_proj = linear<T>(c, "o_proj");
  return layer;
}

attend::RopeLayout layout_of(const std::string& s) {
  if (s == "interleaved") return attend::RopeLayout::interleaved;
  if (s == "half_split") return attend::RopeLayout::half_split;
  throw std::runtime_error("unknown rope layout '" + s + "'");
}

attend::RopeLayout other_layout(attend::RopeLayout l) {
  return l == attend::RopeLayout::interleaved ? attend::RopeLayout::half_split : attend::RopeLayout::interleaved;
}

template <class T>
typename attend::MultiHeadLatentAttention<T>::Config mla_config(const GoldenCase& c) {
  typename attend::MultiHeadLatentAttention<T>::Config cfg;
  cfg.d_model = c.integer("d_model");
  cfg.heads = c.integer("heads");
  cfg.q_lora_rank = c.integer("q_lora_rank");
  cfg.kv_lora_rank = c.integer("kv_lora_rank");
  cfg.qk_nope_head_dim = c.integer("qk_nope_head_dim");
  cfg.qk_rope_head_dim = c.integer("qk_rope_head_dim");
  cfg.v_head_dim = c.integer("v_head_dim");
  cfg.rope_theta = c.number("rope_theta");
  cfg.rope_layout = layout_of(c.text("rope_layout"));
  return cfg;
}

template <class T>
attend::MultiHeadLatentAttention<T> make_mla(const GoldenCase& c) {
  attend::MultiHeadLatentAttention<T> layer(mla_config<T>(c));
  const double eps = c.number("rms_eps");
  if (layer.config.q_lora_rank == 0) {
    layer.q_proj = linear<T>(c, "q_proj");
  } else {
    layer.q_a_proj = linear<T>(c, "q_a_proj");
    layer.q_a_layernorm.weight = vec<T>(c, "q_a_layernorm.weight");
    layer.q_a_layernorm.eps = eps;
    layer.q_b_proj = linear<T>(c, "q_b_proj");
  }
  layer.kv_a_proj_with_mqa = linear<T>(c, "kv_a_proj_with_mqa");
  layer.kv_a_layernorm.weight = vec<T>(c, "kv_a_layernorm.weight");
  layer.kv_a_layernorm.eps = eps;
  layer.kv_b_proj = linear<T>(c, "kv_b_proj");
  layer.o_proj = linear<T>(c, "o_proj");
  return layer;
}

bool is_causal_self(const GoldenCase& c) { return c.mask == "causal" && !c.has("context"); }

// Chunk patterns for the cache checks: 1, 3, rest; and one token at a time.
std::vector<std::vector<Eigen::Index>> chunkings(Eigen::Index L) {
  std::vector<Eigen::Index> a;
  for (Eigen::Index done = 0, i = 0; done < L; ++i) {
    const Eigen::Index n = std::min<Eigen::Index>(i == 0 ? 1 : i == 1 ? 3 : L, L - done);
    a.push_back(n);
    done += n;
  }
  return {a, std::vector<Eigen::Index>(static_cast<std::size_t>(L), 1)};
}

std::string describe(const std::vector<Eigen::Index>& chunks) {
  if (chunks.size() > 3) return "one token at a time";
  std::string s = "chunks";
  for (Eigen::Index n : chunks) s += " " + std::to_string(n);
  return s;
}

// Feeds x through a fresh cache in the given chunks and returns the concatenated rows.
template <class T, class Layer, class Cache>
Eigen::MatrixXd decode_in_chunks(const Layer& layer, const attend::Matrix<T>& x,
                                 const std::vector<Eigen::Index>& chunks, Cache& cache, const attend::Options& opts) {
  Eigen::MatrixXd out(x.rows(), x.cols());
  Eigen::Index done = 0;
  for (Eigen::Index n : chunks) {
    const attend::Matrix<T> rows = layer.forward(x.middleRows(done, n), cache, opts);
    EXPECT_EQ(rows.rows(), n);
    EXPECT_EQ(rows.cols(), x.cols());
    if (rows.rows() != n || rows.cols() != x.cols()) return Eigen::MatrixXd::Constant(x.rows(), x.cols(), NAN);
    out.middleRows(done, n) = to_double(rows);
    done += n;
    EXPECT_EQ(cache.size(), done);
  }
  return out;
}

// Chunked decoding through a fresh KVCache equals the reference's causal forward.
template <class T>
void check_kv_cache(const attend::MultiHeadAttention<T>& layer, const GoldenCase& c, Worst& worst) {
  const attend::Matrix<T> x = mat<T>(c, "x");
  for (const auto& chunks : chunkings(x.rows())) {
    attend::KVCache<T> cache;
    const Eigen::MatrixXd got = decode_in_chunks<T>(layer, x, chunks, cache, attend_test::options_of(c));
    expect_close(got, c.at("out"), rel_tol<T>(), c.name + " KVCache, " + describe(chunks), worst);
  }
  EXPECT_EQ(layer.kv_cache_elements_per_token(),
            std::size_t(2) * std::size_t(layer.kv_heads) * std::size_t(layer.head_dim));
}

// Chunked decoding through a fresh LatentCache (absorbed, latent-space attention) equals the reference.
template <class T>
void check_latent_cache(const attend::MultiHeadLatentAttention<T>& layer, const GoldenCase& c, Worst& worst,
                        const std::string& tag = "") {
  const attend::Matrix<T> x = mat<T>(c, "x");
  for (const auto& chunks : chunkings(x.rows())) {
    attend::LatentCache<T> cache;
    const Eigen::MatrixXd got = decode_in_chunks<T>(layer, x, chunks, cache, attend_test::options_of(c));
    expect_close(got, c.at("out"), rel_tol<T>(), c.name + tag + " LatentCache, " + describe(chunks), worst);
  }
  EXPECT_EQ(layer.kv_cache_elements_per_token(),
            std::size_t(layer.config.kv_lora_rank) + std::size_t(layer.config.qk_rope_head_dim));
}

// ---------------------------------------------------------------------------------------------
// Runners
// ---------------------------------------------------------------------------------------------

template <class T>
void run_attention_layers(const std::string& kind, Worst& worst) {
  const auto cases = cases_of(kind);
  ASSERT_FALSE(cases.empty());
  for (const GoldenCase* c : cases) {
    SCOPED_TRACE("case " + c->name + " [" + type_tag<T>() + "]");
    const attend::MultiHeadAttention<T> layer = make_mha<T>(*c);
    const attend::Options opts = attend_test::options_of(*c);
    const attend::Matrix<T> x = mat<T>(*c, "x");
    const Eigen::MatrixXd got = c->has("context") ? to_double(layer.forward(x, mat<T>(*c, "context"), opts))
                                                  : to_double(layer.forward(x, opts));
    expect_close(got, c->at("out"), rel_tol<T>(), c->name + " forward", worst);
    if (is_causal_self(*c)) check_kv_cache(layer, *c, worst);
  }
}

template <class T>
void run_mla(Worst& worst) {
  const auto cases = cases_of("mla_layer");
  ASSERT_FALSE(cases.empty());
  for (const GoldenCase* c : cases) {
    SCOPED_TRACE("case " + c->name + " [" + type_tag<T>() + "]");
    const attend::MultiHeadLatentAttention<T> layer = make_mla<T>(*c);
    const attend::Matrix<T> x = mat<T>(*c, "x");
    const Eigen::MatrixXd got = to_double(layer.forward(x, attend_test::options_of(*c)));
    expect_close(got, c->at("out"), rel_tol<T>(), c->name + " forward (decompressed)", worst);
    if (is_causal_self(*c)) check_latent_cache(layer, *c, worst);
  }
}

template <class T>
void run_rope(Worst& worst) {
  const auto cases = cases_of("rope");
  ASSERT_FALSE(cases.empty());
  for (const GoldenCase* c : cases) {
    SCOPED_TRACE("case " + c->name + " [" + type_tag<T>() + "]");
    const attend::Matrix<T> x = mat<T>(*c, "x");
    const int d = c->integer("head_dim"), start = c->integer("start");
    const double theta = c->number("rope_theta");
    const attend::RopeLayout layout = layout_of(c->text("rope_layout"));
    const Eigen::MatrixXd& want = c->at("out");
    expect_close(to_double(attend::apply_rope(x, d, start, theta, layout)), want, rel_tol<T>(), c->name, worst);
    // Rows k.. on their own, starting at position start + k, are the same rows.
    const Eigen::Index k = x.rows() / 2;
    expect_close(to_double(attend::apply_rope(x.bottomRows(x.rows() - k), d, start + k, theta, layout)),
                 want.bottomRows(want.rows() - k), rel_tol<T>(), c->name + " (rows from " + std::to_string(k) + ")",
                 worst);
  }
}

template <class T>
void run_to_grouped(Worst& worst) {
  const auto cases = cases_of("to_grouped");
  ASSERT_FALSE(cases.empty());
  for (const GoldenCase* c : cases) {
    SCOPED_TRACE("case " + c->name + " [" + type_tag<T>() + "]");
    const attend::MultiHeadAttention<T> src = make_mha<T>(*c);
    const int target = c->integer("target_kv_heads");
    const attend::MultiHeadAttention<T> g = attend::to_grouped(src, target);
    EXPECT_EQ(g.d_model, src.d_model);
    EXPECT_EQ(g.heads, src.heads);
    EXPECT_EQ(g.kv_heads, target);
    EXPECT_EQ(g.head_dim, src.head_dim);
    const double tol = rel_tol<T>();
    expect_close(to_double(g.k_proj.weight), c->at("expected.k_proj.weight"), tol, c->name + " k_proj.weight", worst);
    expect_close(to_double(g.k_proj.bias.transpose()), c->at("expected.k_proj.bias"), tol, c->name + " k_proj.bias",
                 worst);
    expect_close(to_double(g.v_proj.weight), c->at("expected.v_proj.weight"), tol, c->name + " v_proj.weight", worst);
    expect_close(to_double(g.v_proj.bias.transpose()), c->at("expected.v_proj.bias"), tol, c->name + " v_proj.bias",
                 worst);
    // Queries and output projection are copied.
    EXPECT_TRUE(g.q_proj.weight == src.q_proj.weight && g.q_proj.bias == src.q_proj.bias);
    EXPECT_TRUE(g.o_proj.weight == src.o_proj.weight && g.o_proj.bias == src.o_proj.bias);
    // The pooled layer's forward against PyTorch's GQA forward with the pooled weights, and its decoding.
    const Eigen::MatrixXd got = to_double(g.forward(mat<T>(*c, "x"), attend_test::options_of(*c)));
    expect_close(got, c->at("out"), tol, c->name + " pooled forward", worst);
    check_kv_cache(g, *c, worst);
  }
}

template <class T>
void run_svd(Worst& worst) {
  const auto cases = cases_of("svd");
  ASSERT_FALSE(cases.empty());
  for (const GoldenCase* c : cases) {
    SCOPED_TRACE("case " + c->name + " [" + type_tag<T>() + "]");
    const attend::MultiHeadAttention<T> src = make_mha<T>(*c);
    const attend::Matrix<T> x = mat<T>(*c, "x");
    const attend::Options opts = attend_test::options_of(*c);
    const Eigen::MatrixXd& want = c->at("out");

    // The source layer itself against the PyTorch forward.
    expect_close(to_double(src.forward(x, opts)), want, rel_tol<T>(), c->name + " source forward", worst);

    // Singular values, largest first.
    const Eigen::VectorXd sv = attend::kv_singular_values(src);
    expect_close(sv.transpose(), c->at("singular_values"), sv_rel_tol<T>(), c->name + " singular values", worst);

    // With kv_lora_rank >= rank([W_k; W_v]) (the true rank, and the largest allowed rank) the MLA layer
    // is the source layer: decompressed forward and absorbed latent decoding both give the PyTorch output.
    const int full_rank = c->integer("full_rank");
    const int max_rank = static_cast<int>(c->at("singular_values").cols());
    for (int r : {full_rank, max_rank}) {
      const std::string tag = " to_latent(rank " + std::to_string(r) + ")";
      const attend::MultiHeadLatentAttention<T> mla = attend::to_latent(src, r);
      EXPECT_EQ(mla.config.kv_lora_rank, r);
      EXPECT_EQ(mla.kv_cache_elements_per_token(), std::size_t(r));
      expect_close(to_double(mla.forward(x, opts)), want, rel_tol<T>(), c->name + tag + " forward", worst);
      check_latent_cache(mla, *c, worst, tag);
    }

    // A smaller rank: kv_b_proj * kv_a_proj_with_mqa is the best rank-r fit of the stack (Eckart-Young).
    const int rank = c->integer("rank");
    const attend::MultiHeadLatentAttention<T> low = attend::to_latent(src, rank);
    const Eigen::MatrixXd fit = to_double(low.kv_b_proj.weight) * to_double(low.kv_a_proj_with_mqa.weight);
    expect_close(fit, c->at("best_rank_fit"), sv_rel_tol<T>(),
                 c->name + " rank-" + std::to_string(rank) + " fit of [W_k; W_v]", worst);
  }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

template <class T>
class GoldenLayers : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;

TYPED_TEST_SUITE(GoldenLayers, Scalars);

TYPED_TEST(GoldenLayers, MultiHeadAttentionVsTorchMultiheadAttention) {
  Worst worst;
  run_attention_layers<TypeParam>("mha_layer", worst);
  worst.print(type_tag<TypeParam>() + " mha_layer");
}

TYPED_TEST(GoldenLayers, GroupedAndMultiQueryVsLlamaStyleTorch) {
  Worst worst;
  run_attention_layers<TypeParam>("gqa_layer", worst);
  worst.print(type_tag<TypeParam>() + " gqa_layer");
}

TYPED_TEST(GoldenLayers, LatentAttentionVsDeepSeekV2Equations) {
  Worst worst;
  run_mla<TypeParam>(worst);
  worst.print(type_tag<TypeParam>() + " mla_layer");
}

TYPED_TEST(GoldenLayers, Rope) {
  Worst worst;
  run_rope<TypeParam>(worst);
  worst.print(type_tag<TypeParam>() + " rope");
}

TYPED_TEST(GoldenLayers, ToGroupedPoolsLikeTorch) {
  Worst worst;
  run_to_grouped<TypeParam>(worst);
  worst.print(type_tag<TypeParam>() + " to_grouped");
}

TYPED_TEST(GoldenLayers, ToLatentSingularValuesAndExactness) {
  Worst worst;
  run_svd<TypeParam>(worst);
  worst.print(type_tag<TypeParam>() + " svd / to_latent");
}

// The tolerances can fail: the usual bugs move the outputs of these very cases by far more than the float
// tolerance (1e-4 relative), let alone the double one (1e-10).
constexpr double kBug = 1e-2;  // >= 100 x the float tolerance

TEST(GoldenLayersSensitivity, ErrorsThatMustBeCaught) {
  auto expect_caught = [&](const Eigen::MatrixXd& wrong, const Eigen::MatrixXd& want, const std::string& what,
                           double threshold = kBug) {
    const double rel = rel_error(wrong, want);
    EXPECT_GT(rel, threshold) << what << " is not caught: relative change only " << rel;
    if (std::getenv("ATTEND_GOLDEN_VERBOSE") != nullptr)
      std::cout << "[ golden   ]   bug '" << what << "' moves the output by " << rel << " (relative)\n";
  };
  int checked = 0;
  for (const GoldenCase* c : cases_of("mla_layer")) {
    SCOPED_TRACE("case " + c->name);
    const auto layer = make_mla<double>(*c);
    const attend::Matrix<double> x = mat<double>(*c, "x");
    const Eigen::MatrixXd& want = c->at("out");
    attend::Options wrong_scale = attend_test::options_of(*c);
    wrong_scale.scale = 1.0 / std::sqrt(double(layer.config.kv_lora_rank + layer.config.qk_rope_head_dim));
    expect_caught(layer.forward(x, wrong_scale), want, c->name + ": scale 1/sqrt(kv_lora_rank + rope)");
    if (is_causal_self(*c)) {
      attend::LatentCache<double> cache;
      expect_caught(layer.forward(x, cache, wrong_scale), want,
                    c->name + ": LatentCache with scale 1/sqrt(kv_lora_rank + rope)");
    }
    auto swapped = layer;
    swapped.config.rope_layout = other_layout(layer.config.rope_layout);
    expect_caught(swapped.forward(x, attend_test::options_of(*c)), want, c->name + ": other RoPE layout");
    // A wrong theta is subtler at these short lengths (pair 0 turns the same for every theta, and with 2-4
    // pairs the others turn by small angles): it moves the outputs by 5e-3..3e-2, still >= 10 x the float
    // tolerance.
    auto theta = layer;
    theta.config.rope_theta = layer.config.rope_theta == 10000 ? 500000 : 10000;
    expect_caught(theta.forward(x, attend_test::options_of(*c)), want, c->name + ": other rope theta", 1e-3);
    checked += 4;
  }
  for (const GoldenCase* c : cases_of("rope")) {
    SCOPED_TRACE("case " + c->name);
    const attend::Matrix<double> x = mat<double>(*c, "x");
    const int d = c->integer("head_dim"), start = c->integer("start");
    const double theta = c->number("rope_theta");
    const attend::RopeLayout layout = layout_of(c->text("rope_layout"));
    const Eigen::MatrixXd& want = c->at("out");
    expect_caught(attend::apply_rope(x, d, start, theta, other_layout(layout)), want, c->name + ": other layout");
    expect_caught(attend::apply_rope(x, d, start + 1, theta, layout), want, c->name + ": start off by one");
    checked += 2;
  }
  for (const std::string kind : {"mha_layer", "gqa_layer"}) {
    for (const GoldenCase* c : cases_of(kind)) {
      SCOPED_TRACE("case " + c->name);
      const auto layer = make_mha<double>(*c);
      const attend::Matrix<double> x = mat<double>(*c, "x");
      const Eigen::MatrixXd& want = c->at("out");
      auto run = [&](const attend::MultiHeadAttention<double>& l, const attend::Options& o) -> Eigen::MatrixXd {
        return c->has("context") ? l.forward(x, mat<double>(*c, "context"), o) : l.forward(x, o);
      };
      attend::Options o = attend_test::options_of(*c);
      o.mask = c->mask == "causal" ? attend::Mask::none() : attend::Mask::causal();
      expect_caught(run(layer, o), want, c->name + (c->mask == "causal" ? ": no mask" : ": causal mask"));
      attend::Options s = attend_test::options_of(*c);
      s.scale = 1.0 / std::sqrt(double(layer.d_model));
      if (layer.head_dim != layer.d_model) expect_caught(run(layer, s), want, c->name + ": scale 1/sqrt(d_model)");
      // Wrong kv-head mapping for GQA: query head h reading kv head h % G instead of h / (H/G). Emulated by
      // permuting the query heads (q_proj rows and o_proj columns together), which leaves MHA unchanged.
      const int H = layer.heads, G = layer.kv_heads, hd = layer.head_dim;
      if (G > 1 && G < H) {
        auto perm = layer;
        const int per = H / G;
        for (int h = 0; h < H; ++h) {
          const int to = (h % G) * per + h / G;  // head h's weights now sit in group h % G
          perm.q_proj.weight.middleRows(to * hd, hd) = layer.q_proj.weight.middleRows(h * hd, hd);
          if (layer.q_proj.bias.size()) perm.q_proj.bias.segment(to * hd, hd) = layer.q_proj.bias.segment(h * hd, hd);
          perm.o_proj.weight.middleCols(to * hd, hd) = layer.o_proj.weight.middleCols(h * hd, hd);
        }
        expect_caught(run(perm, attend_test::options_of(*c)), want, c->name + ": kv head h % G");
      }
      checked += 1;
    }
  }
  EXPECT_GE(checked, 50);
}

// The data file is present and covers every layer kind.
TEST(GoldenLayersFile, CasesPerKindAndCoverage) {
  std::map<std::string, int> per_kind;
  for (const GoldenCase& c : all_cases()) ++per_kind[c.kind];
  std::cout << "[ golden   ] layers.txt: " << all_cases().size() << " cases:";
  for (const auto& kv : per_kind) std::cout << " " << kv.first << " " << kv.second;
  std::cout << "\n";
  EXPECT_EQ(per_kind["mha_layer"], 9);
  EXPECT_EQ(per_kind["gqa_layer"], 8);
  EXPECT_EQ(per_kind["mla_layer"], 9);
  EXPECT_EQ(per_kind["rope"], 8);
  EXPECT_EQ(per_kind["to_grouped"], 3);
  EXPECT_EQ(per_kind["svd"], 4);
  EXPECT_EQ(all_cases().size(), 41u);

  int mha_self = 0, mha_causal = 0, mha_cross = 0, mqa = 0, gqa = 0, hd_ne = 0, biased = 0, unbiased = 0;
  for (const std::string kind : {"mha_layer", "gqa_layer"})
    for (const GoldenCase* c : cases_of(kind)) {
      const int H = c->integer("heads"), G = c->integer("kv_heads"), hd = c->integer("head_dim");
      if (kind == "mha_layer") {
        EXPECT_EQ(H, G) << c->name;
        EXPECT_EQ(hd * H, c->integer("d_model")) << c->name;
        mha_self += !c->has("context") && c->mask == "none";
        mha_causal += is_causal_self(*c);
        mha_cross += c->has("context");
      } else {
        mqa += G == 1;
        gqa += G > 1 && G < H;
        hd_ne += hd * H != c->integer("d_model");
      }
      (c->has("k_proj.bias") ? biased : unbiased) += 1;
    }
  EXPECT_GE(mha_self, 1);
  EXPECT_GE(mha_causal, 2);
  EXPECT_GE(mha_cross, 2);
  EXPECT_GE(mqa, 2);
  EXPECT_GE(gqa, 3);
  EXPECT_GE(hd_ne, 1);
  EXPECT_GE(biased, 1);
  EXPECT_GE(unbiased, 1);

  // MLA: both layouts x with/without query compression, causal, v_head_dim != nope, random norms,
  // theta 10000 and another value.
  std::map<std::pair<std::string, bool>, int> layout_qlora;
  int other_theta = 0, causal = 0;
  for (const GoldenCase* c : cases_of("mla_layer")) {
    ++layout_qlora[{c->text("rope_layout"), c->integer("q_lora_rank") > 0}];
    other_theta += c->number("rope_theta") != 10000;
    causal += is_causal_self(*c);
    EXPECT_NE(c->integer("v_head_dim"), c->integer("qk_nope_head_dim")) << c->name;
    EXPECT_FALSE((c->at("kv_a_layernorm.weight").array() == 1.0).all()) << c->name;
  }
  for (const char* layout : {"interleaved", "half_split"})
    for (bool q_lora : {false, true}) EXPECT_GE((layout_qlora[{layout, q_lora}]), 1) << layout << " " << q_lora;
  EXPECT_GE(other_theta, 2);
  EXPECT_GE(causal, 8);

  int rope_layouts[2] = {0, 0}, rope_nonzero_start = 0;
  for (const GoldenCase* c : cases_of("rope")) {
    ++rope_layouts[layout_of(c->text("rope_layout")) == attend::RopeLayout::interleaved ? 0 : 1];
    rope_nonzero_start += c->integer("start") != 0;
  }
  EXPECT_GE(rope_layouts[0], 2);
  EXPECT_GE(rope_layouts[1], 2);
  EXPECT_GE(rope_nonzero_start, 2);

  int svd_gqa = 0;
  for (const GoldenCase* c : cases_of("svd")) svd_gqa += c->integer("kv_heads") < c->integer("heads");
  EXPECT_GE(svd_gqa, 1);
}

}  // namespace
