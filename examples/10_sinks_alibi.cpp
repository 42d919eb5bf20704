// Sinks and ALiBi: two score modifiers of current model families.
//
// Attention sinks (gpt-oss): each head has a learned logit that joins its softmax's denominator but belongs to no
// key, p_j = exp(s_j) / (exp(sink) + sum_k exp(s_k)), so a head can attend to "nothing" instead of spreading
// weight over keys that do not matter. gpt-oss alternates sliding-window layers (128 keys) and full layers, both
// with sinks. The program runs such a pair over one sequence and prints, per head, the share of the weight the
// sink absorbs, exp(sink - lse) (lse from multi_head_attention_with_lse includes the sink).
//
// ALiBi (BLOOM, MPT): no position embedding; head h subtracts slope_h * |i - j| from every score, slopes from
// geometric_alibi_slopes. A model trained on short sequences then still attends locally on longer ones: the
// program prints each head's mean attention distance sum_j p_ij |i - j| for queries at growing positions, with
// and without ALiBi, well past a "training length" of 256.
//
// It checks that the sinks absorb weight (rows sum to less than 1), that a layer decoding through a KVCache with
// sinks and ALiBi gives the rows of one causal forward, and that ALiBi keeps the attention distance bounded while
// plain attention's grows with the position. Exit status 1 when a check fails.
#include <attend/attend.hpp>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "util.hpp"

namespace {

using attend::Index;
using attend::Matrix;

constexpr int kModel = 256, kHeads = 8, kKvHeads = 2, kHeadDim = 32, kTokens = 512;

attend::MultiHeadAttention<float> random_layer(std::mt19937& rng) {
  attend::MultiHeadAttention<float> m(kModel, kHeads, kKvHeads, kHeadDim);
  m.q_proj.weight = ex::random_weight(rng, kHeads * kHeadDim, kModel);
  m.k_proj.weight = ex::random_weight(rng, kKvHeads * kHeadDim, kModel);
  m.v_proj.weight = ex::random_weight(rng, kKvHeads * kHeadDim, kModel);
  m.o_proj.weight = ex::random_weight(rng, kModel, kHeads * kHeadDim);
  return m;
}

/// Per head, the mean over rows of the weight the sink absorbs: exp(sink_h - lse(i, h)).
std::vector<double> absorbed(const attend::MultiHeadAttention<float>& layer, const Matrix<float>& x,
                             const attend::Options& o) {
  const Matrix<float> q = layer.q_proj(x), k = layer.k_proj(x), v = layer.v_proj(x);
  const auto r = attend::multi_head_attention_with_lse(q, k, v, attend::Heads{kHeads, kKvHeads}, o);
  std::vector<double> share(kHeads, 0.0);
  for (Index i = 0; i < r.lse.rows(); ++i)
    for (int h = 0; h < kHeads; ++h) share[h] += std::exp(o.sinks[h] - double(r.lse(i, h))) / double(r.lse.rows());
  return share;
}

/// Mean attention distance of query row `row` (of `len` tokens), per head: sum_j p_j |row - j|, from the weights
/// of that one query over the keys it sees.
double mean_distance(const Matrix<float>& q, const Matrix<float>& k, int head, Index row, const attend::Options& o) {
  const Index len = row + 1;
  const Matrix<float> qh = q.block(row, head * kHeadDim, 1, kHeadDim);
  const Matrix<float> kh = k.block(0, head / (kHeads / kKvHeads) * kHeadDim, len, kHeadDim);
  attend::Options one = o;
  if (!o.alibi_slopes.empty()) one.alibi_slopes = {o.alibi_slopes[head]};
  const Matrix<float> w = attend::attention_weights(qh, kh, one);  // one query: the last position, sees every key
  double d = 0;
  for (Index j = 0; j < len; ++j) d += double(w(0, j)) * double(row - j);
  return d;
}

}  // namespace

int main() {
  std::mt19937 rng(10);
  bool ok = true;

  std::printf("1. A gpt-oss-style pair of layers with sinks (%d tokens, %d query heads)\n\n", kTokens, kHeads);
  const attend::MultiHeadAttention<float> windowed = random_layer(rng), full = random_layer(rng);
  attend::Options o_window, o_full;
  o_window.mask = attend::Mask::sliding_window(128);
  o_full.mask = attend::Mask::causal();
  for (int h = 0; h < kHeads; ++h) {  // learned per head in a real model; here from -2 to 1.5
    o_window.sinks.push_back(-2.0 + 0.5 * h);
    o_full.sinks.push_back(1.5 - 0.5 * h);
  }
  const Matrix<float> x = ex::random_matrix(rng, kTokens, kModel);
  const Matrix<float> y = windowed.forward(x, o_window);
  const std::vector<double> a_window = absorbed(windowed, x, o_window), a_full = absorbed(full, y, o_full);
  std::printf("   head   sink (window)  absorbed   sink (full)  absorbed\n");
  for (int h = 0; h < kHeads; ++h)
    std::printf("   %4d   %13.1f  %7.1f%%   %11.1f  %7.1f%%\n", h, o_window.sinks[h], 100 * a_window[h],
                o_full.sinks[h], 100 * a_full[h]);
  std::printf("\n   (a larger sink takes more of each row's weight away from the keys.)\n\n");
  bool absorbs = true;
  for (int h = 0; h < kHeads; ++h) absorbs = absorbs && a_window[h] > 0 && a_full[h] > 0 && a_full[h] < 1;
  ok &= ex::check(absorbs, "every head's sink absorbs some weight, never all of it");
  // Decoding token by token through a cache: the same rows as the full causal forward, sinks and windows included.
  attend::KVCache<float> cache;
  Matrix<float> stepped(kTokens, kModel);
  for (Index i = 0; i < kTokens; i += 64)
    stepped.middleRows(i, 64) = windowed.forward(x.middleRows(i, 64), cache, o_window);
  ok &= ex::check(ex::max_abs_diff(stepped, y) <= 1e-4, "chunked decoding with sinks and a window equals one forward");

  std::printf("\n2. ALiBi past the training length (mean attention distance sum_j p_j |i - j|, in tokens)\n\n");
  const std::vector<double> slopes = attend::geometric_alibi_slopes(kHeads);
  const attend::MultiHeadAttention<float> alibi_layer = random_layer(rng);
  const Matrix<float> long_x = ex::random_matrix(rng, 4096, kModel);
  const Matrix<float> q = alibi_layer.q_proj(long_x), k = alibi_layer.k_proj(long_x);
  attend::Options plain, with_alibi;
  plain.mask = with_alibi.mask = attend::Mask::causal();
  with_alibi.alibi_slopes = slopes;
  const Index positions[] = {255, 1023, 4095};
  std::printf("   head    slope   1/slope |   ALiBi: at 256   1024   4096 |   none: at 256   1024   4096\n");
  bool bounded = true, grows = true;
  for (int h = 0; h < kHeads; ++h) {
    std::printf("   %4d %8.4f %9.1f |        ", h, slopes[h], 1 / slopes[h]);
    double last = 0;
    for (Index p : positions) {
      last = mean_distance(q, k, h, p, with_alibi);
      std::printf("%7.1f", last);
      bounded = bounded && last <= 4 / slopes[h];
    }
    std::printf(" |       ");
    std::vector<double> none;
    for (Index p : positions) {
      none.push_back(mean_distance(q, k, h, p, plain));
      std::printf("%7.1f", none.back());
    }
    grows = grows && none.back() > 4 * none.front();
    std::printf("\n");
  }
  std::printf(
      "\n   (with ALiBi each head keeps looking about 1/slope tokens back, however long the sequence;\n"
      "   without it, random heads spread their weight over the whole, growing context.)\n\n");
  ok &= ex::check(bounded, "with ALiBi every head's mean distance stays within 4/slope tokens");
  ok &= ex::check(grows, "without ALiBi the mean distance grows with the position");
  // The ALiBi layer decodes through a cache with the same distances (Lk - Lq aligns query and key positions).
  attend::KVCache<float> alibi_cache;
  const Matrix<float> short_x = long_x.topRows(300);
  Matrix<float> stepped_alibi(300, kModel);
  for (Index i = 0; i < 300; i += 100)
    stepped_alibi.middleRows(i, 100) = alibi_layer.forward(short_x.middleRows(i, 100), alibi_cache, with_alibi);
  ok &= ex::check(ex::max_abs_diff(stepped_alibi, alibi_layer.forward(short_x, with_alibi)) <= 1e-4,
                  "chunked decoding with ALiBi equals one forward");
  return ok ? 0 : 1;
}
