// Cross-attention: the queries come from one sequence, the keys and values from another.
//
// In an encoder-decoder model (translation, speech recognition) the decoder's tokens ask questions (queries)
// of the encoder's tokens (keys and values). The two sequences have different lengths, so the weight matrix is
// [decoder tokens, encoder tokens], not square, and no causal mask is needed: the whole source is known.
// The program
//   1. lets the French decoder "le train quitte la gare" (5 tokens) attend over the English encoder "the train
//      left the station on time" (7 tokens), with toy embeddings in one shared feature space, and prints the
//      5x7 weights: each French word looks most at its translation;
//   2. runs a MultiHeadAttention layer with random weights on a 5-token decoder and a 12-token encoder and
//      checks that forward(x, context) is exactly "q from x, k and v from the context, multi_head_attention,
//      output projection", that each decoder row is computed independently of the others, and that the
//      order of the encoder tokens does not matter (attention treats keys as a set: word order has to be
//      put into the embeddings, e.g. by positional encodings).
// Exit status 1 when a check fails.
#include <algorithm>
#include <attend/attend.hpp>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "util.hpp"

namespace {

using attend::Index;
using attend::Matrix;

const std::vector<std::string> kEnglish = {"the", "train", "left", "the", "station", "on", "time"};
const std::vector<std::string> kFrench = {"le", "train", "quitte", "la", "gare"};

// Features: 0 article, 1 noun, 2 railway, 3 place/vehicle, 4 motion, 5 past, 6 preposition, 7 time
// (the same space as 01_self_attention).
Matrix<float> english() {
  Matrix<float> e(7, 8);
  // clang-format off
  //      art  noun  rail place  move  past  prep  time
  e << 2.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.3f, 0.0f,   // the
       0.0f, 1.2f, 2.0f, 1.0f, 0.6f, 0.0f, 0.0f, 0.0f,   // train
       0.0f, 0.0f, 0.2f, 0.0f, 2.0f, 1.2f, 0.0f, 0.3f,   // left
       2.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.3f, 0.0f,   // the
       0.0f, 1.2f, 2.0f, 1.4f, 0.0f, 0.0f, 0.0f, 0.0f,   // station
       0.3f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 2.0f, 0.8f,   // on
       0.0f, 1.2f, 0.0f, 0.0f, 0.0f, 0.4f, 0.6f, 2.0f;   // time
  // clang-format on
  return e;
}

Matrix<float> french() {
  Matrix<float> f(5, 8);
  // clang-format off
  //      art  noun  rail place  move  past  prep  time
  f << 2.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.3f, 0.0f,   // le
       0.0f, 1.2f, 2.0f, 0.6f, 1.0f, 0.0f, 0.0f, 0.0f,   // train
       0.0f, 0.0f, 0.2f, 0.0f, 2.0f, 0.6f, 0.0f, 0.3f,   // quitte (present tense: less "past")
       2.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.3f, 0.0f,   // la
       0.0f, 1.2f, 2.0f, 1.4f, 0.0f, 0.0f, 0.0f, 0.0f;   // gare
  // clang-format on
  return f;
}

attend::MultiHeadAttention<float> random_layer(int d_model, int heads, std::mt19937& rng) {
  attend::MultiHeadAttention<float> m(d_model, heads, heads, d_model / heads);
  m.q_proj.weight = ex::random_weight(rng, d_model, d_model);
  m.k_proj.weight = ex::random_weight(rng, d_model, d_model);
  m.v_proj.weight = ex::random_weight(rng, d_model, d_model);
  m.o_proj.weight = ex::random_weight(rng, d_model, d_model);
  return m;
}

}  // namespace

int main() {
  std::printf("attend %s: cross-attention, decoder queries over encoder keys and values\n\n", attend::version_string);
  bool ok = true;

  // 1. Toy translation: queries = French embeddings, keys = values = English embeddings.
  const Matrix<float> dec = french(), enc = english();
  const Matrix<float> w = attend::attention_weights(dec, enc);                    // [5, 7]
  const Matrix<float> out = attend::scaled_dot_product_attention(dec, enc, enc);  // [5, 8]
  std::printf("1. Weights [%lld decoder tokens x %lld encoder tokens] (row: French query, column: English key):\n\n",
              static_cast<long long>(w.rows()), static_cast<long long>(w.cols()));
  std::printf("%10s", "");
  for (const auto& t : kEnglish) std::printf("%9s", t.c_str());
  std::printf("   looks most at\n");
  std::vector<std::string> best;
  for (Index i = 0; i < w.rows(); ++i) {
    Index arg = 0;
    w.row(i).maxCoeff(&arg);
    best.push_back(kEnglish[static_cast<std::size_t>(arg)]);
    std::printf("%10s", kFrench[static_cast<std::size_t>(i)].c_str());
    for (Index j = 0; j < w.cols(); ++j) std::printf("%9.3f", static_cast<double>(w(i, j)));
    std::printf("   %s\n", best.back().c_str());
  }
  std::printf(
      "\nThe output has one row per decoder token (%lld x %lld): each French token receives a mix of the\n"
      "English vectors, mostly of its translation (\"le\" and \"la\" split theirs between the two \"the\").\n\n",
      static_cast<long long>(out.rows()), static_cast<long long>(out.cols()));
  ok &= ex::check(best[1] == "train" && best[2] == "left" && best[4] == "station",
                  "\"train\", \"quitte\", \"gare\" look most at \"train\", \"left\", \"station\"");
  ok &= ex::check(std::abs(w(0, 0) - w(0, 3)) <= 1e-7f && std::abs(w(3, 0) - w(3, 3)) <= 1e-7f,
                  "\"le\" and \"la\" weigh the two \"the\" equally");
  std::printf("\n");

  // 2. A layer with weights: MultiHeadAttention::forward(x, context).
  std::mt19937 rng(3);
  const int d_model = 64, heads = 4;
  const attend::MultiHeadAttention<float> layer = random_layer(d_model, heads, rng);
  const Matrix<float> x = ex::random_matrix(rng, 5, d_model);         // decoder states
  const Matrix<float> context = ex::random_matrix(rng, 12, d_model);  // encoder output
  const Matrix<float> y = layer.forward(x, context);

  const Matrix<float> q = layer.q_proj(x), k = layer.k_proj(context), v = layer.v_proj(context);
  const Matrix<float> by_hand = layer.o_proj(attend::multi_head_attention(q, k, v, attend::Heads{heads, heads}));
  std::printf("2. MultiHeadAttention (d_model %d, %d heads of %d) with random weights:\n\n", d_model, heads,
              d_model / heads);
  std::printf("   x (decoder) [%lld, %d], context (encoder) [%lld, %d]\n", static_cast<long long>(x.rows()), d_model,
              static_cast<long long>(context.rows()), d_model);
  std::printf("   q = q_proj(x) [%lld, %lld]; k = k_proj(context), v = v_proj(context) [%lld, %lld]\n",
              static_cast<long long>(q.rows()), static_cast<long long>(q.cols()), static_cast<long long>(k.rows()),
              static_cast<long long>(k.cols()));
  std::printf("   per head: weights [%lld, %lld]; output o_proj(heads) [%lld, %lld]\n\n",
              static_cast<long long>(x.rows()), static_cast<long long>(context.rows()),
              static_cast<long long>(y.rows()), static_cast<long long>(y.cols()));

  // Row independence: decoding one query alone gives the same row.
  double row_diff = 0;
  for (Index i = 0; i < x.rows(); ++i)
    row_diff = std::max(row_diff, ex::max_abs_diff(layer.forward(x.row(i), context), y.row(i)));

  // Order of the encoder tokens: reverse and shuffle them together (keys stay paired with their values).
  std::vector<int> order(static_cast<std::size_t>(context.rows()));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  Matrix<float> shuffled(context.rows(), context.cols());
  for (Index r = 0; r < context.rows(); ++r) shuffled.row(r) = context.row(order[static_cast<std::size_t>(r)]);
  const double perm_diff = ex::max_abs_diff(layer.forward(x, shuffled), y);

  std::printf("   any encoder length, same output shape:");
  for (Index s : {3, 12, 40}) {
    const Matrix<float> ys = layer.forward(x, ex::random_matrix(rng, s, d_model));
    std::printf("  %lld tokens -> [%lld, %lld]", static_cast<long long>(s), static_cast<long long>(ys.rows()),
                static_cast<long long>(ys.cols()));
  }
  std::printf("\n\n");
  std::printf("   forward(x, context) vs projections + multi_head_attention by hand: max |diff| = %.2e\n",
              ex::max_abs_diff(y, by_hand));
  std::printf("   each decoder row alone vs all rows at once:                      max |diff| = %.2e\n", row_diff);
  std::printf("   encoder tokens shuffled vs in order:                             max |diff| = %.2e\n\n", perm_diff);
  ok &= ex::check(ex::max_abs_diff(y, by_hand) <= 1e-6,
                  "forward(x, context) = o_proj(mha(q_proj(x), k_proj(c), v_proj(c)))");
  ok &= ex::check(row_diff <= 1e-5, "each decoder row depends only on itself and the encoder (1e-5)");
  ok &= ex::check(perm_diff <= 1e-5, "shuffling the encoder tokens leaves the output unchanged (1e-5)");
  return ok ? 0 : 1;
}
