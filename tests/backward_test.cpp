// The backward (attend/backward.hpp): against a double oracle that materializes every probability
// (backward_oracle.hpp), on every mask, Lq != Lk both ways, GQA and MQA, softcap, sinks, ALiBi, a bias, custom
// scales, through the default tiles and through tiles small enough to reach every edge and every split into tasks;
// against central finite differences of the double reference forward; bitwise equal for 1 and 2 threads; rows that
// see no key and keys no row sees; non-finite inputs hidden by the mask.
#include <gtest/gtest.h>

#include <attend/attend.hpp>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "backward_oracle.hpp"
#include "backward_seam.hpp"
#include "kernel_seam.hpp"
#include "test_util.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

using attend::Heads;
using attend::Index;
using attend::Mask;
using attend::Matrix;
using attend::Options;
using MD = Matrix<double>;

struct Case {
  std::string name;
  Index lq, lk, d, dv;
  Heads heads;
  Options options;
};

Options with(Mask mask, double softcap = 0, std::optional<double> scale = std::nullopt) {
  Options o;
  o.mask = mask;
  o.softcap = softcap;
  o.scale = scale;
  return o;
}

std::vector<double> spread(int n, double lo, double hi) {
  std::vector<double> v;
  for (int i = 0; i < n; ++i) v.push_back(lo + (hi - lo) * i / std::max(1, n - 1));
  return v;
}

std::vector<Case> cases() {
  std::vector<Case> all;
  const std::vector<std::pair<std::string, Mask>> masks = {{"none", Mask::none()},
                                                           {"causal", Mask::causal()},
                                                           {"top_left", Mask::causal_top_left()},
                                                           {"window5", Mask::sliding_window(5)}};
  for (const auto& [mname, mask] : masks) {
    all.push_back({"mha_self_" + mname, 23, 23, 8, 8, {2, 2}, with(mask)});
    all.push_back({"gqa_cross_lq_lt_lk_" + mname, 11, 29, 8, 6, {4, 2}, with(mask)});
    all.push_back({"mqa_cross_lq_gt_lk_" + mname, 29, 11, 4, 8, {3, 1}, with(mask)});
    all.push_back({"sdpa_" + mname, 17, 19, 16, 5, {1, 1}, with(mask, 0, 0.3)});
    Options o = with(mask, 4.0);
    o.sinks = {0.5, -1.0, 2.0, 0.0};
    o.alibi_slopes = attend::geometric_alibi_slopes(4);
    all.push_back({"softcap_sinks_alibi_" + mname, 19, 21, 8, 8, {4, 2}, o});
  }
  Options big = with(Mask::causal(), 20.0, 0.2);
  big.sinks = spread(6, -1, 1);
  big.alibi_slopes = spread(6, 0, 0.25);
  all.push_back({"long_rows_causal", 150, 170, 16, 12, {6, 3}, big});
  all.push_back({"long_rows_window", 170, 150, 8, 16, {2, 1}, with(Mask::sliding_window(40))});
  all.push_back({"one_by_one", 1, 1, 1, 1, {1, 1}, with(Mask::none())});
  all.push_back({"dead_rows_sinks", 12, 4, 8, 8, {2, 2}, [] {
                   Options o = with(Mask::causal());
                   o.sinks = {1.0, -2.0};
                   return o;
                 }()});
  return all;
}

struct Inputs {
  MD q, k, v, dout;
};

Inputs inputs(const Case& c, std::uint32_t seed) {
  std::mt19937 rng(seed);
  const auto m = [&](Index r, Index cols) { return attend_test::random_matrix<double>(r, cols, rng); };
  return {m(c.lq, c.heads.query * c.d), m(c.lk, c.heads.kv * c.d), m(c.lk, c.heads.kv * c.dv),
          m(c.lq, c.heads.query * c.dv)};
}

// Float gradients are sums of Lk (dq) or Lq (dk, dv) terms of products of rounded values; double ones are exact
// to a few ulps of the same sums.
template <class T>
double tolerance(const Case& c, const MD& want) {
  const double eps = std::numeric_limits<T>::epsilon();
  const double terms = double(std::max(c.lq, c.lk)) * double(std::max(c.d, c.dv));
  return 8 * eps * std::sqrt(terms) * (1 + (want.size() ? want.cwiseAbs().maxCoeff() : 0.0));
}

template <class T>
void expect_near(const Case& c, const attend::AttentionGradients<T>& g, const attend::AttentionGradients<double>& w,
                 const std::string& path) {
  for (const auto& [name, got, want] :
       {std::tuple{"dq", &g.dq, &w.dq}, std::tuple{"dk", &g.dk, &w.dk}, std::tuple{"dv", &g.dv, &w.dv}}) {
    ASSERT_EQ(got->rows(), want->rows()) << c.name << " " << path << " " << name;
    ASSERT_EQ(got->cols(), want->cols()) << c.name << " " << path << " " << name;
    EXPECT_TRUE(got->allFinite()) << c.name << " " << path << " " << name;
    EXPECT_LE(attend_test::max_abs_diff(*got, *want), tolerance<T>(c, *want)) << c.name << " " << path << " " << name;
  }
}

template <class T>
class Backward : public ::testing::Test {};
TYPED_TEST_SUITE(Backward, attend_test::Scalars);

// Every case through the public function and through tiles that reach every edge: single rows and keys per tile,
// tiles that do not divide the sizes, and splits of every group into query-head slices and of the keys into chunks.
TYPED_TEST(Backward, MatchesTheMaterializingOracleOnEveryPath) {
  using T = TypeParam;
  const std::vector<std::pair<std::string, attend_test::BackwardTiles>> paths = {
      {"default", attend_test::backward_tiles()},
      {"no split", attend_test::backward_tiles().with_tasks(1)},
      {"small tiles", attend_test::backward_tiles().with_queries(8).with_keys(5).with_cut_queries(4)},
      {"tiny tiles, split",
       attend_test::backward_tiles().with_queries(1).with_keys(1).with_cut_queries(1).with_tasks(64)},
      {"split", attend_test::backward_tiles().with_queries(12).with_keys(7).with_tasks(24)},
  };
  std::uint32_t seed = 1;
  for (const Case& c : cases()) {
    const Inputs in = inputs(c, seed++);
    const Matrix<T> q = in.q.cast<T>(), k = in.k.cast<T>(), v = in.v.cast<T>(), dout = in.dout.cast<T>();
    const auto want =
        attend_test::oracle_backward(q.template cast<double>(), k.template cast<double>(), v.template cast<double>(),
                                     dout.template cast<double>(), c.heads, c.options);
    const auto f = attend::multi_head_attention_with_lse(q, k, v, c.heads, c.options);
    expect_near<T>(c, attend::multi_head_attention_backward(q, k, v, f.out, f.lse, dout, c.heads, c.options), want,
                   "multi_head_attention_backward");
    for (const auto& [name, tiles] : paths)
      expect_near<T>(c, attend_test::backward_kernel(q, k, v, f.out, f.lse, dout, c.heads, c.options, tiles), want,
                     name);
    if (c.heads.query == 1) {
      const auto s = attend::scaled_dot_product_attention_with_lse(q, k, v, c.options);
      expect_near<T>(c, attend::scaled_dot_product_attention_backward(q, k, v, s.out, s.lse, dout, c.options), want,
                     "scaled_dot_product_attention_backward");
    }
  }
}

// A bias [Lq, Lk] is a constant of the scores; -inf entries hide keys, also every key of a row (that row's
// gradients are zero) and every row of a key (that key's).
TYPED_TEST(Backward, BiasIsAConstantAndMinusInfinityHides) {
  using T = TypeParam;
  std::mt19937 rng(7);
  const Index lq = 13, lk = 17, d = 8, dv = 6;
  const Matrix<T> q = attend_test::random_matrix<T>(lq, d, rng), k = attend_test::random_matrix<T>(lk, d, rng);
  const Matrix<T> v = attend_test::random_matrix<T>(lk, dv, rng), dout = attend_test::random_matrix<T>(lq, dv, rng);
  Matrix<T> bias = attend_test::random_matrix<T>(lq, lk, rng);
  const T inf = std::numeric_limits<T>::infinity();
  bias.row(3).setConstant(-inf);  // row 3 sees nothing
  bias.col(5).setConstant(-inf);  // key 5 is seen by nobody
  bias(7, 2) = -inf;
  for (const Options& o : {with(Mask::none()), with(Mask::causal(), 3.0), with(Mask::sliding_window(6), 0, 0.5)}) {
    const Case c{"bias", lq, lk, d, dv, {1, 1}, o};
    const MD bias_d = bias.template cast<double>();
    const auto want =
        attend_test::oracle_backward(q.template cast<double>(), k.template cast<double>(), v.template cast<double>(),
                                     dout.template cast<double>(), {1, 1}, o, &bias_d);
    const auto f = attend::scaled_dot_product_attention_with_lse(q, k, v, bias, o);
    const auto g = attend::scaled_dot_product_attention_backward(q, k, v, bias, f.out, f.lse, dout, o);
    expect_near<T>(c, g, want, "public");
    EXPECT_TRUE(g.dq.row(3).isZero(0));
    EXPECT_TRUE(g.dk.row(5).isZero(0));
    EXPECT_TRUE(g.dv.row(5).isZero(0));
    const auto tiles = attend_test::backward_tiles().with_queries(4).with_keys(3).with_cut_queries(1);
    expect_near<T>(c, attend_test::backward_kernel(q, k, v, f.out, f.lse, dout, {1, 1}, o, tiles, &bias), want,
                   "small tiles");
  }
}

// Central differences of sum(dout o attention(q, k, v)) in double, through the reference forward (independent of
// the kernel): the analytic gradient of a few random entries of q, k and v.
TEST(BackwardFiniteDifferences, AgreeWithCentralDifferences) {
  std::mt19937 rng(11);
  for (const Case& c : cases()) {
    if (c.lq * c.lk > 1000) continue;  // the reference forward per entry is quadratic
    const Inputs in = inputs(c, 100 + unsigned(c.lq));
    const auto f = attend::multi_head_attention_with_lse(in.q, in.k, in.v, c.heads, c.options);
    const auto g = attend::multi_head_attention_backward(in.q, in.k, in.v, f.out, f.lse, in.dout, c.heads, c.options);
    const auto loss = [&](const MD& q, const MD& k, const MD& v) {
      return (attend::reference::multi_head_attention(q, k, v, c.heads, c.options).array() * in.dout.array()).sum();
    };
    const double h = 1e-5;
    for (int which = 0; which < 3; ++which) {
      const MD& x = which == 0 ? in.q : which == 1 ? in.k : in.v;
      const MD& grad = which == 0 ? g.dq : which == 1 ? g.dk : g.dv;
      std::uniform_int_distribution<Index> row(0, x.rows() - 1), col(0, x.cols() - 1);
      for (int n = 0; n < 4; ++n) {
        const Index i = row(rng), j = col(rng);
        MD plus = x, minus = x;
        plus(i, j) += h;
        minus(i, j) -= h;
        const double numeric = which == 0   ? (loss(plus, in.k, in.v) - loss(minus, in.k, in.v)) / (2 * h)
                               : which == 1 ? (loss(in.q, plus, in.v) - loss(in.q, minus, in.v)) / (2 * h)
                                            : (loss(in.q, in.k, plus) - loss(in.q, in.k, minus)) / (2 * h);
        EXPECT_NEAR(grad(i, j), numeric, 1e-7 * (1 + std::abs(numeric)))
            << c.name << " "
            << "qkv"[which] << "(" << i << ", " << j << ")";
      }
    }
  }
}

#if defined(_OPENMP)
// The decomposition depends on the shapes only: 1 and 2 threads give the same bits, on every split.
TEST(BackwardThreads, OneAndTwoThreadsAreBitwiseEqual) {
  struct Shape {
    std::string name;
    Index lq, lk, d;
    Heads heads;
    Options options;
  };
  Options sinks = with(Mask::causal(), 5.0);
  sinks.sinks = spread(8, -1, 1);
  sinks.alibi_slopes = attend::geometric_alibi_slopes(8);
  const std::vector<Shape> shapes = {
      {"mha causal", 300, 300, 32, {8, 8}, with(Mask::causal())},
      {"gqa: heads split", 300, 260, 32, {8, 2}, sinks},
      {"mqa: heads split", 260, 300, 32, {4, 1}, with(Mask::sliding_window(77))},
      {"one head: keys split", 700, 700, 32, {1, 1}, with(Mask::none())},
      {"two heads: both split", 400, 500, 32, {2, 1}, with(Mask::causal_top_left())},
  };
  const int saved = omp_get_max_threads();
  std::mt19937 rng(3);
  for (const Shape& s : shapes) {
    const Matrix<float> q = attend_test::random_matrix<float>(s.lq, s.heads.query * s.d, rng);
    const Matrix<float> k = attend_test::random_matrix<float>(s.lk, s.heads.kv * s.d, rng);
    const Matrix<float> v = attend_test::random_matrix<float>(s.lk, s.heads.kv * s.d, rng);
    const Matrix<float> dout = attend_test::random_matrix<float>(s.lq, s.heads.query * s.d, rng);
    const auto f = attend::multi_head_attention_with_lse(q, k, v, s.heads, s.options);
    std::vector<attend::AttentionGradients<float>> runs;
    for (int threads : {1, 2, 1, 2}) {
      omp_set_num_threads(threads);
      runs.push_back(attend::multi_head_attention_backward(q, k, v, f.out, f.lse, dout, s.heads, s.options));
    }
    omp_set_num_threads(saved);
    for (std::size_t r = 1; r < runs.size(); ++r) {
      EXPECT_TRUE(runs[r].dq == runs[0].dq) << s.name << " run " << r;
      EXPECT_TRUE(runs[r].dk == runs[0].dk) << s.name << " run " << r;
      EXPECT_TRUE(runs[r].dv == runs[0].dv) << s.name << " run " << r;
    }
  }
}
#endif

// Rows that see no key (bottom-right causal with Lq > Lk, a window cut off, no keys at all) get exactly zero dq,
// with and without sinks; keys no row sees (top-left causal with Lk > Lq) get exactly zero dk and dv.
TYPED_TEST(Backward, RowsWithoutKeysAndKeysWithoutRowsGetZeros) {
  using T = TypeParam;
  std::mt19937 rng(5);
  for (bool sinks : {false, true}) {
    Options o = with(Mask::causal());
    if (sinks) o.sinks = {0.5, 1.5};
    const Index lq = 9, lk = 4;
    const Matrix<T> q = attend_test::random_matrix<T>(lq, 2 * 8, rng), k = attend_test::random_matrix<T>(lk, 8, rng);
    const Matrix<T> v = attend_test::random_matrix<T>(lk, 8, rng), dout = attend_test::random_matrix<T>(lq, 16, rng);
    const auto f = attend::multi_head_attention_with_lse(q, k, v, Heads{2, 1}, o);
    const auto g = attend::multi_head_attention_backward(q, k, v, f.out, f.lse, dout, Heads{2, 1}, o);
    EXPECT_TRUE(g.dq.topRows(lq - lk).isZero(0)) << "sinks " << sinks;
    EXPECT_TRUE(g.dq.bottomRows(lk).allFinite());
    EXPECT_FALSE(g.dq.row(lq - 1).isZero(0));
  }
  {
    const Options o = with(Mask::causal_top_left());
    const Index lq = 4, lk = 9;
    const Matrix<T> q = attend_test::random_matrix<T>(lq, 8, rng), k = attend_test::random_matrix<T>(lk, 8, rng);
    const Matrix<T> v = attend_test::random_matrix<T>(lk, 8, rng), dout = attend_test::random_matrix<T>(lq, 8, rng);
    const auto f = attend::scaled_dot_product_attention_with_lse(q, k, v, o);
    const auto g = attend::scaled_dot_product_attention_backward(q, k, v, f.out, f.lse, dout, o);
    EXPECT_TRUE(g.dk.bottomRows(lk - lq).isZero(0));
    EXPECT_TRUE(g.dv.bottomRows(lk - lq).isZero(0));
    EXPECT_FALSE(g.dv.row(0).isZero(0));
  }
  for (Index lk : {0, 3}) {  // no keys at all; keys but none visible to any row of a narrow window
    const Matrix<T> q = attend_test::random_matrix<T>(5, 8, rng), k = attend_test::random_matrix<T>(lk, 8, rng);
    const Matrix<T> v = attend_test::random_matrix<T>(lk, 4, rng), dout = attend_test::random_matrix<T>(5, 4, rng);
    Options o;
    if (lk > 0) o.mask = Mask::sliding_window(1).with_diagonal(-10);  // every key is 10 positions too late
    const auto f = attend::scaled_dot_product_attention_with_lse(q, k, v, o);
    const auto g = attend::scaled_dot_product_attention_backward(q, k, v, f.out, f.lse, dout, o);
    EXPECT_EQ(g.dq.rows(), 5);
    EXPECT_EQ(g.dk.rows(), lk);
    EXPECT_TRUE(g.dq.isZero(0));
    EXPECT_TRUE(g.dk.isZero(0));
    EXPECT_TRUE(g.dv.isZero(0));
  }
  const Matrix<T> none(0, 8), k = attend_test::random_matrix<T>(3, 8, rng);
  const auto f = attend::scaled_dot_product_attention_with_lse(none, k, k);
  const auto g = attend::scaled_dot_product_attention_backward(none, k, k, f.out, f.lse, f.out);
  EXPECT_EQ(g.dq.rows(), 0);
  EXPECT_TRUE(g.dk.isZero(0));
  EXPECT_TRUE(g.dv.isZero(0));
}

// NaN and infinity in a key, value, query or output gradient row reach only the gradients of rows that see it: a
// causal mask hides key j from queries i < j, so those queries' dq stay what they are without the bad key, and
// query i is hidden from keys j > i, so their dk and dv stay what they are without the bad query.
TYPED_TEST(Backward, NonFiniteValuesHiddenByTheMaskReachNothing) {
  using T = TypeParam;
  std::mt19937 rng(9);
  const Index L = 40, d = 8, bad = 17;
  const Options o = with(Mask::causal());
  const Matrix<T> q = attend_test::random_matrix<T>(L, 2 * d, rng), k = attend_test::random_matrix<T>(L, d, rng);
  const Matrix<T> v = attend_test::random_matrix<T>(L, d, rng), dout = attend_test::random_matrix<T>(L, 2 * d, rng);
  const auto f = attend::multi_head_attention_with_lse(q, k, v, Heads{2, 1}, o);
  const auto clean = attend::multi_head_attention_backward(q, k, v, f.out, f.lse, dout, Heads{2, 1}, o);
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  const auto tiles = attend_test::backward_tiles().with_queries(8).with_keys(6).with_cut_queries(4);
  for (const auto& t : {attend_test::backward_tiles(), tiles}) {
    Matrix<T> kb = k, vb = v;
    kb.row(bad).setConstant(nan);
    vb(bad, 3) = inf;
    const auto g = attend_test::backward_kernel(q, kb, vb, f.out, f.lse, dout, Heads{2, 1}, o, t);
    EXPECT_TRUE(g.dq.topRows(bad).allFinite());
    EXPECT_LE(attend_test::max_abs_diff(g.dq.topRows(bad), clean.dq.topRows(bad)), 1e-5);
    Matrix<T> qb = q, db = dout;
    qb(bad, 1) = nan;
    db.row(bad).setConstant(inf);
    const auto h = attend_test::backward_kernel(qb, k, v, f.out, f.lse, db, Heads{2, 1}, o, t);
    EXPECT_TRUE(h.dk.bottomRows(L - bad - 1).allFinite());
    EXPECT_TRUE(h.dv.bottomRows(L - bad - 1).allFinite());
    EXPECT_LE(attend_test::max_abs_diff(h.dk.bottomRows(L - bad - 1), clean.dk.bottomRows(L - bad - 1)), 1e-5);
    EXPECT_LE(attend_test::max_abs_diff(h.dv.bottomRows(L - bad - 1), clean.dv.bottomRows(L - bad - 1)), 1e-5);
  }
}

// Any Eigen expression binds: column-major copies, blocks and lse as a column; the results are those of plain
// row-major matrices.
TEST(BackwardApi, TakesAnyDenseExpression) {
  std::mt19937 rng(13);
  const Matrix<double> q = attend_test::random_matrix<double>(6, 8, rng),
                       k = attend_test::random_matrix<double>(7, 8, rng);
  const Matrix<double> v = attend_test::random_matrix<double>(7, 4, rng);
  const Matrix<double> dout = attend_test::random_matrix<double>(6, 4, rng);
  const auto f = attend::scaled_dot_product_attention_with_lse(q, k, v);
  const auto want = attend::scaled_dot_product_attention_backward(q, k, v, f.out, f.lse, dout);
  const Eigen::MatrixXd qc = q, kc = k, vc = v;
  const Eigen::VectorXd lse = f.lse.col(0);
  const Matrix<double> wide = attend_test::random_matrix<double>(6, 12, rng);
  Matrix<double> padded = wide;
  padded.leftCols(4) = dout;
  const auto got = attend::scaled_dot_product_attention_backward(qc, kc, vc, f.out, lse, padded.leftCols(4));
  EXPECT_TRUE(got.dq == want.dq && got.dk == want.dk && got.dv == want.dv);
  const auto mh = attend::multi_head_attention_backward(q, k, v, f.out, f.lse, dout, Heads{1, 1});
  EXPECT_TRUE(mh.dq == want.dq && mh.dk == want.dk && mh.dv == want.dv);
}

// The layers' backward against central differences of their own double forward: dx (and dcontext) and a few
// entries of every weight, bias and norm weight, for self- and cross-attention and for MLA with and without query
// compression, both RoPE layouts.
class LayerDifferences {
 public:
  template <class Loss>
  explicit LayerDifferences(Loss loss) : loss_(std::move(loss)) {}
  // The central difference of the loss in entry i of x (a matrix or vector), against the analytic gradient.
  template <class X>
  void check(X& x, Index i, double analytic, const std::string& what) {
    const double h = 1e-6, saved = x.data()[i];
    x.data()[i] = saved + h;
    const double plus = loss_();
    x.data()[i] = saved - h;
    const double minus = loss_();
    x.data()[i] = saved;
    const double numeric = (plus - minus) / (2 * h);
    EXPECT_NEAR(analytic, numeric, 1e-6 * (1 + std::abs(numeric))) << what << " entry " << i;
  }
  template <class X, class G>
  void check_some(X& x, const G& grad, const std::string& what, std::mt19937& rng) {
    ASSERT_EQ(x.size(), grad.size()) << what;
    if (x.size() == 0) return;
    std::uniform_int_distribution<Index> pick(0, x.size() - 1);
    for (int n = 0; n < 3; ++n) {
      const Index i = pick(rng);
      check(x, i, grad.data()[i], what);
    }
  }

 private:
  std::function<double()> loss_;
};

TEST(BackwardLayers, MultiHeadAttentionAgreesWithCentralDifferences) {
  std::mt19937 rng(21);
  for (auto [heads, kv_heads, cross] : {std::tuple{4, 2, false}, std::tuple{4, 1, true}, std::tuple{2, 2, false}}) {
    attend::MultiHeadAttention<double> m = attend_test::random_mha<double>(16, heads, kv_heads, 6, rng);
    MD x = attend_test::random_matrix<double>(7, 16, rng), ctx = attend_test::random_matrix<double>(9, 16, rng);
    const MD dy = attend_test::random_matrix<double>(7, 16, rng);
    Options o = with(cross ? Mask::none() : Mask::causal(), 3.0);
    o.sinks = spread(heads, -1, 1);
    const auto g = cross ? m.backward(x, ctx, dy, o) : m.backward(x, dy, o);
    const bool is_cross = cross;  // a lambda may not capture a structured binding in C++17
    LayerDifferences fd(
        [&] { return ((is_cross ? m.forward(x, ctx, o) : m.forward(x, o)).array() * dy.array()).sum(); });
    const std::string tag = std::to_string(heads) + "/" + std::to_string(kv_heads) + (cross ? " cross " : " self ");
    fd.check_some(x, g.dx, tag + "dx", rng);
    if (cross)
      fd.check_some(ctx, g.dcontext, tag + "dcontext", rng);
    else
      EXPECT_EQ(g.dcontext.size(), 0);
    for (auto [lin, grad] : {std::pair{&m.q_proj, &g.q_proj}, std::pair{&m.k_proj, &g.k_proj},
                             std::pair{&m.v_proj, &g.v_proj}, std::pair{&m.o_proj, &g.o_proj}}) {
      fd.check_some(lin->weight, grad->weight, tag + "weight", rng);
      fd.check_some(lin->bias, grad->bias, tag + "bias", rng);
    }
  }
  // No biases: no bias gradients.
  const attend::MultiHeadAttention<double> plain = attend_test::random_mha<double>(8, 2, 2, 4, rng, false);
  const MD x = attend_test::random_matrix<double>(3, 8, rng);
  const auto g = plain.backward(x, x);
  EXPECT_EQ(g.q_proj.bias.size(), 0);
  EXPECT_EQ(g.o_proj.bias.size(), 0);
  EXPECT_EQ(g.q_proj.weight.rows(), 8);
}

TEST(BackwardLayers, LatentAttentionAgreesWithCentralDifferences) {
  std::mt19937 rng(23);
  for (int q_lora : {0, 8})
    for (attend::RopeLayout layout : {attend::RopeLayout::interleaved, attend::RopeLayout::half_split}) {
      attend::MultiHeadLatentAttention<double> m({16, 3, q_lora, 6, 4, 4, 5, 10000.0, layout});
      for (auto* lin : {&m.q_proj, &m.q_a_proj, &m.q_b_proj, &m.kv_a_proj_with_mqa, &m.kv_b_proj, &m.o_proj})
        if (lin->weight.size() != 0) attend_test::randomize(*lin, rng);
      m.kv_a_layernorm.weight = attend_test::random_matrix<double>(6, 1, rng, 0.2).array() + 1;
      if (q_lora > 0) m.q_a_layernorm.weight = attend_test::random_matrix<double>(q_lora, 1, rng, 0.2).array() + 1;
      MD x = attend_test::random_matrix<double>(6, 16, rng);
      const MD dy = attend_test::random_matrix<double>(6, 16, rng);
      const Options o = with(Mask::causal());
      const auto g = m.backward(x, dy, o);
      LayerDifferences fd([&] { return (m.forward(x, o).array() * dy.array()).sum(); });
      const std::string tag = "q_lora " + std::to_string(q_lora) + " ";
      fd.check_some(x, g.dx, tag + "dx", rng);
      for (auto [lin, grad] :
           {std::pair{&m.q_proj, &g.q_proj}, std::pair{&m.q_a_proj, &g.q_a_proj}, std::pair{&m.q_b_proj, &g.q_b_proj},
            std::pair{&m.kv_a_proj_with_mqa, &g.kv_a_proj_with_mqa}, std::pair{&m.kv_b_proj, &g.kv_b_proj},
            std::pair{&m.o_proj, &g.o_proj}}) {
        fd.check_some(lin->weight, grad->weight, tag + "weight", rng);
        fd.check_some(lin->bias, grad->bias, tag + "bias", rng);
      }
      fd.check_some(m.kv_a_layernorm.weight, g.kv_a_layernorm.weight, tag + "kv_a_layernorm", rng);
      fd.check_some(m.q_a_layernorm.weight, g.q_a_layernorm.weight, tag + "q_a_layernorm", rng);
    }
}

// Empty inputs: gradients of the right shapes, all zero.
TEST(BackwardLayers, EmptyInputsGiveZeroGradientsOfTheRightShapes) {
  std::mt19937 rng(25);
  const attend::MultiHeadAttention<float> m = attend_test::random_mha<float>(8, 2, 1, 4, rng);
  const Matrix<float> none(0, 8), ctx = attend_test::random_matrix<float>(3, 8, rng);
  const auto g = m.backward(none, ctx, none);
  EXPECT_EQ(g.dx.rows(), 0);
  EXPECT_EQ(g.dcontext.rows(), 3);
  EXPECT_TRUE(g.dcontext.isZero(0));
  EXPECT_TRUE(g.k_proj.weight.isZero(0));
  EXPECT_EQ(g.k_proj.weight.rows(), 4);
  attend::MultiHeadLatentAttention<float> mla({8, 2, 4, 6, 4, 2, 4});
  mla.kv_a_layernorm.weight = attend::Vector<float>::Ones(6);
  const auto gl = mla.backward(none, none);
  EXPECT_EQ(gl.dx.rows(), 0);
  EXPECT_EQ(gl.q_a_proj.weight.rows(), 4);
  EXPECT_TRUE(gl.kv_b_proj.weight.isZero(0));
  EXPECT_EQ(gl.kv_a_layernorm.weight.size(), 6);
}

}  // namespace
