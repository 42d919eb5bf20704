#pragma once
// Shared helpers for attend's tests: seeded random inputs, type-scaled tolerances, comparisons.

#include <gtest/gtest.h>

#include <attend/attend.hpp>
#include <cmath>
#include <functional>
#include <initializer_list>
#include <limits>
#include <random>
#include <string>

namespace attend_test {

template <class T>
attend::Matrix<T> random_matrix(Eigen::Index rows, Eigen::Index cols, std::mt19937& rng, double stddev = 1.0) {
  std::normal_distribution<double> dist(0.0, stddev);
  attend::Matrix<T> m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(dist(rng));
  return m;
}

// Absolute tolerance for outputs of magnitude ~1 computed in T, compared with the double reference on the
// same (already rounded) inputs. Float accumulates ~sqrt(n) ulps over a few hundred terms; 2e-5 leaves margin
// while still catching any real error (a wrong mask or scale moves outputs by 1e-2 or more).
template <class T>
constexpr double tolerance() {
  return std::is_same_v<T, float> ? 2e-5 : 1e-12;
}

template <class A, class B>
double max_abs_diff(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return std::numeric_limits<double>::infinity();
  if (a.size() == 0) return 0;
  return (a.template cast<double>() - b.template cast<double>()).cwiseAbs().maxCoeff();
}

// Fills a layer's weight, then (unless with_bias is false) its bias, with N(0, 0.3^2) values.
template <class T>
void randomize(attend::Linear<T>& lin, std::mt19937& rng, bool with_bias = true) {
  lin.weight = random_matrix<T>(lin.weight.rows(), lin.weight.cols(), rng, 0.3);
  if (with_bias) lin.bias = random_matrix<T>(lin.weight.rows(), 1, rng, 0.3);
}

// A MultiHeadAttention layer with random projections (biases too, unless bias is false).
template <class T>
attend::MultiHeadAttention<T> random_mha(int d_model, int heads, int kv_heads, int head_dim, std::mt19937& rng,
                                         bool bias = true) {
  attend::MultiHeadAttention<T> m(d_model, heads, kv_heads, head_dim);
  for (auto* lin : {&m.q_proj, &m.k_proj, &m.v_proj, &m.o_proj}) randomize(*lin, rng, bias);
  return m;
}

inline bool all_finite(const attend::Matrix<double>& m) { return m.allFinite(); }

using Scalars = ::testing::Types<float, double>;

// Runs `call`, expects attend::shape_error, and checks that its message contains every fragment.
inline void expect_error(const std::function<void()>& call, std::initializer_list<std::string> fragments) {
  try {
    call();
    ADD_FAILURE() << "no exception";
  } catch (const attend::shape_error& e) {
    const std::string what = e.what();
    for (const auto& f : fragments) EXPECT_NE(what.find(f), std::string::npos) << "'" << f << "' not in: " << what;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "other exception: " << e.what();
  }
}

}  // namespace attend_test
