// Causal attention: a token may look at itself and the past, never at the future.
//
// A language model predicts token t+1 from tokens 0..t, so when it is trained on a whole sequence at once,
// query i must not see key j > i. The mask does this by setting those scores to -infinity before the
// softmax: exp(-inf) = 0, so the future gets exactly zero weight and the weights form a lower triangle.
// The program
//   1. prints the scaled scores, the masked scores (-inf above the diagonal) and the lower-triangular weights
//      of 5 tokens, and checks the weights are softmax(masked scores) with exact zeros above the diagonal;
//   2. decodes 12 tokens one at a time through a KVCache (each step appends the new token's key and value and
//      attends over everything cached) and checks every row equals the row of one causal forward pass over
//      the whole sequence, also when fed in chunks of 5 + 4 + 3;
//   3. shows the two alignments of a causal mask when there are fewer queries than keys (Lq = 3, Lk = 6):
//      causal() (bottom-right: the queries are the *last* tokens, as with a KV cache) and causal_top_left()
//      (PyTorch's is_causal: the queries are the *first* tokens), and checks each against the square mask;
//   4. times one decoding step with the cache against recomputing the whole prefix.
// Exit status 1 when a check fails.
#include <attend/attend.hpp>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "util.hpp"

namespace {

using attend::Index;
using attend::Matrix;

void print_matrix(const char* title, const Matrix<float>& m) {
  std::printf("%s\n", title);
  std::printf("%8s", "q \\ k");
  for (Index j = 0; j < m.cols(); ++j) std::printf("%8lld", static_cast<long long>(j));
  std::printf("\n");
  for (Index i = 0; i < m.rows(); ++i) {
    std::printf("%8lld", static_cast<long long>(i));
    for (Index j = 0; j < m.cols(); ++j) {
      if (std::isinf(m(i, j)))
        std::printf("%8s", m(i, j) < 0 ? "-inf" : "inf");
      else
        std::printf("%8.3f", static_cast<double>(m(i, j)));
    }
    std::printf("\n");
  }
  std::printf("\n");
}

/// Which keys each query sees under `mask`, as a grid of 'x' (visible) and '.' (hidden).
void print_visibility(const char* title, const attend::Mask& mask, Index lq, Index lk) {
  std::printf("   %s\n", title);
  for (Index i = 0; i < lq; ++i) {
    std::printf("     query %lld: ", static_cast<long long>(i));
    for (Index j = 0; j < lk; ++j) std::printf("%c ", mask.visible(i, j, lq, lk) ? 'x' : '.');
    std::printf("\n");
  }
}

attend::MultiHeadAttention<float> random_layer(int d_model, int heads, std::mt19937& rng) {
  const int head_dim = d_model / heads;
  attend::MultiHeadAttention<float> m(d_model, heads, heads, head_dim);
  m.q_proj.weight = ex::random_weight(rng, d_model, d_model);
  m.k_proj.weight = ex::random_weight(rng, d_model, d_model);
  m.v_proj.weight = ex::random_weight(rng, d_model, d_model);
  m.o_proj.weight = ex::random_weight(rng, d_model, d_model);
  return m;
}

}  // namespace

int main() {
  std::printf("attend %s: causal attention, the KV cache, and mask alignment\n\n", attend::version_string);
  std::mt19937 rng(11);
  bool ok = true;
  attend::Options causal;
  causal.mask = attend::Mask::causal();

  // 1. The mask before the softmax.
  {
    const Index L = 5, d = 4;
    const Matrix<float> q = ex::random_matrix(rng, L, d), k = ex::random_matrix(rng, L, d);
    const Matrix<float> scores = (q * k.transpose()) / std::sqrt(float(d));
    Matrix<float> masked = scores;
    for (Index i = 0; i < L; ++i)
      for (Index j = 0; j < L; ++j)
        if (!causal.mask.visible(i, j, L, L)) masked(i, j) = -std::numeric_limits<float>::infinity();
    const Matrix<float> w = attend::attention_weights(q, k, causal);
    std::printf("1. Five tokens, d = 4.\n\n");
    print_matrix("scores = q k^T / sqrt(d):", scores);
    print_matrix("masked: key j > query i set to -inf (the future):", masked);
    print_matrix("weights = softmax(masked) per row (attention_weights with Mask::causal()):", w);
    std::printf("Token 0 sees only itself (weight 1); token 4 sees all five.\n\n");
    bool upper_zero = true;
    for (Index i = 0; i < L; ++i)
      for (Index j = i + 1; j < L; ++j) upper_zero = upper_zero && w(i, j) == 0.0f;
    ok &= ex::check(upper_zero, "every weight above the diagonal is exactly 0");
    ok &= ex::check(ex::max_abs_diff(w, attend::softmax(masked)) <= 1e-6, "weights = softmax(masked scores) (1e-6)");
    std::printf("\n");
  }

  // 2. Decoding with a KV cache gives the rows of one causal pass.
  const int d_model = 64, heads = 4;
  const attend::MultiHeadAttention<float> layer = random_layer(d_model, heads, rng);
  {
    const Index L = 12;
    const Matrix<float> x = ex::random_matrix(rng, L, d_model);
    const Matrix<float> full = layer.forward(x, causal);  // all 12 rows at once, causal mask

    std::printf(
        "2. A MultiHeadAttention layer (d_model %d, %d heads): forward(x, causal) over %lld tokens, then the\n"
        "   same tokens one at a time through a KVCache (forward(x.row(t), cache, causal)):\n\n",
        d_model, heads, static_cast<long long>(L));
    std::printf("   %6s %12s %30s\n", "step t", "cache size", "max |row t - causal row t|");
    attend::KVCache<float> cache;
    double worst = 0;
    for (Index t = 0; t < L; ++t) {
      const Matrix<float> row = layer.forward(x.row(t), cache, causal);
      const double diff = ex::max_abs_diff(row, full.row(t));
      worst = std::max(worst, diff);
      std::printf("   %6lld %12lld %30.2e\n", static_cast<long long>(t), static_cast<long long>(cache.size()), diff);
    }
    // Chunks of any size work too: this is chunked prefill, then decoding.
    attend::KVCache<float> chunked;
    Matrix<float> rows(L, d_model);
    rows.topRows(5) = layer.forward(x.topRows(5), chunked, causal);
    rows.middleRows(5, 4) = layer.forward(x.middleRows(5, 4), chunked, causal);
    rows.bottomRows(3) = layer.forward(x.bottomRows(3), chunked, causal);
    const double chunk_diff = ex::max_abs_diff(rows, full);
    std::printf("\n   chunks of 5 + 4 + 3 tokens through a fresh cache: max |diff| = %.2e\n", chunk_diff);

    // The mask matters: with the top-left alignment a lone new query (Lq = 1) sees only key 0 of the cache.
    attend::Options top_left;
    top_left.mask = attend::Mask::causal_top_left();
    attend::KVCache<float> wrong;
    layer.forward(x.topRows(L - 1), wrong, causal);
    const double wrong_diff = ex::max_abs_diff(layer.forward(x.bottomRows(1), wrong, top_left), full.bottomRows(1));
    std::printf("   last step with causal_top_left() instead (the new query sees only token 0): max |diff| = %.2e\n\n",
                wrong_diff);
    ok &= ex::check(worst <= 1e-5, "token-by-token KVCache decoding equals one causal forward (1e-5)");
    ok &= ex::check(chunk_diff <= 1e-5, "chunked decoding (5 + 4 + 3) equals one causal forward (1e-5)");
    ok &= ex::check(wrong_diff > 1e-2, "decoding with the top-left mask gives a different (wrong) row");
    std::printf("\n");
  }

  // 3. Alignment when Lq != Lk.
  {
    const Index lq = 3, lk = 6, d = 8;
    std::printf("3. Fewer queries than keys (Lq = %lld, Lk = %lld): where does the triangle start?\n\n",
                static_cast<long long>(lq), static_cast<long long>(lk));
    print_visibility("Mask::causal(), bottom-right: query i sees j <= i + (Lk - Lq); the queries are tokens 3..5",
                     attend::Mask::causal(), lq, lk);
    print_visibility("Mask::causal_top_left(), PyTorch is_causal: query i sees j <= i; the queries are tokens 0..2",
                     attend::Mask::causal_top_left(), lq, lk);
    std::printf(
        "\n   Decoding with a cache and chunked prefill need bottom-right: the new queries are the newest\n"
        "   tokens. With Lq == Lk the two are the same mask.\n\n");
    const Matrix<float> q = ex::random_matrix(rng, lk, d), k = ex::random_matrix(rng, lk, d);
    const Matrix<float> square = attend::attention_weights(q, k, causal);  // 6 x 6
    attend::Options top_left;
    top_left.mask = attend::Mask::causal_top_left();
    const double br = ex::max_abs_diff(attend::attention_weights(q.bottomRows(lq), k, causal), square.bottomRows(lq));
    const double tl = ex::max_abs_diff(attend::attention_weights(q.topRows(lq), k, top_left), square.topRows(lq));
    ok &= ex::check(br <= 1e-6, "causal() on the last 3 queries = the last 3 rows of the square mask");
    ok &= ex::check(tl <= 1e-6, "causal_top_left() on the first 3 queries = its first 3 rows");
    std::printf("\n");
  }

  // 4. Why cache: the cost of one new token at position N.
  {
    const int big_model = 512, big_heads = 8;
    const attend::MultiHeadAttention<float> big = random_layer(big_model, big_heads, rng);
    const Index N = 2048, steps = 16;
    const Matrix<float> x = ex::random_matrix(rng, N + steps, big_model);
    attend::KVCache<float> cache;
    big.forward(x.topRows(N), cache, causal);
    std::vector<double> with_cache;
    for (Index t = 0; t < steps; ++t)
      with_cache.push_back(ex::seconds([&] { big.forward(x.row(N + t), cache, causal); }));
    const double recompute = ex::median_seconds(3, [&] { big.forward(x.topRows(N + 1), causal); });
    std::printf("4. One new token after %lld (d_model %d, %d heads; medians):\n\n", static_cast<long long>(N),
                big_model, big_heads);
    std::printf("   with the KV cache (project 1 token, attend over %lld cached keys): %9.3f ms\n",
                static_cast<long long>(N), ex::median(with_cache) * 1e3);
    std::printf("   without (recompute the causal forward of all %lld tokens):        %9.3f ms\n",
                static_cast<long long>(N + 1), recompute * 1e3);
    std::printf(
        "\n   The cache trades memory (%zu floats per token and layer) for time: a step costs O(N) instead of\n"
        "   O(N^2).\n",
        big.kv_cache_elements_per_token());
  }
  return ok ? 0 : 1;
}
