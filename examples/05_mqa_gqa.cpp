// Multi-query and grouped-query attention: fewer key/value heads, a smaller KV cache.
//
// Decoding is limited by memory: every new token reads the whole KV cache. MHA keeps a key and a value per
// head per token; GQA lets each group of query heads share one key/value head, MQA lets all of them share a
// single one. The queries keep all their heads, so the layer's width does not change, only its cache.
//
// attend::to_grouped converts a trained MHA layer to G kv heads by mean-pooling each group's key and value
// projections (Ainslie et al., "GQA", 2023; the paper then uptrains briefly to recover quality). The program
// converts one MHA layer (d_model 1024, 16 heads of 64) to GQA-4 (4 kv heads), GQA-2 (2) and MQA (1) and shows
//   - the cache numbers per token and for a 2048-token context,
//   - the decode time per token with a 2048-token cache (medians; they vary from run to run),
//   - how far each output moves from the MHA output, for two MHA layers: one with independent random heads
//     and one whose heads are similar (a shared part plus a smaller part of their own), where pooling loses less.
// It checks that a grouped layer is exactly an MHA layer whose kv heads are repeated for their group, that
// to_grouped's heads are the group means, that converting to as many kv heads as there are is the identity,
// and the cache sizes 2 * kv_heads * head_dim. Exit status 1 when a check fails.
#include <attend/attend.hpp>
#include <cstdio>
#include <random>
#include <vector>

#include "util.hpp"

namespace {

using attend::Index;
using attend::Matrix;

constexpr int kModel = 1024, kHeads = 16, kHeadDim = 64, kContext = 2048, kSteps = 16;

/// An MHA layer with random projections. With similarity s in [0, 1), each key/value head's weights are
/// sqrt(s) * (a part shared by all heads) + sqrt(1 - s) * (its own part): s = 0 gives independent heads.
attend::MultiHeadAttention<float> random_mha(double similarity, std::mt19937& rng) {
  attend::MultiHeadAttention<float> m(kModel, kHeads, kHeads, kHeadDim);
  m.q_proj.weight = ex::random_weight(rng, kHeads * kHeadDim, kModel);
  m.o_proj.weight = ex::random_weight(rng, kModel, kHeads * kHeadDim);
  for (attend::Linear<float>* lin : {&m.k_proj, &m.v_proj}) {
    const Matrix<float> shared = ex::random_weight(rng, kHeadDim, kModel);
    lin->weight.resize(kHeads * kHeadDim, kModel);
    for (int h = 0; h < kHeads; ++h)
      lin->weight.middleRows(Index(h) * kHeadDim, kHeadDim) =
          float(std::sqrt(similarity)) * shared +
          float(std::sqrt(1 - similarity)) * ex::random_weight(rng, kHeadDim, kModel);
  }
  return m;
}

/// The MHA layer that a grouped layer is: each of its kv heads copied for every query head of its group.
attend::MultiHeadAttention<float> repeat_kv_heads(const attend::MultiHeadAttention<float>& g) {
  attend::MultiHeadAttention<float> m(g.d_model, g.heads, g.heads, g.head_dim);
  m.q_proj = g.q_proj;
  m.o_proj = g.o_proj;
  const int group = g.heads / g.kv_heads;
  for (int h = 0; h < g.heads; ++h) {
    m.k_proj.weight.middleRows(Index(h) * g.head_dim, g.head_dim) =
        g.k_proj.weight.middleRows(Index(h / group) * g.head_dim, g.head_dim);
    m.v_proj.weight.middleRows(Index(h) * g.head_dim, g.head_dim) =
        g.v_proj.weight.middleRows(Index(h / group) * g.head_dim, g.head_dim);
  }
  return m;
}

/// Median time of one decoding step with `context` tokens already in the cache.
double decode_seconds(const attend::MultiHeadAttention<float>& layer, const Matrix<float>& context,
                      const Matrix<float>& next) {
  attend::Options causal;
  causal.mask = attend::Mask::causal();
  attend::KVCache<float> cache;
  layer.forward(context, cache, causal);
  std::vector<double> t;
  for (Index i = 0; i < next.rows(); ++i) t.push_back(ex::seconds([&] { layer.forward(next.row(i), cache, causal); }));
  return ex::median(t);
}

}  // namespace

int main() {
  std::printf("attend %s: MHA -> GQA -> MQA with to_grouped (d_model %d, %d query heads of %d)\n\n",
              attend::version_string, kModel, kHeads, kHeadDim);
  std::mt19937 rng(5);
  bool ok = true;
  attend::Options causal;
  causal.mask = attend::Mask::causal();

  const attend::MultiHeadAttention<float> mha = random_mha(0.0, rng);          // independent heads
  const attend::MultiHeadAttention<float> mha_similar = random_mha(0.8, rng);  // similar heads
  const Matrix<float> x = ex::random_matrix(rng, 256, kModel);
  const Matrix<float> y = mha.forward(x, causal), y_similar = mha_similar.forward(x, causal);
  const Matrix<float> context = ex::random_matrix(rng, kContext, kModel);
  const Matrix<float> next = ex::random_matrix(rng, kSteps, kModel);

  struct Variant {
    const char* name;
    int kv_heads;
  };
  const Variant variants[] = {{"MHA", 16}, {"GQA-4", 4}, {"GQA-2", 2}, {"MQA", 1}};

  std::printf("%-6s %9s %12s %13s %14s %12s | %-25s\n", "", "kv heads", "query heads", "cache floats", "cache, 2048",
              "decode", "output change vs MHA");
  std::printf("%-6s %9s %12s %13s %14s %12s | %12s %12s\n", "", "", "per kv head", "per token", "tokens", "ms/token",
              "independent", "similar");
  bool sizes_ok = true, repeat_ok = true, identity_ok = true;
  for (const Variant& v : variants) {
    const attend::MultiHeadAttention<float> g = attend::to_grouped(mha, v.kv_heads);
    const attend::MultiHeadAttention<float> g_similar = attend::to_grouped(mha_similar, v.kv_heads);
    const std::size_t per_token = g.kv_cache_elements_per_token();
    sizes_ok = sizes_ok && per_token == std::size_t(2) * v.kv_heads * kHeadDim;

    const Matrix<float> yg = g.forward(x, causal);
    const double change = ex::max_abs_diff(yg, y) / ex::max_abs(y);
    const double change_similar = ex::max_abs_diff(g_similar.forward(x, causal), y_similar) / ex::max_abs(y_similar);
    if (v.kv_heads == kHeads) identity_ok = change <= 1e-6 && change_similar <= 1e-6;
    // The mechanism: a grouped layer computes what MHA computes with each kv head repeated for its group.
    repeat_ok = repeat_ok && ex::max_abs_diff(repeat_kv_heads(g).forward(x, causal), yg) <= 1e-5;

    const double t = decode_seconds(g, context, next);
    std::printf("%-6s %9d %12d %13zu %10.1f MiB %12.3f | %11.1f%% %11.1f%%\n", v.name, v.kv_heads, kHeads / v.kv_heads,
                per_token, double(per_token) * sizeof(float) * kContext / (1 << 20), t * 1e3, 100 * change,
                100 * change_similar);
  }
  std::printf(
      "\ncache floats per token = 2 (key and value) x kv heads x head dim, per layer; float is 4 bytes.\n"
      "output change = max |y_converted - y_MHA| / max |y_MHA| over 256 tokens, causal. Query head h reads kv\n"
      "head h / (16 / kv heads): for GQA-4, query heads 0-3 share kv head 0, 4-7 kv head 1, and so on.\n"
      "Pooling independent heads averages unrelated keys and values, so outputs move a lot; when the heads of a\n"
      "group are alike, pooling loses much less. The GQA paper then uptrains the converted model briefly.\n\n");

  // to_grouped pools by the mean of each group's heads.
  const attend::MultiHeadAttention<float> gqa4 = attend::to_grouped(mha, 4);
  Matrix<float> mean_k0 = Matrix<float>::Zero(kHeadDim, kModel);
  for (int h = 0; h < 4; ++h) mean_k0 += mha.k_proj.weight.middleRows(Index(h) * kHeadDim, kHeadDim) / 4.0f;
  const double pool_diff = ex::max_abs_diff(gqa4.k_proj.weight.topRows(kHeadDim), mean_k0);

  ok &= ex::check(sizes_ok, "cache per token = 2 * kv_heads * head_dim for every variant");
  ok &= ex::check(identity_ok, "to_grouped(mha, 16) is the MHA layer itself (change <= 1e-6)");
  ok &= ex::check(pool_diff <= 1e-6, "GQA-4's kv head 0 = the mean of MHA's kv heads 0..3");
  ok &= ex::check(repeat_ok, "each grouped layer = MHA with its kv heads repeated per group (1e-5)");
  return ok ? 0 : 1;
}
