// Small helpers shared by the examples: seeded random matrices, median timings, comparisons.
// Nothing here is about attention; the attention code is in each example.
#pragma once

#include <algorithm>
#include <attend/attend.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace ex {

/// A [rows, cols] matrix of independent N(0, stddev^2) entries from `rng` (fixed seeds make runs repeatable).
template <class T = float>
attend::Matrix<T> random_matrix(std::mt19937& rng, attend::Index rows, attend::Index cols, double stddev = 1.0) {
  std::normal_distribution<double> normal(0.0, stddev);
  attend::Matrix<T> m(rows, cols);
  for (attend::Index i = 0; i < rows; ++i)
    for (attend::Index j = 0; j < cols; ++j) m(i, j) = static_cast<T>(normal(rng));
  return m;
}

/// A Linear layer's weight [out, in] with the usual initial scale 1/sqrt(in) (outputs keep the inputs' size).
template <class T = float>
attend::Matrix<T> random_weight(std::mt19937& rng, attend::Index out, attend::Index in) {
  return random_matrix<T>(rng, out, in, 1.0 / std::sqrt(static_cast<double>(in)));
}

/// Seconds taken by one call of f.
template <class F>
double seconds(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  const auto t1 = std::chrono::steady_clock::now();
  return std::chrono::duration<double>(t1 - t0).count();
}

/// Median, in seconds, of `reps` timed calls of f (the median ignores the odd slow run on a busy machine).
template <class F>
double median_seconds(int reps, F&& f) {
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) t.push_back(seconds(f));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

/// Median of a list of timings, in seconds.
inline double median(std::vector<double> t) {
  std::sort(t.begin(), t.end());
  return t.empty() ? 0.0 : t[t.size() / 2];
}

/// Largest absolute difference between two matrices of the same shape, in double.
template <class A, class B>
double max_abs_diff(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  return (a.template cast<double>() - b.template cast<double>()).cwiseAbs().maxCoeff();
}

/// Largest absolute entry, in double.
template <class A>
double max_abs(const Eigen::MatrixBase<A>& a) {
  return a.template cast<double>().cwiseAbs().maxCoeff();
}

/// Prints "check: <what> ... ok" or "... FAILED" and returns whether it held. Each example exits non-zero when
/// any check failed: that is what its ctest test looks at.
inline bool check(bool ok, const char* what) {
  std::printf("check: %-72s %s\n", what, ok ? "ok" : "FAILED");
  return ok;
}

}  // namespace ex
