// Property tests: seeded random shapes, masks, scales, softcaps, biases and head groupings, each case compared
// with the double-precision attend::reference (kernels) or with a double copy of the same layer (layers), for
// float and double. Every public kernel is exercised, the blocked kernel also with random small tiles (tile
// edges everywhere, the split-key decode path with tiny chunks), and with OpenMP at 1 and 2 threads, which
// must agree bit for bit.
//
// The number of cases is fixed (sized so that the whole file runs in a few seconds in Release), never a
// wall-clock budget, so a slow machine runs the same cases as a fast one. On failure the case's seed and
// parameters are printed; rerun one case with
//   ATTEND_PROPERTY_SEED=<seed> ATTEND_PROPERTY_CASES=1 ./property_test --gtest_filter=<test>
// ATTEND_PROPERTY_CASES=<n> sets every test's case count; ATTEND_PROPERTY_SCALE=<x> multiplies each test's own
// count (x = 10: a long exploratory run; x = 0.25: scripts/memcheck.sh under valgrind); ATTEND_PROPERTY_SEED=<s>
// moves the first seed.
#include <gtest/gtest.h>

#include <attend/attend.hpp>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include "kernel_seam.hpp"
#include "test_util.hpp"

using attend::Heads;
using attend::Index;
using attend::Mask;
using attend::Matrix;
using attend::Options;
using attend::Vector;
using attend_test::max_abs_diff;

namespace {

// ---------------------------------------------------------------------------------------------------------------
// Case counts and seeds.

int case_count(int fixed) {
  if (const char* s = std::getenv("ATTEND_PROPERTY_CASES")) return std::max(1, std::atoi(s));
  if (const char* s = std::getenv("ATTEND_PROPERTY_SCALE")) return std::max(1, int(std::lround(fixed * std::atof(s))));
  return fixed;
}

std::uint64_t first_seed(std::uint64_t fixed) {
  if (const char* s = std::getenv("ATTEND_PROPERTY_SEED")) return std::strtoull(s, nullptr, 10);
  return fixed;
}

// Runs `body(seed, i)` for each case; stops at the first failing case so one bug prints one report.
template <class Body>
void for_cases(std::uint64_t seed0, int count, Body body) {
  const std::uint64_t s0 = first_seed(seed0);
  for (int i = 0; i < case_count(count); ++i) {
    const std::uint64_t seed = s0 + std::uint64_t(i);
    body(seed, i);
    if (::testing::Test::HasFailure()) {
      ADD_FAILURE() << "first failing case: ATTEND_PROPERTY_SEED=" << seed << " ATTEND_PROPERTY_CASES=1";
      return;
    }
  }
}

struct Rng {
  std::mt19937_64 gen;
  explicit Rng(std::uint64_t seed) : gen(seed) {}
  Index uniform(Index lo, Index hi) { return std::uniform_int_distribution<Index>(lo, hi)(gen); }
  double real(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(gen); }
  double log_uniform(double lo, double hi) { return std::exp(real(std::log(lo), std::log(hi))); }
  bool chance(double p) { return real(0, 1) < p; }
  template <class T>
  Matrix<T> matrix(Index rows, Index cols, double stddev) {
    std::normal_distribution<double> dist(0.0, stddev);
    Matrix<T> m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(dist(gen));
    return m;
  }
};

// Columns [c0, c0 + n) of m as a plain matrix. Eigen forms a block of an empty matrix by offsetting its null
// data pointer, which UBSan reports as undefined behaviour; empty matrices are sliced by shape only.
template <class M>
typename M::PlainObject cols(const M& m, Index c0, Index n) {
  if (m.size() == 0) return typename M::PlainObject(m.rows(), n);
  return m.middleCols(c0, n);
}

Mask random_mask(Rng& r, Index lk) {
  switch (r.uniform(0, 3)) {
    case 0:
      return Mask::none();
    case 1:
      return Mask::causal();
    case 2:
      return Mask::causal_top_left();
    default:
      return Mask::sliding_window(r.chance(0.3) ? 1 : r.uniform(1, lk + 3));
  }
}

Options random_options(Rng& r, Index lk) {
  Options o;
  o.mask = random_mask(r, lk);
  // A fixed diagonal (blocks of one longer sequence, as ring attention uses) on some masks.
  if (r.chance(0.15)) o.mask = o.mask.with_diagonal(r.uniform(-lk - 3, lk + 3));
  if (r.chance(0.5)) o.scale = r.log_uniform(0.05, 3.0);
  if (r.chance(0.4)) o.softcap = r.log_uniform(0.5, 50.0);
  return o;
}

std::string describe_options(const Options& o) {
  std::ostringstream os;
  os << "mask " << o.mask << ", scale ";
  if (o.scale)
    os << *o.scale;
  else
    os << "default";
  os << ", softcap " << o.softcap;
  return os.str();
}

// Random small tiles: queries, keys and decode chunk drawn from the given ranges, the rest derived from them (no
// new draw, so the seeds keep their cases): cut tiles, packed products on every tile for odd query tiles, key tiles
// packed one by one for key tiles that are multiples of 3.
attend_test::Tiles random_tiles(Rng& r, Index q_lo, Index q_hi, Index k_lo, Index k_hi, Index c_lo, Index c_hi) {
  const Index queries = r.uniform(q_lo, q_hi), keys = r.uniform(k_lo, k_hi), chunk = r.uniform(c_lo, c_hi);
  attend_test::Tiles t =
      attend_test::tiles().with_queries(queries).with_keys(keys).with_decode_chunk(chunk).with_cut_keys(1 +
                                                                                                        chunk % keys);
  if (queries % 2 == 1) t.with_few_rows(0);
  if (keys % 3 == 0) t.with_pack_groups(false);
  return t;
}

// ---------------------------------------------------------------------------------------------------------------
// Kernel cases.

template <class T>
struct KernelCase {
  Index lq, lk, d, dv;
  Heads heads;
  Options options;
  Matrix<T> q, k, v;
  bool has_bias = false;
  Matrix<T> bias;  // [lq, lk], shared by all heads
  attend_test::Tiles tiles;

  std::string describe() const {
    std::ostringstream os;
    os << "lq " << lq << ", lk " << lk << ", d " << d << ", dv " << dv << ", heads " << heads.query << "/" << heads.kv
       << ", " << describe_options(options) << ", bias " << (has_bias ? "yes" : "no") << ", tiles " << tiles.queries()
       << "x" << tiles.keys() << " chunk " << tiles.decode_chunk();
    return os.str();
  }
};

// Shapes: mostly small (every tile edge with small tiles), some single rows or keys, some empty, and some long
// rows that take the split-key decode path with the default 1024-key chunks.
template <class T>
KernelCase<T> random_kernel_case(Rng& r) {
  KernelCase<T> c;
  const Index kv = r.chance(0.3) ? 1 : r.uniform(1, 3);
  const Index group = r.chance(0.3) ? 1 : r.uniform(1, 4);
  c.heads = Heads{int(kv * group), int(kv)};
  const double shape = r.real(0, 1);
  if (shape < 0.04) {
    c.lq = r.uniform(0, 3), c.lk = r.uniform(0, 3);
  } else if (shape < 0.12) {
    c.lq = 1, c.lk = r.uniform(1, 40);
  } else if (shape < 0.18) {
    c.lq = r.uniform(1, 40), c.lk = 1;
  } else if (shape < 0.22) {
    c.lq = r.uniform(1, 3), c.lk = r.uniform(1025, 2200);  // decode over two or three chunks
  } else {
    c.lq = r.uniform(1, 40), c.lk = r.uniform(1, 80);
  }
  if (r.chance(0.03)) c.lq = 0;
  if (r.chance(0.03)) c.lk = 0;
  c.d = r.chance(0.1) ? 1 : r.uniform(1, 16);
  c.dv = r.chance(0.1) ? 1 : r.uniform(1, 12);
  c.options = random_options(r, c.lk);
  const double sq = r.log_uniform(0.1, 3.0), sk = r.log_uniform(0.1, 3.0);
  c.q = r.matrix<T>(c.lq, c.heads.query * c.d, sq);
  c.k = r.matrix<T>(c.lk, c.heads.kv * c.d, sk);
  c.v = r.matrix<T>(c.lk, c.heads.kv * c.dv, 1.0);
  c.has_bias = r.chance(0.3);
  if (c.has_bias) {
    c.bias = r.matrix<T>(c.lq, c.lk, r.log_uniform(0.1, 5.0));
    for (Index i = 0; i < c.bias.size(); ++i)
      if (r.chance(0.1)) c.bias.data()[i] = -std::numeric_limits<T>::infinity();
    if (c.lq > 0 && r.chance(0.2)) c.bias.row(r.uniform(0, c.lq - 1)).setConstant(-std::numeric_limits<T>::infinity());
  }
  c.tiles = random_tiles(r, 1, 9, 1, 17, 1, 33);
  return c;
}

// The scores of head h exactly as the reference forms them (double), -inf where hidden.
template <class T>
Matrix<double> scores(const KernelCase<T>& c, int h) {
  const int g = h / (c.heads.query / c.heads.kv);
  const Matrix<double> q = cols(c.q, h * c.d, c.d).template cast<double>();
  const Matrix<double> k = cols(c.k, g * c.d, c.d).template cast<double>();
  const double scale = c.options.scale ? *c.options.scale : 1.0 / std::sqrt(double(c.d));
  Matrix<double> s = (q * k.transpose()) * scale;
  if (c.options.softcap > 0) s = (s.array() / c.options.softcap).tanh().matrix() * c.options.softcap;
  if (c.has_bias) s += c.bias.template cast<double>();
  for (Index i = 0; i < c.lq; ++i)
    for (Index j = 0; j < c.lk; ++j)
      if (!c.options.mask.visible(i, j, c.lq, c.lk)) s(i, j) = -std::numeric_limits<double>::infinity();
  return s;
}

// Expected output (reference per head, with the shared bias) and log-sum-exp.
template <class T>
void expected(const KernelCase<T>& c, Matrix<double>& out, Matrix<double>& lse, double& max_score) {
  const int group = c.heads.query / c.heads.kv;
  out = Matrix<double>::Zero(c.lq, c.heads.query * c.dv);
  lse = Matrix<double>(c.lq, c.heads.query);
  const Matrix<double> bias = c.has_bias ? Matrix<double>(c.bias.template cast<double>()) : Matrix<double>();
  max_score = 0;
  if (c.lq == 0) return;
  for (int h = 0; h < c.heads.query; ++h) {
    const int g = h / group;
    out.middleCols(h * c.dv, c.dv) = attend::reference::scaled_dot_product_attention(
        cols(c.q, h * c.d, c.d), cols(c.k, g * c.d, c.d), cols(c.v, g * c.dv, c.dv), c.options,
        c.has_bias ? &bias : nullptr);
    const Matrix<double> s = scores(c, h);
    for (Index i = 0; i < c.lq; ++i) {
      double m = -std::numeric_limits<double>::infinity();
      for (Index j = 0; j < c.lk; ++j) m = std::max(m, s(i, j));
      if (m == -std::numeric_limits<double>::infinity()) {
        lse(i, h) = m;
        continue;
      }
      double sum = 0;
      for (Index j = 0; j < c.lk; ++j) sum += std::exp(s(i, j) - m);
      lse(i, h) = m + std::log(sum);
    }
    // The conditioning of the scores: rounding in T moves a score by ~eps * (scale * sum |q_t k_t| + |bias|).
    const double scale = c.options.scale ? *c.options.scale : 1.0 / std::sqrt(double(c.d));
    const Matrix<double> q = cols(c.q, h * c.d, c.d).template cast<double>().cwiseAbs();
    const Matrix<double> k = cols(c.k, g * c.d, c.d).template cast<double>().cwiseAbs();
    // Under a softcap c the capped score moves by at most ~eps * c (tanh' damps large raw scores).
    if (c.lq > 0 && c.lk > 0) {
      double b = 0;
      if (c.has_bias)
        for (Index i = 0; i < bias.size(); ++i)
          if (std::isfinite(bias.data()[i])) b = std::max(b, std::abs(bias.data()[i]));
      double raw = scale * (q * k.transpose()).maxCoeff();
      if (c.options.softcap > 0) raw = std::min(raw, c.options.softcap);
      max_score = std::max(max_score, raw + b);
    }
  }
}

// Output tolerance: T's base tolerance for scores of order 1, grown with the largest possible score (a score of
// size S carries an absolute rounding of ~eps * S, which moves the weights by as much).
template <class T>
double out_tol(double max_score) {
  return attend_test::tolerance<T>() * (1 + max_score / 4);
}
template <class T>
double lse_tol(double max_score, Index lk) {
  return attend_test::tolerance<T>() * (2 + max_score + std::log1p(double(lk)));
}

// Compares lse, treating -inf as a value (rows without visible keys).
template <class T>
::testing::AssertionResult lse_near(const Matrix<T>& got, const Matrix<double>& want, double tol) {
  if (got.rows() != want.rows() || got.cols() != want.cols()) return ::testing::AssertionFailure() << "lse shape";
  for (Index i = 0; i < got.rows(); ++i)
    for (Index h = 0; h < got.cols(); ++h) {
      const double g = got(i, h), w = want(i, h);
      if (std::isinf(w) || std::isinf(g)) {
        if (g != w) return ::testing::AssertionFailure() << "lse(" << i << ", " << h << ") = " << g << ", want " << w;
      } else if (!(std::abs(g - w) <= tol)) {
        return ::testing::AssertionFailure() << "lse(" << i << ", " << h << ") = " << g << ", want " << w;
      }
    }
  return ::testing::AssertionSuccess();
}

template <class T>
Matrix<T> run_blocked(const KernelCase<T>& c, const attend_test::Tiles& tiles, Matrix<T>* lse = nullptr) {
  return attend_test::kernel(c.q, c.k, c.v, c.heads, c.options, tiles, c.has_bias ? &c.bias : nullptr, lse);
}

// One kernel case through every public function that accepts it and the blocked kernel with small tiles.
template <class T>
void check_kernel_case(const KernelCase<T>& c, Rng& r) {
  Matrix<double> want, want_lse;
  double smax = 0;
  expected(c, want, want_lse, smax);
  const double tol = out_tol<T>(smax), ltol = lse_tol<T>(smax, c.lk);
  const Heads h = c.heads;

  // Small tiles: every tile edge, the split-key path whenever the queries fit one tile.
  Matrix<T> lse(c.lq, h.query);
  const Matrix<T> tiled = run_blocked(c, c.tiles, &lse);
  ASSERT_LE(max_abs_diff(tiled, want), tol) << "blocked kernel, small tiles";
  ASSERT_TRUE(lse_near(lse, want_lse, ltol)) << "blocked kernel, small tiles";

  if (c.has_bias) {
    if (h.query == 1) {
      const Matrix<double> bias_d = c.bias.template cast<double>();
      const Matrix<T> out = attend::scaled_dot_product_attention(c.q, c.k, c.v, c.bias, c.options);
      ASSERT_LE(max_abs_diff(out, want), tol) << "scaled_dot_product_attention with bias";
      const Matrix<T> w = attend::attention_weights(c.q, c.k, c.bias, c.options);
      ASSERT_LE(max_abs_diff(w, attend::reference::attention_weights(c.q, c.k, c.options, &bias_d)), tol)
          << "attention_weights with bias";
      // The naive path (materialized weights times values) agrees with the blocked one.
      ASSERT_LE(max_abs_diff(Matrix<T>(w * c.v), want), tol) << "weights * v";
    } else {
      ASSERT_LE(max_abs_diff(run_blocked(c, attend_test::tiles()), want), tol)
          << "blocked kernel, default tiles, shared bias";
    }
    return;  // no other public function takes a bias
  }

  const Matrix<T> mha = attend::multi_head_attention(c.q, c.k, c.v, h, c.options);
  ASSERT_LE(max_abs_diff(mha, want), tol) << "multi_head_attention";
  const auto with_lse = attend::multi_head_attention_with_lse(c.q, c.k, c.v, h, c.options);
  ASSERT_EQ(with_lse.out, mha) << "multi_head_attention_with_lse: another output";
  ASSERT_TRUE(lse_near(with_lse.lse, want_lse, ltol)) << "multi_head_attention_with_lse";
  ASSERT_EQ(attend::grouped_query_attention(c.q, c.k, c.v, h.query, h.kv, c.options), mha) << "grouped_query_attention";
  if (h.kv == 1) {
    ASSERT_EQ(attend::multi_query_attention(c.q, c.k, c.v, h.query, c.options), mha);
  }
  // _into a block of a wider matrix: writes exactly the result, nothing around it.
  if (c.lq > 0) {
    Matrix<T> wide = Matrix<T>::Constant(c.lq, mha.cols() + 3, T(7));
    attend::multi_head_attention_into(c.q, c.k, c.v, h, wide.middleCols(2, mha.cols()), c.options);
    ASSERT_EQ(Matrix<T>(wide.middleCols(2, mha.cols())), mha) << "multi_head_attention_into";
    ASSERT_TRUE((wide.leftCols(2).array() == T(7)).all() && (wide.rightCols(1).array() == T(7)).all());
  }
  ASSERT_LE(max_abs_diff(attend::reference::multi_head_attention(c.q, c.k, c.v, h, c.options), want), 1e-12)
      << "reference::multi_head_attention against the per-head reference";

  // Exact merging: split the keys into random disjoint ranges (mask-relative positions are those of the whole
  // row, so only Mask::none() splits freely).
  if (c.options.mask == Mask::none() && c.lk >= 2) {
    std::vector<attend::AttentionResult<T>> parts;
    Index begin = 0;
    while (begin < c.lk) {
      const Index n = r.uniform(1, c.lk - begin);
      parts.push_back(
          attend::multi_head_attention_with_lse(c.q, c.k.middleRows(begin, n), c.v.middleRows(begin, n), h, c.options));
      begin += n;
    }
    const auto merged = attend::merge_attention(parts);
    ASSERT_LE(max_abs_diff(merged.out, want), 2 * tol) << "merge_attention of " << parts.size() << " parts";
    ASSERT_TRUE(lse_near(merged.lse, want_lse, 2 * ltol)) << "merge_attention";
  }

  if (h.query == 1) {
    const Matrix<T> sdpa = attend::scaled_dot_product_attention(c.q, c.k, c.v, c.options);
    ASSERT_EQ(sdpa, mha) << "scaled_dot_product_attention differs from multi_head_attention with one head";
    const auto r1 = attend::scaled_dot_product_attention_with_lse(c.q, c.k, c.v, c.options);
    ASSERT_EQ(r1.out, sdpa);
    ASSERT_TRUE(lse_near(r1.lse, want_lse, ltol));
    Matrix<T> into(c.lq, c.dv);
    attend::scaled_dot_product_attention_into(c.q, c.k, c.v, into, c.options);
    ASSERT_EQ(into, sdpa) << "scaled_dot_product_attention_into";
    const Matrix<T> w = attend::attention_weights(c.q, c.k, c.options);
    ASSERT_LE(max_abs_diff(w, attend::reference::attention_weights(c.q, c.k, c.options)), tol) << "attention_weights";
    for (Index i = 0; i < c.lq; ++i) {
      const double sum = w.row(i).template cast<double>().sum();
      ASSERT_TRUE(std::abs(sum - 1) < 1e3 * std::numeric_limits<T>::epsilon() ||
                  (sum == 0 && std::isinf(want_lse(i, 0))))
          << "weights of row " << i << " sum to " << sum;
    }
    ASSERT_LE(max_abs_diff(Matrix<T>(w * c.v), want), tol) << "weights * v";
  } else {
    // Splitting the embedding: head h of multi-head attention is single-head attention on its slices.
    const int group = h.query / h.kv;
    for (int hh = 0; hh < h.query; ++hh) {
      const int g = hh / group;
      const Matrix<T> one = attend::scaled_dot_product_attention(cols(c.q, hh * c.d, c.d), cols(c.k, g * c.d, c.d),
                                                                 cols(c.v, g * c.dv, c.dv), c.options);
      ASSERT_LE(max_abs_diff(one, cols(mha, hh * c.dv, c.dv)), 2 * tol) << "head " << hh << " alone";
    }
  }
}

template <class T>
class Property : public ::testing::Test {};
TYPED_TEST_SUITE(Property, attend_test::Scalars);

TYPED_TEST(Property, KernelsMatchTheReference) {
  using T = TypeParam;
  for_cases(std::is_same_v<T, float> ? 1000000 : 2000000, 2500, [](std::uint64_t seed, int i) {
    Rng r(seed);
    const KernelCase<T> c = random_kernel_case<T>(r);
    SCOPED_TRACE("seed " + std::to_string(seed) + " (case " + std::to_string(i) + "): " + c.describe());
    check_kernel_case(c, r);
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Threads: the same call at 1 and 2 OpenMP threads, bit for bit, on shapes large enough to start the team.

#if defined(_OPENMP)
struct Threads {
  int saved = omp_get_max_threads();
  ~Threads() { omp_set_num_threads(saved); }
};

template <class T>
KernelCase<T> random_threaded_case(Rng& r) {
  KernelCase<T> c;
  const Index kv = r.uniform(1, 3), group = r.uniform(1, 3);
  c.heads = Heads{int(kv * group), int(kv)};
  const bool decode = r.chance(0.4);
  c.lq = decode ? r.uniform(1, 4) : r.uniform(40, 300);
  c.lk = decode ? r.uniform(1025, 5000) : r.uniform(100, 600);
  c.d = r.uniform(8, 32), c.dv = r.uniform(8, 32);
  // Enough work (> 2^23 multiply-adds, twice the kernel's threshold) that the kernel starts its OpenMP team.
  const Index per_key = c.lq * c.heads.query * (c.d + c.dv);
  c.lk = std::max(c.lk, (Index(1) << 23) / per_key + 1);
  c.options = random_options(r, c.lk);
  c.q = r.matrix<T>(c.lq, c.heads.query * c.d, 1.0);
  c.k = r.matrix<T>(c.lk, c.heads.kv * c.d, 1.0);
  c.v = r.matrix<T>(c.lk, c.heads.kv * c.dv, 1.0);
  c.has_bias = r.chance(0.25);
  if (c.has_bias) c.bias = r.matrix<T>(c.lq, c.lk, 1.0);
  c.tiles = random_tiles(r, 8, 64, 8, 64, 64, 512);
  return c;
}

TYPED_TEST(Property, OneAndTwoThreadsAgreeBitForBit) {
  using T = TypeParam;
  const Threads restore;
  for_cases(std::is_same_v<T, float> ? 3000000 : 4000000, 60, [](std::uint64_t seed, int i) {
    Rng r(seed);
    const KernelCase<T> c = random_threaded_case<T>(r);
    SCOPED_TRACE("seed " + std::to_string(seed) + " (case " + std::to_string(i) + "): " + c.describe());
    Matrix<T> out[2], tiled[2], lse[2];
    for (int t : {0, 1}) {
      omp_set_num_threads(t + 1);
      out[t] = c.has_bias ? run_blocked(c, attend_test::tiles())
                          : attend::multi_head_attention(c.q, c.k, c.v, c.heads, c.options);
      lse[t] = Matrix<T>(c.lq, c.heads.query);
      tiled[t] = run_blocked(c, c.tiles, &lse[t]);
    }
    ASSERT_EQ(out[0], out[1]) << "default tiles";
    ASSERT_EQ(tiled[0], tiled[1]) << "small tiles";
    ASSERT_EQ(lse[0], lse[1]) << "small tiles, lse";
    // And the threaded result is the right one.
    if (i % 10 == 0) {
      Matrix<double> want, want_lse;
      double smax = 0;
      expected(c, want, want_lse, smax);
      ASSERT_LE(max_abs_diff(out[1], want), out_tol<T>(smax));
      ASSERT_LE(max_abs_diff(tiled[1], want), out_tol<T>(smax));
    }
  });
}
#else
TYPED_TEST(Property, OneAndTwoThreadsAgreeBitForBit) { GTEST_SKIP() << "built without OpenMP"; }
#endif

// ---------------------------------------------------------------------------------------------------------------
// Layers against a double copy of themselves.

template <class T>
attend::Linear<double> to_double(const attend::Linear<T>& l) {
  return {l.weight.template cast<double>(), l.bias.template cast<double>()};
}

template <class T>
void randomize(attend::Linear<T>& lin, Rng& r, bool bias) {
  lin.weight =
      r.matrix<T>(lin.weight.rows(), lin.weight.cols(), 1.0 / std::sqrt(double(std::max<Index>(1, lin.weight.cols()))));
  if (bias) lin.bias = r.matrix<T>(lin.weight.rows(), 1, 0.3);
}

// Layer outputs go through three or four products; float keeps ~1e-5 relative to outputs of ~1.
template <class T>
double layer_tol(double max_abs) {
  return (std::is_same_v<T, float> ? 2e-4 : 1e-11) * (1 + max_abs);
}

double amax(const Matrix<double>& m) { return m.size() ? m.cwiseAbs().maxCoeff() : 0.0; }

// Feeds x in random chunks through step(chunk) and stacks the outputs.
template <class T, class Step>
Matrix<T> chunked(const Matrix<T>& x, Rng& r, Step step) {
  Matrix<T> out(x.rows(), 0);
  Index pos = 0;
  while (pos < x.rows()) {
    const Index n = r.uniform(1, x.rows() - pos);
    const Matrix<T> y = step(Matrix<T>(x.middleRows(pos, n)));
    if (out.cols() == 0) out.resize(x.rows(), y.cols());
    out.middleRows(pos, n) = y;
    pos += n;
  }
  return out;
}

TYPED_TEST(Property, MultiHeadAttentionLayersMatchTheirDoubleCopy) {
  using T = TypeParam;
  for_cases(std::is_same_v<T, float> ? 5000000 : 6000000, 500, [](std::uint64_t seed, int i) {
    Rng r(seed);
    const int kv = int(r.uniform(1, 3)), heads = kv * int(r.uniform(1, 3));
    const int d_model = int(r.uniform(1, 24)), head_dim = int(r.uniform(1, 8));
    attend::MultiHeadAttention<T> m(d_model, heads, kv, head_dim);
    for (auto* lin : {&m.q_proj, &m.k_proj, &m.v_proj, &m.o_proj}) randomize(*lin, r, r.chance(0.5));
    attend::MultiHeadAttention<double> md(d_model, heads, kv, head_dim);
    md.q_proj = to_double(m.q_proj), md.k_proj = to_double(m.k_proj), md.v_proj = to_double(m.v_proj);
    md.o_proj = to_double(m.o_proj);
    const Index L = r.uniform(0, 20), S = r.uniform(0, 20);
    const Matrix<T> x = r.matrix<T>(L, d_model, 1.0), ctx = r.matrix<T>(S, d_model, 1.0);
    const Matrix<double> xd = x.template cast<double>(), ctxd = ctx.template cast<double>();
    const Options o = random_options(r, L);
    SCOPED_TRACE("seed " + std::to_string(seed) + " (case " + std::to_string(i) + "): d_model " +
                 std::to_string(d_model) + ", heads " + std::to_string(heads) + "/" + std::to_string(kv) +
                 ", head_dim " + std::to_string(head_dim) + ", L " + std::to_string(L) + ", S " + std::to_string(S) +
                 ", " + describe_options(o));

    const Matrix<double> self = md.forward(xd, o);
    ASSERT_LE(max_abs_diff(m.forward(x, o), self), layer_tol<T>(amax(self))) << "forward(x)";
    const Matrix<double> cross = md.forward(xd, ctxd, o);
    ASSERT_LE(max_abs_diff(m.forward(x, ctx, o), cross), layer_tol<T>(amax(cross))) << "forward(x, ctx)";
    // The same random chunks through a float and a double cache.
    Rng split_f(seed ^ 0xabcdef), split_d(seed ^ 0xabcdef);
    attend::KVCache<T> cache;
    attend::KVCache<double> cache_d;
    const Matrix<T> dec = chunked<T>(x, split_f, [&](const Matrix<T>& c) { return m.forward(c, cache, o); });
    const Matrix<double> dec_d =
        chunked<double>(xd, split_d, [&](const Matrix<double>& c) { return md.forward(c, cache_d, o); });
    ASSERT_LE(max_abs_diff(dec, dec_d), layer_tol<T>(amax(dec_d))) << "forward(x, cache)";
    ASSERT_EQ(cache.size(), L);
    // With the causal mask, chunked decoding is one causal pass.
    if (o.mask == Mask::causal() && L > 0) {
      ASSERT_LE(max_abs_diff(dec, self), 2 * layer_tol<T>(amax(self))) << "chunks vs one causal pass";
    }

    // Conversions: computed in double from the same weights, so float and double layers convert alike.
    const int pooled = int(r.uniform(1, kv));
    if (kv % pooled == 0 && L > 0) {
      const Matrix<double> g = attend::to_grouped(md, pooled).forward(xd, o);
      ASSERT_LE(max_abs_diff(attend::to_grouped(m, pooled).forward(x, o), g), layer_tol<T>(amax(g)))
          << "to_grouped(" << pooled << ")";
    }
    ASSERT_EQ(attend::kv_singular_values(m), attend::kv_singular_values(md));
    const int rank = int(r.uniform(1, std::min(2 * heads * head_dim, d_model)));
    if (L > 0) {
      const Matrix<double> lat = attend::to_latent(md, rank).forward(xd, o);
      ASSERT_LE(max_abs_diff(attend::to_latent(m, rank).forward(x, o), lat), layer_tol<T>(amax(lat)))
          << "to_latent(" << rank << ")";
    }
  });
}

TYPED_TEST(Property, LatentAttentionLayersMatchTheirDoubleCopy) {
  using T = TypeParam;
  for_cases(std::is_same_v<T, float> ? 7000000 : 8000000, 400, [](std::uint64_t seed, int i) {
    Rng r(seed);
    using Config = typename attend::MultiHeadLatentAttention<T>::Config;
    Config c;
    c.d_model = int(r.uniform(1, 24));
    c.heads = int(r.uniform(1, 4));
    c.q_lora_rank = r.chance(0.5) ? 0 : int(r.uniform(1, 8));
    c.kv_lora_rank = int(r.uniform(1, 8));
    c.qk_rope_head_dim = 2 * int(r.uniform(0, 3));
    c.qk_nope_head_dim = int(r.uniform(c.qk_rope_head_dim == 0 ? 1 : 0, 6));
    c.v_head_dim = int(r.uniform(1, 6));
    c.rope_theta = r.log_uniform(100, 1e5);
    c.rope_layout = r.chance(0.5) ? attend::RopeLayout::interleaved : attend::RopeLayout::half_split;
    const Index L = r.uniform(0, 20);
    const Options o = random_options(r, L);
    attend::MultiHeadLatentAttention<T> m(c);
    for (auto* lin : {&m.q_proj, &m.q_a_proj, &m.q_b_proj, &m.kv_a_proj_with_mqa, &m.o_proj})
      if (lin->weight.size() != 0) randomize(*lin, r, r.chance(0.4));
    // A key bias in kv_b_proj cannot be absorbed under a softcap (that call throws): bias only without one.
    randomize(m.kv_b_proj, r, o.softcap == 0 && r.chance(0.4));
    if (c.q_lora_rank > 0 && r.chance(0.7))
      m.q_a_layernorm.weight = Vector<T>(r.matrix<T>(c.q_lora_rank, 1, 0.2)).array() + T(1);
    if (r.chance(0.7)) m.kv_a_layernorm.weight = Vector<T>(r.matrix<T>(c.kv_lora_rank, 1, 0.2)).array() + T(1);
    m.kv_a_layernorm.eps = r.chance(0.5) ? 1e-6 : 1e-2;
    m.q_a_layernorm.eps = m.kv_a_layernorm.eps;

    typename attend::MultiHeadLatentAttention<double>::Config cd{
        c.d_model,          c.heads,      c.q_lora_rank, c.kv_lora_rank, c.qk_nope_head_dim,
        c.qk_rope_head_dim, c.v_head_dim, c.rope_theta,  c.rope_layout};
    attend::MultiHeadLatentAttention<double> md(cd);
    md.q_proj = to_double(m.q_proj), md.q_a_proj = to_double(m.q_a_proj), md.q_b_proj = to_double(m.q_b_proj);
    md.kv_a_proj_with_mqa = to_double(m.kv_a_proj_with_mqa), md.kv_b_proj = to_double(m.kv_b_proj);
    md.o_proj = to_double(m.o_proj);
    md.q_a_layernorm = {m.q_a_layernorm.weight.template cast<double>(), m.q_a_layernorm.eps};
    md.kv_a_layernorm = {m.kv_a_layernorm.weight.template cast<double>(), m.kv_a_layernorm.eps};

    const Matrix<T> x = r.matrix<T>(L, c.d_model, 1.0);
    const Matrix<double> xd = x.template cast<double>();
    std::ostringstream what;
    what << "seed " << seed << " (case " << i << "): d_model " << c.d_model << ", heads " << c.heads << ", q_lora "
         << c.q_lora_rank << ", kv_lora " << c.kv_lora_rank << ", nope " << c.qk_nope_head_dim << ", rope "
         << c.qk_rope_head_dim << ", v " << c.v_head_dim << ", L " << L << ", " << describe_options(o);
    SCOPED_TRACE(what.str());

    const Matrix<double> full = md.forward(xd, o);
    ASSERT_LE(max_abs_diff(m.forward(x, o), full), layer_tol<T>(amax(full))) << "forward(x)";
    Rng split_f(seed ^ 0x1234), split_d(seed ^ 0x1234);
    attend::LatentCache<T> cache;
    attend::LatentCache<double> cache_d;
    const Matrix<T> dec = chunked<T>(x, split_f, [&](const Matrix<T>& ch) { return m.forward(ch, cache, o); });
    const Matrix<double> dec_d =
        chunked<double>(xd, split_d, [&](const Matrix<double>& ch) { return md.forward(ch, cache_d, o); });
    ASSERT_LE(max_abs_diff(dec, dec_d), layer_tol<T>(amax(dec_d))) << "forward(x, cache)";
    ASSERT_EQ(cache.size(), L);
    // Absorbed decoding equals the decompressed form under the causal mask.
    if (o.mask == Mask::causal() && L > 0) {
      ASSERT_LE(max_abs_diff(dec_d, full), 1e-9 * (1 + amax(full))) << "absorbed vs decompressed";
    }
  });
}

TYPED_TEST(Property, RopeMatchesDouble) {
  using T = TypeParam;
  for_cases(std::is_same_v<T, float> ? 9000000 : 9500000, 300, [](std::uint64_t seed, int) {
    Rng r(seed);
    const Index dim = 2 * r.uniform(0, 8), n = r.uniform(1, 4), L = r.uniform(0, 10);
    const Index start = r.chance(0.5) ? r.uniform(0, 10) : r.uniform(0, 100000);
    const double theta = r.log_uniform(10, 1e6);
    const auto layout = r.chance(0.5) ? attend::RopeLayout::interleaved : attend::RopeLayout::half_split;
    const Matrix<T> x = r.matrix<T>(L, std::max<Index>(1, dim) * n, 1.0);
    SCOPED_TRACE("seed " + std::to_string(seed) + ": dim " + std::to_string(dim) + ", start " + std::to_string(start));
    if (dim == 0) {
      ASSERT_EQ(attend::apply_rope(x, 0, start, theta, layout), x);
      return;
    }
    const Matrix<T> got = attend::apply_rope(x, dim, start, theta, layout);
    const Matrix<double> want =
        attend::apply_rope(Matrix<double>(x.template cast<double>()), dim, start, theta, layout);
    ASSERT_LE(max_abs_diff(got, want), (std::is_same_v<T, float> ? 2e-6 : 1e-14));
    // A rotation keeps each pair's length.
    for (Index i = 0; i < L; ++i)
      ASSERT_NEAR(double(got.row(i).squaredNorm()), double(x.row(i).squaredNorm()),
                  (std::is_same_v<T, float> ? 1e-5 : 1e-12) * (1 + double(x.row(i).squaredNorm())));
  });
}

}  // namespace
