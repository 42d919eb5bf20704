// Golden tests of sinks (gpt-oss) and ALiBi (BLOOM) against PyTorch: tests/data/sinks_alibi.txt, written by
// tests/reference/generate_sinks_alibi.py in float64 eager torch (the sink as one more softmax column, dropped
// afterwards; ALiBi's -m_h |i + Lk - Lq - j|). Every case runs for float and double through the public
// multi-head functions, the single-head ones where H = 1, and the kernel with small tiles (both mainloops and the
// split-key path, where sinks are applied after the merge). Tolerances as in golden_kernels_test.cpp: outputs
// within 8 eps (1 + S)(1 + V), S the largest score magnitude; lse within that times (1 + log Lk); rows without a
// visible key exactly zero.
#include <gtest/gtest.h>

#include <attend/attend.hpp>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "golden.hpp"
#include "kernel_seam.hpp"
#include "test_util.hpp"

namespace {

using attend::Heads;
using attend::Index;
using attend::Matrix;
using attend::Options;
using attend_test::GoldenCase;

const std::vector<GoldenCase>& all_cases() {
  static const std::vector<GoldenCase> cases = attend_test::load_golden("sinks_alibi.txt");
  return cases;
}

template <class T>
Matrix<T> as(const Eigen::MatrixXd& m) {
  return m.cast<T>();
}

// The largest |score| term of the case (S in golden_kernels_test.cpp), ALiBi's penalties included.
double score_scale(const GoldenCase& c) {
  const Heads h{c.heads, c.kv_heads};
  const Index d = c.m.at("q").cols() / h.query, lq = c.m.at("q").rows(), lk = c.m.at("k").rows();
  const double scale = c.scale ? *c.scale : 1 / std::sqrt(double(d));
  double s = 0;
  for (int head = 0; head < h.query; ++head) {
    const int g = head / (h.query / h.kv);
    const Eigen::MatrixXd qh = c.m.at("q").middleCols(head * d, d).cwiseAbs();
    const Eigen::MatrixXd kh = c.m.at("k").middleCols(g * d, d).cwiseAbs();
    if (lq > 0 && lk > 0) s = std::max(s, scale * (qh * kh.transpose()).maxCoeff());
  }
  if (c.has("alibi")) s += c.m.at("alibi").maxCoeff() * double(lq + lk);
  if (c.has("sinks")) s = std::max(s, c.m.at("sinks").cwiseAbs().maxCoeff());
  return s;
}

template <class T>
void expect_matches(const GoldenCase& c, const Matrix<T>& out, const Matrix<T>* lse, const std::string& path) {
  const Eigen::MatrixXd& want = c.m.at("out");
  const double eps = std::numeric_limits<T>::epsilon(), S = score_scale(c);
  const double V = c.m.at("v").size() ? c.m.at("v").cwiseAbs().maxCoeff() : 0.0;
  const double tol = 8 * eps * (1 + S) * (1 + V);
  ASSERT_EQ(out.rows(), want.rows()) << c.name << " " << path;
  ASSERT_EQ(out.cols(), want.cols()) << c.name << " " << path;
  for (Index i = 0; i < want.rows(); ++i)
    for (Index j = 0; j < want.cols(); ++j) {
      if (want(i, j) == 0 && want.row(i).isZero(0)) {
        EXPECT_EQ(out(i, j), T(0)) << c.name << " " << path << ": row " << i << " sees no key";
      } else {
        EXPECT_NEAR(double(out(i, j)), want(i, j), tol) << c.name << " " << path << " (" << i << ", " << j << ")";
      }
    }
  if (!lse) return;
  const Eigen::MatrixXd& want_lse = c.m.at("lse");
  const double lse_tol = tol * (1 + std::log(1.0 + double(c.m.at("k").rows())));
  for (Index i = 0; i < want_lse.rows(); ++i)
    for (Index h = 0; h < want_lse.cols(); ++h) {
      if (std::isinf(want_lse(i, h)))
        EXPECT_EQ(double((*lse)(i, h)), want_lse(i, h)) << c.name << " " << path << " lse(" << i << ", " << h << ")";
      else
        EXPECT_NEAR(double((*lse)(i, h)), want_lse(i, h), lse_tol)
            << c.name << " " << path << " lse(" << i << ", " << h << ")";
    }
}

template <class T>
class GoldenSinksAlibi : public ::testing::Test {};
TYPED_TEST_SUITE(GoldenSinksAlibi, attend_test::Scalars);

TYPED_TEST(GoldenSinksAlibi, EveryCaseMatchesPyTorchOnEveryPath) {
  using T = TypeParam;
  int checked = 0;
  for (const GoldenCase& c : all_cases()) {
    if (c.kind != "mha") continue;
    const Heads h{c.heads, c.kv_heads};
    const Options o = attend_test::options_of(c);
    const Matrix<T> q = as<T>(c.m.at("q")), k = as<T>(c.m.at("k")), v = as<T>(c.m.at("v"));
    const auto r = attend::multi_head_attention_with_lse(q, k, v, h, o);
    expect_matches<T>(c, r.out, &r.lse, "multi_head_attention_with_lse");
    expect_matches<T>(c, attend::multi_head_attention(q, k, v, h, o), nullptr, "multi_head_attention");
    // Small tiles: every tile edge through both mainloops (few_rows 16 and 0), and the split-key path with
    // chunks of 3 keys, whose sinks are applied to the merged rows.
    for (Index few_rows : {16, 0}) {
      const auto tiles = attend_test::tiles()
                             .with_queries(4)
                             .with_keys(4)
                             .with_decode_chunk(3)
                             .with_few_rows_keys(4)
                             .with_cut_keys(2)
                             .with_few_rows(few_rows);
      Matrix<T> lse;
      const Matrix<T> out = attend_test::kernel(q, k, v, h, o, tiles, nullptr, &lse);
      expect_matches<T>(c, out, &lse, "small tiles, few_rows " + std::to_string(few_rows));
    }
    if (h.query == 1) {
      const auto s = attend::scaled_dot_product_attention_with_lse(q, k, v, o);
      expect_matches<T>(c, s.out, &s.lse, "scaled_dot_product_attention_with_lse");
      if (c.has("weights")) {
        const Matrix<T> w = attend::attention_weights(q, k, o);
        const double tol = 8 * std::numeric_limits<T>::epsilon() * (1 + score_scale(c));
        ASSERT_EQ(w.rows(), c.m.at("weights").rows());
        for (Index i = 0; i < w.rows(); ++i)
          for (Index j = 0; j < w.cols(); ++j) EXPECT_NEAR(double(w(i, j)), c.m.at("weights")(i, j), tol) << c.name;
        // With a sink the weights of a row that sees keys sum to less than 1.
        for (Index i = 0; i < w.rows(); ++i) EXPECT_LT(double(w.row(i).sum()), 1.0) << c.name << " row " << i;
      }
    }
    ++checked;
  }
  EXPECT_EQ(checked, 46);
}

TEST(GoldenSinksAlibi, GeometricSlopesAreTheAlibiPapersAndGgmls) {
  int checked = 0;
  for (const GoldenCase& c : all_cases()) {
    if (c.kind != "slopes") continue;
    const std::vector<double> got = attend::geometric_alibi_slopes(c.integer("heads"), c.number("max_bias"));
    const Eigen::MatrixXd& want = c.m.at("slopes");
    ASSERT_EQ(Index(got.size()), want.cols()) << c.name;
    for (Index h = 0; h < want.cols(); ++h) EXPECT_NEAR(got[h], want(0, h), 1e-13 * want(0, h)) << c.name << " " << h;
    ++checked;
  }
  // Powers of two and not, max_bias 8 (BLOOM) and others (ggml). The reference raises m0 to powers, which rounds
  // up to ~1e-14 relative by head 80; attend's one exp2 per slope is within an ulp or so of the exact value.
  EXPECT_EQ(checked, 14);
}

}  // namespace
