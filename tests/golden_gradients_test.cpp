// Golden tests of the gradients against PyTorch autograd: tests/data/gradients.txt, written by
// tests/reference/generate_gradients.py in float64 (loss = sum(dout * out) for the kernels, sum(dy * y) for the
// layers):
//   mha        every mask on self, Lq < Lk and Lq > Lk shapes for MHA, GQA and MQA (custom scale), softcap, sinks,
//              ALiBi, all of them together, rows that see no key, no keys at all, longer rows
//   sdpa       a bias with -inf entries (a whole row and a whole column hidden), with and without softcap
//   mha_layer  torch.nn.MultiheadAttention: self, causal, cross (bottom-right causal too), no bias
//   gqa_layer  Llama-style GQA and MQA in torch ops, head_dim != d_model / heads, with and without biases, cross
//   mla_layer  DeepSeek-V2 MLA in torch ops: query compression or not, both RoPE layouts, biases, no mask
// Every case runs for float and double; the kernels through the public functions (out and lse from attend's own
// forward, and from the file's) and through small tiles that split groups and keys.
//
// Tolerances: max |got - expected| relative to 1 + max |expected| of each gradient. Double: 1e-12 (the same
// inputs, only the order of the sums differs: at most 2.5e-15 measured). Float: 3e-5 (the inputs are the rounded
// doubles and every product and the recomputed probabilities accumulate in float: at most 3e-6 measured, softcap
// cases with scores near 10 and the layers' chains of five products included). A wrong scale, mask, sink, slope
// or softcap derivative moves the gradients by 1e-2 or more.
#include <gtest/gtest.h>

#include <attend/attend.hpp>
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include "backward_seam.hpp"
#include "golden.hpp"
#include "test_util.hpp"

namespace {

using attend::Heads;
using attend::Index;
using attend::Matrix;
using attend_test::GoldenCase;

const std::vector<GoldenCase>& all_cases() {
  static const std::vector<GoldenCase> cases = attend_test::load_golden("gradients.txt");
  return cases;
}

template <class T>
double tolerance() {
  return std::is_same_v<T, float> ? 3e-5 : 1e-12;
}

// max |got - want| / (1 + max |want|); infinite when the shapes differ.
template <class A>
double relative_error(const Eigen::MatrixBase<A>& got, const Eigen::MatrixXd& want) {
  if (got.rows() != want.rows() || got.cols() != want.cols()) return std::numeric_limits<double>::infinity();
  if (want.size() == 0) return 0;
  if (!got.allFinite()) return std::numeric_limits<double>::infinity();
  return (got.template cast<double>() - want).cwiseAbs().maxCoeff() / (1 + want.cwiseAbs().maxCoeff());
}

template <class T, class A>
void expect_gradient(const GoldenCase& c, const std::string& name, const Eigen::MatrixBase<A>& got,
                     const std::string& path) {
  EXPECT_LE(relative_error(got, c.at(name)), tolerance<T>()) << c.name << " " << path << " " << name;
}

// Which query rows see some key and which keys some query row sees (the mask and -inf bias entries).
struct Seen {
  std::vector<bool> rows, keys;
};
Seen seen(const GoldenCase& c) {
  const Index lq = c.at("q").rows(), lk = c.at("k").rows();
  const attend::Mask mask = attend_test::options_of(c).mask;
  Seen s{std::vector<bool>(std::size_t(lq)), std::vector<bool>(std::size_t(lk))};
  for (Index i = 0; i < lq; ++i)
    for (Index j = 0; j < lk; ++j)
      if (mask.visible(i, j, lq, lk) && !(c.has("bias") && std::isinf(c.at("bias")(i, j))))
        s.rows[std::size_t(i)] = s.keys[std::size_t(j)] = true;
  return s;
}

// Rows that see no key get exactly zero dq; keys that no row sees exactly zero dk and dv.
template <class T>
void expect_zeros_where_nothing_is_seen(const GoldenCase& c, const attend::AttentionGradients<T>& g,
                                        const std::string& path) {
  const Seen s = seen(c);
  for (std::size_t i = 0; i < s.rows.size(); ++i) {
    if (!s.rows[i]) {
      EXPECT_TRUE(g.dq.row(Index(i)).isZero(0)) << c.name << " " << path << " dq row " << i;
    }
  }
  for (std::size_t j = 0; j < s.keys.size(); ++j) {
    if (!s.keys[j]) {
      EXPECT_TRUE(g.dk.row(Index(j)).isZero(0)) << c.name << " " << path << " dk row " << j;
      EXPECT_TRUE(g.dv.row(Index(j)).isZero(0)) << c.name << " " << path << " dv row " << j;
    }
  }
}

template <class T>
class GoldenGradients : public ::testing::Test {};
TYPED_TEST_SUITE(GoldenGradients, attend_test::Scalars);

TYPED_TEST(GoldenGradients, KernelsMatchTorchAutogradOnEveryPath) {
  using T = TypeParam;
  int checked = 0;
  for (const GoldenCase& c : all_cases()) {
    if (c.kind != "mha" && c.kind != "sdpa") continue;
    const Heads h = c.kind == "mha" ? Heads{c.heads, c.kv_heads} : Heads{1, 1};
    const attend::Options o = attend_test::options_of(c);
    const Matrix<T> q = c.at("q").cast<T>(), k = c.at("k").cast<T>(), v = c.at("v").cast<T>();
    const Matrix<T> dout = c.at("dout").cast<T>();
    const auto check = [&](const attend::AttentionGradients<T>& g, const std::string& path) {
      expect_gradient<T>(c, "dq", g.dq, path);
      expect_gradient<T>(c, "dk", g.dk, path);
      expect_gradient<T>(c, "dv", g.dv, path);
      expect_zeros_where_nothing_is_seen<T>(c, g, path);
    };
    // The file's out and lse, as another framework's forward would hand them over.
    const Matrix<T> out = c.at("out").cast<T>(), lse = c.at("lse").cast<T>();
    if (c.has("bias")) {
      const Matrix<T> bias = c.at("bias").cast<T>();
      const auto f = attend::scaled_dot_product_attention_with_lse(q, k, v, bias, o);
      check(attend::scaled_dot_product_attention_backward(q, k, v, bias, f.out, f.lse, dout, o), "public, bias");
      check(attend::scaled_dot_product_attention_backward(q, k, v, bias, out, lse, dout, o), "file's out and lse");
      const auto tiles = attend_test::backward_tiles().with_queries(4).with_keys(3).with_cut_queries(2);
      check(attend_test::backward_kernel(q, k, v, f.out, f.lse, dout, h, o, tiles, &bias), "small tiles, bias");
    } else {
      const auto f = attend::multi_head_attention_with_lse(q, k, v, h, o);
      check(attend::multi_head_attention_backward(q, k, v, f.out, f.lse, dout, h, o), "public");
      check(attend::multi_head_attention_backward(q, k, v, out, lse, dout, h, o), "file's out and lse");
      for (const auto& tiles : {attend_test::backward_tiles().with_queries(4).with_keys(3).with_cut_queries(2),
                                attend_test::backward_tiles().with_queries(5).with_keys(4).with_tasks(32)})
        check(attend_test::backward_kernel(q, k, v, f.out, f.lse, dout, h, o, tiles), "small tiles");
      if (h.query == 1) {
        const auto s = attend::scaled_dot_product_attention_with_lse(q, k, v, o);
        check(attend::scaled_dot_product_attention_backward(q, k, v, s.out, s.lse, dout, o), "sdpa");
      }
    }
    ++checked;
  }
  EXPECT_EQ(checked, 52);
}

template <class T>
attend::Linear<T> linear(const GoldenCase& c, const std::string& prefix) {
  attend::Linear<T> lin;
  lin.weight = c.at(prefix + ".weight").cast<T>();
  if (c.has(prefix + ".bias")) lin.bias = c.at(prefix + ".bias").row(0).transpose().cast<T>();
  return lin;
}

template <class T>
attend::Vector<T> vec(const GoldenCase& c, const std::string& key) {
  return c.at(key).row(0).transpose().cast<T>();
}

// The gradient of a Linear against grad.<prefix>.weight and .bias: a bias gradient exactly when there is a bias.
template <class T>
void expect_linear(const GoldenCase& c, const std::string& prefix, const attend::Linear<T>& g) {
  expect_gradient<T>(c, "grad." + prefix + ".weight", g.weight, "");
  if (c.has(prefix + ".bias"))
    expect_gradient<T>(c, "grad." + prefix + ".bias", Matrix<T>(g.bias.transpose()), "");
  else
    EXPECT_EQ(g.bias.size(), 0) << c.name << " " << prefix << ": no bias, no bias gradient";
}

TYPED_TEST(GoldenGradients, MultiHeadAttentionLayersMatchTorchAutograd) {
  using T = TypeParam;
  int checked = 0;
  for (const GoldenCase& c : all_cases()) {
    if (c.kind != "mha_layer" && c.kind != "gqa_layer") continue;
    attend::MultiHeadAttention<T> layer(c.integer("d_model"), c.integer("heads"), c.integer("kv_heads"),
                                        c.integer("head_dim"));
    layer.q_proj = linear<T>(c, "q_proj");
    layer.k_proj = linear<T>(c, "k_proj");
    layer.v_proj = linear<T>(c, "v_proj");
    layer.o_proj = linear<T>(c, "o_proj");
    const attend::Options o = attend_test::options_of(c);
    const Matrix<T> x = c.at("x").cast<T>(), dy = c.at("dy").cast<T>();
    typename attend::MultiHeadAttention<T>::Gradients g =
        c.has("context") ? layer.backward(x, Matrix<T>(c.at("context").cast<T>()), dy, o) : layer.backward(x, dy, o);
    expect_gradient<T>(c, "grad.x", g.dx, "");
    if (c.has("context"))
      expect_gradient<T>(c, "grad.context", g.dcontext, "");
    else
      EXPECT_EQ(g.dcontext.size(), 0) << c.name;
    for (const auto& [name, lin] : {std::pair{"q_proj", &g.q_proj}, std::pair{"k_proj", &g.k_proj},
                                    std::pair{"v_proj", &g.v_proj}, std::pair{"o_proj", &g.o_proj}})
      expect_linear<T>(c, name, *lin);
    ++checked;
  }
  EXPECT_EQ(checked, 10);
}

TYPED_TEST(GoldenGradients, LatentAttentionLayersMatchTorchAutograd) {
  using T = TypeParam;
  int checked = 0;
  for (const GoldenCase& c : all_cases()) {
    if (c.kind != "mla_layer") continue;
    typename attend::MultiHeadLatentAttention<T>::Config cfg;
    cfg.d_model = c.integer("d_model");
    cfg.heads = c.integer("heads");
    cfg.q_lora_rank = c.integer("q_lora_rank");
    cfg.kv_lora_rank = c.integer("kv_lora_rank");
    cfg.qk_nope_head_dim = c.integer("qk_nope_head_dim");
    cfg.qk_rope_head_dim = c.integer("qk_rope_head_dim");
    cfg.v_head_dim = c.integer("v_head_dim");
    cfg.rope_theta = c.number("rope_theta");
    cfg.rope_layout =
        c.text("rope_layout") == "interleaved" ? attend::RopeLayout::interleaved : attend::RopeLayout::half_split;
    attend::MultiHeadLatentAttention<T> layer(cfg);
    const double eps = c.number("rms_eps");
    if (cfg.q_lora_rank == 0) {
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
    const attend::Options o = attend_test::options_of(c);
    const Matrix<T> x = c.at("x").cast<T>(), dy = c.at("dy").cast<T>();
    EXPECT_LE(relative_error(layer.forward(x, o), c.at("out")), tolerance<T>()) << c.name << " forward";
    const auto g = layer.backward(x, dy, o);
    expect_gradient<T>(c, "grad.x", g.dx, "");
    if (cfg.q_lora_rank == 0) {
      expect_linear<T>(c, "q_proj", g.q_proj);
      EXPECT_EQ(g.q_a_proj.weight.size(), 0);
      EXPECT_EQ(g.q_b_proj.weight.size(), 0);
    } else {
      expect_linear<T>(c, "q_a_proj", g.q_a_proj);
      expect_gradient<T>(c, "grad.q_a_layernorm.weight", Matrix<T>(g.q_a_layernorm.weight.transpose()), "");
      expect_linear<T>(c, "q_b_proj", g.q_b_proj);
      EXPECT_EQ(g.q_proj.weight.size(), 0);
    }
    expect_linear<T>(c, "kv_a_proj_with_mqa", g.kv_a_proj_with_mqa);
    expect_gradient<T>(c, "grad.kv_a_layernorm.weight", Matrix<T>(g.kv_a_layernorm.weight.transpose()), "");
    expect_linear<T>(c, "kv_b_proj", g.kv_b_proj);
    expect_linear<T>(c, "o_proj", g.o_proj);
    ++checked;
  }
  EXPECT_EQ(checked, 6);
}

// The file covers what it says: every mask on each shape and head layout, and each option.
TEST(GoldenGradientsData, CoversEveryMaskShapeAndOption) {
  std::map<std::string, int> masks, kinds;
  int softcap = 0, sinks = 0, alibi = 0, scale = 0, dead_rows = 0, no_keys = 0, gqa = 0, mqa = 0, lq_lt = 0, lq_gt = 0;
  for (const GoldenCase& c : all_cases()) {
    ++kinds[c.kind];
    if (c.kind != "mha" && c.kind != "sdpa") continue;
    ++masks[c.mask];
    softcap += c.softcap > 0;
    sinks += c.has("sinks");
    alibi += c.has("alibi");
    scale += c.scale.has_value();
    const Index lq = c.at("q").rows(), lk = c.at("k").rows();
    no_keys += lk == 0;
    lq_lt += lq < lk;
    lq_gt += lq > lk;
    dead_rows += lk > 0 && c.at("dq").rowwise().squaredNorm().minCoeff() == 0;
    if (c.kind == "mha") gqa += c.kv_heads > 1 && c.kv_heads < c.heads, mqa += c.kv_heads == 1 && c.heads > 1;
  }
  EXPECT_EQ(kinds["mha"], 50);
  EXPECT_EQ(kinds["sdpa"], 2);
  EXPECT_EQ(kinds["mha_layer"], 5);
  EXPECT_EQ(kinds["gqa_layer"], 5);
  EXPECT_EQ(kinds["mla_layer"], 6);
  for (const char* m : {"none", "causal", "causal_top_left", "sliding_window"}) EXPECT_GE(masks[m], 9) << m;
  EXPECT_GE(softcap, 4);
  EXPECT_GE(sinks, 6);
  EXPECT_GE(alibi, 4);
  EXPECT_GE(scale, 13);
  EXPECT_GE(dead_rows, 4);
  EXPECT_EQ(no_keys, 2);
  EXPECT_GE(gqa, 14);
  EXPECT_GE(mqa, 14);
  EXPECT_GE(lq_lt, 14);
  EXPECT_GE(lq_gt, 14);
}

}  // namespace
