// Self-attention over one sentence, step by step.
//
// Seven tokens, "the train left the station on time", get hand-made 8-dimensional embeddings in which
// "train" and "station" are close (both are railway nouns) and the two "the" are identical. With
// Q = K = V = the embeddings (no learned projections), every token attends to the tokens that look
// like it. The program
//   1. prints the 7x7 attention weights (attend::attention_weights) as a table,
//   2. shows how one row is made: the scores q.k / sqrt(d) of "train" against every key, then the softmax,
//   3. checks that each output row of attend::scaled_dot_product_attention is the weighted sum of
//      the value rows, that every row sums to 1, that "train" and "station" attend to each other more
//      than to any other word, and that the two "the" get identical rows (exit code 1 when a check fails),
//   4. writes attention.svg, a heatmap of the weights, into the current directory.
#include <algorithm>
#include <attend/attend.hpp>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "util.hpp"

namespace {

const std::vector<std::string> kTokens = {"the", "train", "left", "the", "station", "on", "time"};

// Features: 0 article, 1 noun, 2 railway, 3 place/vehicle, 4 motion, 5 past, 6 preposition, 7 time.
attend::Matrix<float> make_embeddings() {
  attend::Matrix<float> e(7, 8);
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

void print_weights(const attend::Matrix<float>& w) {
  std::printf("Attention weights (row = query token, column = key token; each row sums to 1):\n\n");
  std::printf("%10s", "");
  for (const auto& t : kTokens) std::printf("%9s", t.c_str());
  std::printf("\n");
  for (Eigen::Index i = 0; i < w.rows(); ++i) {
    std::printf("%10s", kTokens[static_cast<std::size_t>(i)].c_str());
    for (Eigen::Index j = 0; j < w.cols(); ++j) std::printf("%9.3f", static_cast<double>(w(i, j)));
    std::printf("   (sum %.4f)\n", static_cast<double>(w.row(i).sum()));
  }
  std::printf("\n");
}

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// A plain SVG heatmap: white (weight 0) to dark blue (the largest weight), the weight printed in each cell.
bool write_svg(const attend::Matrix<float>& w, const std::string& path) {
  const int cell = 64, left = 90, top = 80;
  const int n = static_cast<int>(w.rows());
  const int width = left + n * cell + 20, height = top + n * cell + 40;
  const double max_w = std::max(1e-12, static_cast<double>(w.maxCoeff()));
  std::ofstream f(path);
  if (!f) return false;
  f << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
    << "\" font-family=\"sans-serif\" font-size=\"13\">\n";
  f << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  f << "<text x=\"10\" y=\"24\" font-size=\"15\" font-weight=\"bold\">"
    << "Self-attention weights: \"the train left the station on time\"</text>\n";
  char note[96];
  std::snprintf(note, sizeof note, "rows: queries, columns: keys; darkest = %.2f", max_w);
  f << "<text x=\"10\" y=\"44\" fill=\"#555\">" << note << "</text>\n";
  for (int j = 0; j < n; ++j) {
    f << "<text x=\"" << left + j * cell + cell / 2 << "\" y=\"" << top - 8 << "\" text-anchor=\"middle\">"
      << xml_escape(kTokens[static_cast<std::size_t>(j)]) << "</text>\n";
  }
  for (int i = 0; i < n; ++i) {
    f << "<text x=\"" << left - 8 << "\" y=\"" << top + i * cell + cell / 2 + 5 << "\" text-anchor=\"end\">"
      << xml_escape(kTokens[static_cast<std::size_t>(i)]) << "</text>\n";
    for (int j = 0; j < n; ++j) {
      const double v = static_cast<double>(w(i, j));
      const double t = std::clamp(v / max_w, 0.0, 1.0);
      const int r = static_cast<int>(std::lround(255 - t * (255 - 8)));
      const int g = static_cast<int>(std::lround(255 - t * (255 - 48)));
      const int b = static_cast<int>(std::lround(255 - t * (255 - 107)));
      f << "<rect x=\"" << left + j * cell << "\" y=\"" << top + i * cell << "\" width=\"" << cell << "\" height=\""
        << cell << "\" fill=\"rgb(" << r << "," << g << "," << b << ")\" stroke=\"#ccc\"/>\n";
      char label[16];
      std::snprintf(label, sizeof label, "%.2f", v);
      f << "<text x=\"" << left + j * cell + cell / 2 << "\" y=\"" << top + i * cell + cell / 2 + 5
        << "\" text-anchor=\"middle\" fill=\"" << (t > 0.55 ? "white" : "black") << "\">" << label << "</text>\n";
    }
  }
  f << "</svg>\n";
  return static_cast<bool>(f);
}

}  // namespace

int main() {
  std::printf("attend %s: self-attention over \"the train left the station on time\"\n\n", attend::version_string);

  const attend::Matrix<float> x = make_embeddings();
  const attend::Matrix<float>& q = x;  // no projections: queries, keys and values are the embeddings
  const attend::Matrix<float>& k = x;
  const attend::Matrix<float>& v = x;
  std::printf("7 tokens x 8 features; scores = q.k / sqrt(8), softmax over each row.\n\n");

  const attend::Matrix<float> w = attend::attention_weights(q, k);
  print_weights(w);

  // How the "train" row is made: one score per key, then a softmax (exp, divided by the sum).
  const Eigen::Index train = 1, station = 4;
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.cols()));
  std::vector<double> scores, exps;
  for (Eigen::Index j = 0; j < k.rows(); ++j) scores.push_back(scale * static_cast<double>(q.row(train).dot(k.row(j))));
  const double top = *std::max_element(scores.begin(), scores.end());
  double exp_sum = 0;
  for (double sc : scores) exp_sum += exps.emplace_back(std::exp(sc - top));
  std::printf("How the row of \"train\" is made: score = q[train].k[j] / sqrt(8), weight = exp(score) / sum:\n\n");
  std::printf("%10s %9s %14s %9s\n", "key", "score", "exp(s - max)", "weight");
  for (Eigen::Index j = 0; j < k.rows(); ++j) {
    const auto u = static_cast<std::size_t>(j);
    std::printf("%10s %9.3f %14.4f %9.3f\n", kTokens[u].c_str(), scores[u], exps[u], exps[u] / exp_sum);
  }
  std::printf("%10s %9s %14.4f %9s\n\n", "sum", "", exp_sum, "1");

  const attend::Matrix<float> out = attend::scaled_dot_product_attention(q, k, v);

  // Each output row is the weighted sum of the value rows: out[i] = sum_j w[i][j] * v[j].
  double max_diff = 0;
  for (Eigen::Index i = 0; i < out.rows(); ++i) {
    for (Eigen::Index c = 0; c < out.cols(); ++c) {
      double sum = 0;
      for (Eigen::Index j = 0; j < v.rows(); ++j) sum += static_cast<double>(w(i, j)) * static_cast<double>(v(j, c));
      max_diff = std::max(max_diff, std::abs(sum - static_cast<double>(out(i, c))));
    }
  }

  std::printf("output[\"train\"] = ");
  for (Eigen::Index j = 0; j < w.cols(); ++j) {
    std::printf("%s%.3f*v[%s]", j ? " + " : "", static_cast<double>(w(train, j)),
                kTokens[static_cast<std::size_t>(j)].c_str());
  }
  std::printf("\n                 = [");
  for (Eigen::Index c = 0; c < out.cols(); ++c)
    std::printf("%s%.3f", c ? ", " : "", static_cast<double>(out(train, c)));
  std::printf("]\n\n");
  std::printf(
      "\"train\" and \"station\" share the railway features, so each puts most of its weight on itself\n"
      "and the other; the two \"the\" have the same embedding, so their rows are equal and every word\n"
      "gives them equal weight (equal columns).\n");
  std::printf("max |scaled_dot_product_attention - weights * values| = %.3g\n\n", max_diff);

  const std::string svg = "attention.svg";
  if (!write_svg(w, svg)) {
    std::fprintf(stderr, "error: could not write %s\n", svg.c_str());
    return 1;
  }
  std::printf("wrote %s (heatmap of the weights)\n", svg.c_str());

  // The checks (the ctest smoke test runs this program and looks at its exit code).
  double worst_sum = 0;
  for (Eigen::Index i = 0; i < w.rows(); ++i)
    worst_sum = std::max(worst_sum, std::abs(static_cast<double>(w.row(i).sum()) - 1.0));
  // Each of "train"/"station" gives the other more weight than any third word.
  const auto favours = [&](Eigen::Index a, Eigen::Index b) {
    for (Eigen::Index j = 0; j < w.cols(); ++j)
      if (j != a && j != b && !(w(a, b) > w(a, j))) return false;
    return true;
  };
  bool ok = true;
  ok &= ex::check(max_diff <= 1e-5, "each output row is the weighted sum of the value rows (within 1e-5)");
  ok &= ex::check(worst_sum <= 1e-5, "each row of weights sums to 1 (within 1e-5)");
  ok &= ex::check(favours(train, station) && favours(station, train),
                  "\"train\" and \"station\" attend to each other more than to any other word");
  ok &= ex::check(ex::max_abs_diff(w.row(0), w.row(3)) <= 1e-7 && ex::max_abs_diff(w.col(0), w.col(3)) <= 1e-7,
                  "the two \"the\" get identical rows and columns");
  return ok ? 0 : 1;
}
