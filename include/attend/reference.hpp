#pragma once
/// \file
/// attend::reference: the oracle the tests compare every kernel with. Textbook attention in double precision:
/// the full score matrix is built, each score formed exactly in the documented order, and the softmax written
/// out. Slow on purpose and independent of the blocked kernel's machinery (tiles, online softmax, stacking);
/// it shares only the argument checks and the Mask rule.

#include <cmath>
#include <limits>
#include <vector>

#include "attend/detail/checks.hpp"
#include "attend/masks.hpp"
#include "attend/shapes.hpp"

namespace attend::reference {

/// Softmax probabilities in double. **Shapes:** (Lq,d) x (Lk,d) [x (Lq,Lk) bias] => (Lq,Lk)
/// \throws attend::shape_error like attend::attention_weights().
template <class DQ, class DK>
Matrix<double> attention_weights(const Eigen::MatrixBase<DQ>& q_in, const Eigen::MatrixBase<DK>& k_in,
                                 const Options& options = {}, const Matrix<double>* bias = nullptr) {
  detail::check_attention<double>("reference::attention_weights", q_in, k_in, k_in, options);
  if (bias) detail::check_bias("reference::attention_weights", *bias, q_in, k_in);
  const Matrix<double> q = q_in.template cast<double>();
  const Matrix<double> k = k_in.template cast<double>();
  const Index lq = q.rows(), lk = k.rows(), d = q.cols();
  const double scale = options.scale ? *options.scale : 1.0 / std::sqrt(double(d));
  const double c = options.softcap;
  const double neg_inf = -std::numeric_limits<double>::infinity();

  Matrix<double> p(lq, lk);
  for (Index i = 0; i < lq; ++i) {
    double row_max = neg_inf;
    for (Index j = 0; j < lk; ++j) {
      double s = 0;
      for (Index t = 0; t < d; ++t) s += q(i, t) * k(j, t);
      s *= scale;
      if (c > 0) s = c * std::tanh(s / c);
      if (bias) s += (*bias)(i, j);
      if (!options.mask.visible(i, j, lq, lk)) s = neg_inf;
      p(i, j) = s;
      if (s > row_max) row_max = s;
    }
    if (row_max == neg_inf) {  // no visible key: the contract's all-zero row
      p.row(i).setZero();
      continue;
    }
    double sum = 0;
    for (Index j = 0; j < lk; ++j) sum += (p(i, j) = std::exp(p(i, j) - row_max));
    for (Index j = 0; j < lk; ++j) p(i, j) /= sum;
  }
  return p;
}

/// softmax(scores) v in double, with keys whose weight is zero skipped (so a hidden key's value never
/// contributes). **Shapes:** (Lq,d) x (Lk,d) x (Lk,dv) [x (Lq,Lk) bias] => (Lq,dv)
/// \throws attend::shape_error like attend::scaled_dot_product_attention().
template <class DQ, class DK, class DV>
Matrix<double> scaled_dot_product_attention(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                                            const Eigen::MatrixBase<DV>& v_in, const Options& options = {},
                                            const Matrix<double>* bias = nullptr) {
  detail::check_attention<double>("reference::scaled_dot_product_attention", q, k, v_in, options);
  if (bias) detail::check_bias("reference::scaled_dot_product_attention", *bias, q, k);
  const Matrix<double> p = attention_weights(q, k, options, bias);
  const Matrix<double> v = v_in.template cast<double>();
  Matrix<double> out = Matrix<double>::Zero(p.rows(), v.cols());
  for (Index i = 0; i < p.rows(); ++i)
    for (Index j = 0; j < p.cols(); ++j)
      if (p(i, j) != 0)
        for (Index t = 0; t < v.cols(); ++t) out(i, t) += p(i, j) * v(j, t);
  return out;
}

/// Multi-head (grouped-query) attention in double: each query head h sliced from its columns, paired with kv
/// head h / (H/G), attended on its own, and written to its output columns.
/// **Shapes:** (Lq,H*d) x (Lk,G*d) x (Lk,G*dv) => (Lq,H*dv)
/// \throws attend::shape_error like attend::multi_head_attention().
template <class DQ, class DK, class DV>
Matrix<double> multi_head_attention(const Eigen::MatrixBase<DQ>& q_in, const Eigen::MatrixBase<DK>& k_in,
                                    const Eigen::MatrixBase<DV>& v_in, Heads heads, const Options& options = {}) {
  detail::check_multi_head<double>("reference::multi_head_attention", q_in, k_in, v_in, heads, options);
  const Matrix<double> q = q_in.template cast<double>();
  const Matrix<double> k = k_in.template cast<double>();
  const Matrix<double> v = v_in.template cast<double>();
  const Index d = q.cols() / heads.query, dv = v.cols() / heads.kv;
  const int group = heads.query / heads.kv;
  Matrix<double> out = Matrix<double>::Zero(q.rows(), heads.query * dv);
  // Column blocks of an empty matrix would offset its null data pointer (undefined behaviour).
  if (q.rows() == 0 || k.rows() == 0) return out;
  for (int h = 0; h < heads.query; ++h) {
    const int g = h / group;
    out.middleCols(h * dv, dv) =
        scaled_dot_product_attention(q.middleCols(h * d, d), k.middleCols(g * d, d), v.middleCols(g * dv, dv), options);
  }
  return out;
}

}  // namespace attend::reference
