#pragma once
/// \file
/// Scaled dot-product attention, softmax(Q K^T * scale) V, and its probability matrix.
///
/// Cross-attention is the same call with k and v taken from another sequence (Lk != Lq).

#include <limits>
#include <type_traits>

#include "attend/detail/attention.hpp"
#include "attend/detail/checks.hpp"
#include "attend/detail/problem.hpp"
#include "attend/detail/score_transform.hpp"
#include "attend/linear.hpp"
#include "attend/options.hpp"
#include "attend/result.hpp"
#include "attend/shapes.hpp"
#include "attend/softmax.hpp"

namespace attend {

/// Attention of each query row over the key/value rows: softmax(scale * q k^T [+ bias], masked) v.
///
/// **Shapes:** (Lq,d) x (Lk,d) x (Lk,dv) => (Lq,dv)
///
/// Scores follow Options: scale (default 1/sqrt(d)), softcap, then the mask; the softmax is stable for logits
/// in the thousands. A query row that sees no key gets an all-zero row. Memory beyond inputs and output is
/// O(tile), independent of Lq * Lk.
///
/// The kernel scales the queries before the product: a score is (scale q) . k, one multiply per query value
/// instead of one per score. That differs from the contract's scale * (q . k) by rounding only (measured: at most
/// 2.3 eps * scale * sum_t |q_t k_t| either way, mean 0.17, in float over d = 16 to 1000 and scales 1e-3 to 7.7),
/// as long as scale * q stays within T's normal range: where scale * |q_t| overflows (scale 1e9, q 1e30) the score
/// is inf or NaN although scale * (q . k) is finite; attention_weights() forms scores in the contract's order.
/// \pre d >= 1 and the shapes above; options valid (finite scale > 0, softcap >= 0, window >= 1).
/// \throws attend::shape_error before any work when a precondition fails.
template <class DQ, class DK, class DV>
Matrix<typename DQ::Scalar> scaled_dot_product_attention(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                                                         const Eigen::MatrixBase<DV>& v, const Options& options = {}) {
  using T = typename DQ::Scalar;
  detail::static_check_kernel_scalars<DQ, DK, DV>();
  using S = typename DK::Scalar;
  constexpr const char* fn = "scaled_dot_product_attention";
  detail::check_attention(fn, q, k, v, options);
  Matrix<T> qc;
  Matrix<S> kc, vc;  // inputs that Eigen::Ref cannot read in place (see detail::bind_rows)
  const detail::ConstRowsRef<T> qe = detail::bind_rows(q, qc);
  const detail::ConstRowsRef<S> ke = detail::bind_rows(k, kc), ve = detail::bind_rows(v, vc);
  Matrix<T> out(qe.rows(), ve.cols());
  detail::attention(detail::make_problem(qe, ke, ve, nullptr, Heads{1, 1}, options), out, nullptr);
  return out;
}

/// As above, with an additive `bias` [Lq, Lk] added to the scores after softcap and before the mask;
/// -infinity entries hide keys.
///
/// **Shapes:** (Lq,d) x (Lk,d) x (Lk,dv) x (Lq,Lk) => (Lq,dv)
/// \throws attend::shape_error as above, and when bias is not [Lq, Lk].
template <class DQ, class DK, class DV, class DB>
Matrix<typename DQ::Scalar> scaled_dot_product_attention(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                                                         const Eigen::MatrixBase<DV>& v,
                                                         const Eigen::MatrixBase<DB>& bias,
                                                         const Options& options = {}) {
  using T = typename DQ::Scalar;
  detail::static_check_kernel_scalars<DQ, DK, DV, DB>();
  using S = typename DK::Scalar;
  constexpr const char* fn = "scaled_dot_product_attention";
  detail::check_attention(fn, q, k, v, options);
  detail::check_bias(fn, bias, q, k);
  Matrix<T> qc, bc;
  Matrix<S> kc, vc;  // inputs that Eigen::Ref cannot read in place (see detail::bind_rows)
  const detail::ConstRowsRef<T> qe = detail::bind_rows(q, qc), be = detail::bind_rows(bias, bc);
  const detail::ConstRowsRef<S> ke = detail::bind_rows(k, kc), ve = detail::bind_rows(v, vc);
  Matrix<T> out(qe.rows(), ve.cols());
  detail::attention(detail::make_problem(qe, ke, ve, &be, Heads{1, 1}, options), out, nullptr);
  return out;
}

/// scaled_dot_product_attention() that also returns each row's log-sum-exp of its visible scaled scores
/// (lse [Lq, 1], -inf for a row that sees no key), so results over disjoint key sets can be combined exactly
/// with merge_attention().
///
/// **Shapes:** (Lq,d) x (Lk,d) x (Lk,dv) => out (Lq,dv), lse (Lq,1)
/// \throws attend::shape_error as scaled_dot_product_attention().
template <class DQ, class DK, class DV>
AttentionResult<typename DQ::Scalar> scaled_dot_product_attention_with_lse(const Eigen::MatrixBase<DQ>& q,
                                                                           const Eigen::MatrixBase<DK>& k,
                                                                           const Eigen::MatrixBase<DV>& v,
                                                                           const Options& options = {}) {
  using T = typename DQ::Scalar;
  detail::static_check_kernel_scalars<DQ, DK, DV>();
  using S = typename DK::Scalar;
  detail::check_attention("scaled_dot_product_attention_with_lse", q, k, v, options);
  Matrix<T> qc;
  Matrix<S> kc, vc;  // inputs that Eigen::Ref cannot read in place (see detail::bind_rows)
  const detail::ConstRowsRef<T> qe = detail::bind_rows(q, qc);
  const detail::ConstRowsRef<S> ke = detail::bind_rows(k, kc), ve = detail::bind_rows(v, vc);
  AttentionResult<T> r{Matrix<T>(qe.rows(), ve.cols()), Matrix<accumulator_t<T>>(qe.rows(), 1)};
  detail::attention(detail::make_problem(qe, ke, ve, nullptr, Heads{1, 1}, options), r.out, &r.lse);
  return r;
}

/// scaled_dot_product_attention() into a preallocated `out` (no allocation of the result; for hot loops).
///
/// `out` may share memory with q, k or v (in place, `x` as query, key, value and out): the call then computes
/// into a temporary and copies it into `out`, as if every input were read before `out` is written. `out` is an
/// Eigen::Ref, which takes a runtime outer stride of 0 for contiguous rows before the call begins: a Map with
/// OuterStride<>(0) cannot be an `out` (attend never sees the 0), and rows that overlap are refused.
///
/// **Shapes:** (Lq,d) x (Lk,d) x (Lk,dv) => out (Lq,dv)
/// \throws attend::shape_error as scaled_dot_product_attention(), and when out is not [Lq, dv] or its rows
///         overlap in memory (|outer stride| < dv).
template <class DQ, class DK, class DV>
void scaled_dot_product_attention_into(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                                       const Eigen::MatrixBase<DV>& v,
                                       detail::RowsRef<typename detail::type_identity<typename DQ::Scalar>::type> out,
                                       const Options& options = {}) {
  using T = typename DQ::Scalar;
  detail::static_check_kernel_scalars<DQ, DK, DV>();
  using S = typename DK::Scalar;
  constexpr const char* fn = "scaled_dot_product_attention_into";
  detail::check_attention(fn, q, k, v, options);
  detail::check_output(fn, out, q.rows(), v.cols());
  Matrix<T> qc;
  Matrix<S> kc, vc;  // inputs that Eigen::Ref cannot read in place (see detail::bind_rows)
  const detail::ConstRowsRef<T> qe = detail::bind_rows(q, qc);
  const detail::ConstRowsRef<S> ke = detail::bind_rows(k, kc), ve = detail::bind_rows(v, vc);
  const auto problem = detail::make_problem(qe, ke, ve, nullptr, Heads{1, 1}, options);
  if (detail::may_overlap(out, qe) || detail::may_overlap(out, ke) || detail::may_overlap(out, ve)) {
    Matrix<T> result(out.rows(), out.cols());  // out shares memory with an input: read them all first
    detail::attention(problem, result, nullptr);
    out = result;
  } else {
    detail::attention(problem, out, nullptr);
  }
}

namespace detail {

template <class T>
Matrix<T> weights(const ConstRowsRef<T>& q, const ConstRowsRef<T>& k, const ConstRowsRef<T>* bias,
                  const Options& options) {
  using C = accumulator_t<T>;
  const Problem<T, T> pb = make_problem(q, k, k, bias, Heads{1, 1}, options);
  const Index lq = q.rows(), lk = k.rows();
  Matrix<C> p(lq, lk);
  // s = scale * (q . k), the contract's order (the kernel scales q instead, see Problem::scale), in the compute
  // type: 16-bit inputs are widened, never multiplied in 16 bits.
  if constexpr (std::is_same_v<T, C>) {
    product(p, q, k.transpose());
  } else {
    const Matrix<C> qc = q.template cast<C>(), kc = k.template cast<C>();
    product(p, qc, kc.transpose());
  }
  p *= pb.scale;
  ScoreTransform<T, T>(pb).rows(
      p, 0, [](Index i) { return i; }, [](Index) { return Index(0); });
  for (Index i = 0; i < lq; ++i) {
    const KeyRange vis = options.mask.keys(i, lq, lk);
    p.row(i).head(vis.begin).setConstant(-std::numeric_limits<C>::infinity());
    p.row(i).tail(lk - std::max(vis.begin, vis.end)).setConstant(-std::numeric_limits<C>::infinity());
    softmax_row_in_place(p.row(i), pb.sinks.empty() ? nullptr : pb.sinks.data());
  }
  if constexpr (std::is_same_v<T, C>)
    return p;
  else
    return p.template cast<T>();
}

}  // namespace detail

/// The attention probabilities softmax(scale * q k^T, masked): row i holds query i's weights over the keys.
/// Rows sum to 1, or are all zero when the query sees no key. Materializes [Lq, Lk]: for inspection and
/// teaching; the attention functions never build this matrix.
///
/// Each score is formed in the contract's order, s = scale * (q . k), then softcap, bias, ALiBi and mask, and the
/// weights are exact to rounding however far below the row maximum they are (down to T's denormals and 0). A NaN
/// that reaches a row's visible scores (from q, a visible key, the bias or the options) makes the whole row NaN.
///
/// **Shapes:** (Lq,d) x (Lk,d) => (Lq,Lk)
/// \throws attend::shape_error when k has not q's columns, d < 1 or the options are invalid.
template <class DQ, class DK>
Matrix<typename DQ::Scalar> attention_weights(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                                              const Options& options = {}) {
  using T = typename DQ::Scalar;
  detail::static_check_kernel_scalars<DQ, DQ, DK>();  // q and k of one type
  constexpr const char* fn = "attention_weights";
  detail::check_attention(fn, q, k, k, options);
  Matrix<T> copies[2];  // inputs that Eigen::Ref cannot read in place (see detail::bind_rows)
  const detail::ConstRowsRef<T> qe = detail::bind_rows(q, copies[0]), ke = detail::bind_rows(k, copies[1]);
  return detail::weights<T>(qe, ke, nullptr, options);
}

/// attention_weights() with an additive `bias` [Lq, Lk] (after softcap, before the mask).
///
/// **Shapes:** (Lq,d) x (Lk,d) x (Lq,Lk) => (Lq,Lk)
/// \throws attend::shape_error as attention_weights(), and when bias is not [Lq, Lk].
template <class DQ, class DK, class DB>
Matrix<typename DQ::Scalar> attention_weights(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                                              const Eigen::MatrixBase<DB>& bias, const Options& options = {}) {
  using T = typename DQ::Scalar;
  detail::static_check_kernel_scalars<DQ, DQ, DK, DB>();  // q, k and the bias of one type
  constexpr const char* fn = "attention_weights";
  detail::check_attention(fn, q, k, k, options);
  detail::check_bias(fn, bias, q, k);
  Matrix<T> copies[3];  // inputs that Eigen::Ref cannot read in place (see detail::bind_rows)
  const detail::ConstRowsRef<T> qe = detail::bind_rows(q, copies[0]), ke = detail::bind_rows(k, copies[1]),
                                be = detail::bind_rows(bias, copies[2]);
  return detail::weights<T>(qe, ke, &be, options);
}

}  // namespace attend
