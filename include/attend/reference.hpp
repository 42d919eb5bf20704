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
#include "attend/options.hpp"
#include "attend/result.hpp"
#include "attend/shapes.hpp"

namespace attend::reference {

namespace detail {

/// The softmax weights of query rows over keys, in double, and each row's log-sum-exp (including the sink): the
/// score of query i and key j formed exactly in the contract's order.
inline Matrix<double> weights_and_lse(const Matrix<double>& q, const Matrix<double>& k, const Options& options,
                                      const Matrix<double>* bias, Vector<double>& lse) {
  const Index lq = q.rows(), lk = k.rows(), d = q.cols();
  const double scale = options.scale ? *options.scale : 1.0 / std::sqrt(double(d));
  const double c = options.softcap;
  const double slope = options.alibi_slopes.empty() ? 0.0 : options.alibi_slopes[0];
  const bool has_sink = !options.sinks.empty();
  const double sink = has_sink ? options.sinks[0] : 0.0;
  const Index diagonal = options.mask.diagonal() ? *options.mask.diagonal() : lk - lq;
  const double neg_inf = -std::numeric_limits<double>::infinity();

  Matrix<double> p(lq, lk);
  lse.resize(lq);
  for (Index i = 0; i < lq; ++i) {
    double row_max = neg_inf;
    for (Index j = 0; j < lk; ++j) {
      double s = 0;
      for (Index t = 0; t < d; ++t) s += q(i, t) * k(j, t);
      s *= scale;
      if (c > 0) s = c * std::tanh(s / c);
      if (bias) s += (*bias)(i, j);
      if (slope != 0) s -= slope * std::abs(double(i) + double(diagonal) - double(j));  // any diagonal, no overflow
      if (!options.mask.visible(i, j, lq, lk)) s = neg_inf;
      p(i, j) = s;
      if (std::isnan(s) || s > row_max) row_max = s;  // a NaN score makes the row NaN, even with no other key
    }
    if (row_max == neg_inf) {  // no visible key: the contract's all-zero row
      p.row(i).setZero();
      lse[i] = has_sink ? sink : neg_inf;
      continue;
    }
    // Shift by the largest logit, the sink's included, so nothing overflows; the sink joins the denominator only.
    const double shift = has_sink ? std::max(row_max, sink) : row_max;
    double sum = 0;
    for (Index j = 0; j < lk; ++j) sum += (p(i, j) = std::exp(p(i, j) - shift));
    if (has_sink) sum += std::exp(sink - shift);
    for (Index j = 0; j < lk; ++j) p(i, j) /= sum;
    lse[i] = shift + std::log(sum);
  }
  return p;
}

/// Options of query head h of a multi-head call: its own sink and ALiBi slope.
inline Options head_options(const Options& options, int h) {
  Options o = options;
  if (!o.sinks.empty()) o.sinks = {options.sinks[h]};
  if (!o.alibi_slopes.empty()) o.alibi_slopes = {options.alibi_slopes[h]};
  return o;
}

/// sum_j p_ij v_j with keys of zero weight skipped, so a hidden key's value never contributes.
inline Matrix<double> weighted_values(const Matrix<double>& p, const Matrix<double>& v) {
  Matrix<double> out = Matrix<double>::Zero(p.rows(), v.cols());
  for (Index i = 0; i < p.rows(); ++i)
    for (Index j = 0; j < p.cols(); ++j)
      if (p(i, j) != 0)
        for (Index t = 0; t < v.cols(); ++t) out(i, t) += p(i, j) * v(j, t);
  return out;
}

}  // namespace detail

/// Softmax probabilities in double. **Shapes:** (Lq,d) x (Lk,d) [x (Lq,Lk) bias] => (Lq,Lk)
/// \throws attend::shape_error like attend::attention_weights().
template <class DQ, class DK>
Matrix<double> attention_weights(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                                 const Options& options = {}, const Matrix<double>* bias = nullptr) {
  attend::detail::check_attention<double>("reference::attention_weights", q, k, k, options);
  if (bias) attend::detail::check_bias("reference::attention_weights", *bias, q, k);
  Vector<double> lse;
  return detail::weights_and_lse(q.template cast<double>(), k.template cast<double>(), options, bias, lse);
}

/// softmax(scores) v in double, with the log-sum-exp of each row (including the sink; -inf, or the sink, for a row
/// that sees no key). **Shapes:** (Lq,d) x (Lk,d) x (Lk,dv) [x (Lq,Lk) bias] => out (Lq,dv), lse (Lq,1)
/// \throws attend::shape_error like attend::scaled_dot_product_attention().
template <class DQ, class DK, class DV>
AttentionResult<double> scaled_dot_product_attention_with_lse(const Eigen::MatrixBase<DQ>& q,
                                                              const Eigen::MatrixBase<DK>& k,
                                                              const Eigen::MatrixBase<DV>& v,
                                                              const Options& options = {},
                                                              const Matrix<double>* bias = nullptr) {
  attend::detail::check_attention<double>("reference::scaled_dot_product_attention", q, k, v, options);
  if (bias) attend::detail::check_bias("reference::scaled_dot_product_attention", *bias, q, k);
  Vector<double> lse;
  const Matrix<double> p =
      detail::weights_and_lse(q.template cast<double>(), k.template cast<double>(), options, bias, lse);
  return {detail::weighted_values(p, v.template cast<double>()), lse};
}

/// softmax(scores) v in double. **Shapes:** (Lq,d) x (Lk,d) x (Lk,dv) [x (Lq,Lk) bias] => (Lq,dv)
/// \throws attend::shape_error like attend::scaled_dot_product_attention().
template <class DQ, class DK, class DV>
Matrix<double> scaled_dot_product_attention(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                                            const Eigen::MatrixBase<DV>& v, const Options& options = {},
                                            const Matrix<double>* bias = nullptr) {
  return scaled_dot_product_attention_with_lse(q, k, v, options, bias).out;
}

/// Multi-head (grouped-query) attention in double with the log-sum-exp per row and query head: each query head h
/// sliced from its columns, paired with kv head h / (H/G), attended on its own (with its own sink and ALiBi
/// slope), and written to its output columns. A bias [Lq, Lk] is shared by all heads.
/// **Shapes:** (Lq,H*d) x (Lk,G*d) x (Lk,G*dv) => out (Lq,H*dv), lse (Lq,H)
/// \throws attend::shape_error like attend::multi_head_attention().
template <class DQ, class DK, class DV>
AttentionResult<double> multi_head_attention_with_lse(const Eigen::MatrixBase<DQ>& q_in,
                                                      const Eigen::MatrixBase<DK>& k_in,
                                                      const Eigen::MatrixBase<DV>& v_in, Heads heads,
                                                      const Options& options = {},
                                                      const Matrix<double>* bias = nullptr) {
  attend::detail::check_multi_head<double>("reference::multi_head_attention", q_in, k_in, v_in, heads, options);
  if (bias) attend::detail::check_bias("reference::multi_head_attention", *bias, q_in, k_in);
  const Matrix<double> q = q_in.template cast<double>();
  const Matrix<double> k = k_in.template cast<double>();
  const Matrix<double> v = v_in.template cast<double>();
  const Index d = q.cols() / heads.query, dv = v.cols() / heads.kv;
  const int group = heads.query / heads.kv;
  AttentionResult<double> r{Matrix<double>::Zero(q.rows(), heads.query * dv), Matrix<double>(q.rows(), heads.query)};
  for (int h = 0; h < heads.query; ++h) {
    const int g = h / group;
    // Column blocks of an empty matrix would offset its null data pointer (undefined behaviour): copy the slices.
    const Matrix<double> qh = q.rows() == 0 ? Matrix<double>(0, d) : Matrix<double>(q.middleCols(h * d, d));
    const Matrix<double> kh = k.rows() == 0 ? Matrix<double>(0, d) : Matrix<double>(k.middleCols(g * d, d));
    const Matrix<double> vh = k.rows() == 0 ? Matrix<double>(0, dv) : Matrix<double>(v.middleCols(g * dv, dv));
    const AttentionResult<double> head =
        scaled_dot_product_attention_with_lse(qh, kh, vh, detail::head_options(options, h), bias);
    if (q.rows() > 0) {
      r.out.middleCols(h * dv, dv) = head.out;
      r.lse.col(h) = head.lse;
    }
  }
  return r;
}

/// Multi-head (grouped-query) attention in double (see multi_head_attention_with_lse()).
/// **Shapes:** (Lq,H*d) x (Lk,G*d) x (Lk,G*dv) => (Lq,H*dv)
/// \throws attend::shape_error like attend::multi_head_attention().
template <class DQ, class DK, class DV>
Matrix<double> multi_head_attention(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                                    const Eigen::MatrixBase<DV>& v, Heads heads, const Options& options = {},
                                    const Matrix<double>* bias = nullptr) {
  return multi_head_attention_with_lse(q, k, v, heads, options, bias).out;
}

}  // namespace attend::reference
