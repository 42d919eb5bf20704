#pragma once
/// \file
/// Gradients of attention: the backward of multi_head_attention() and scaled_dot_product_attention() from what
/// their _with_lse forms returned (FlashAttention-2's backward; the kernel's map is in detail/backward.hpp).
///
/// A training step runs the forward with its log-sum-exp, keeps out and lse, and once the loss's gradient dout with
/// respect to out is known, calls the backward with the same q, k, v, options, out, lse and dout. The backward
/// recomputes the probabilities tile by tile from lse: memory beyond inputs and gradients is O(tile), never Lq x Lk.

#include "attend/detail/attention.hpp"
#include "attend/detail/backward.hpp"
#include "attend/detail/checks.hpp"
#include "attend/detail/problem.hpp"
#include "attend/errors.hpp"
#include "attend/options.hpp"
#include "attend/result.hpp"
#include "attend/shapes.hpp"

namespace attend {

/// The gradients of a scalar loss with respect to q, k and v of one attention call: dq [Lq, H*d], dk [Lk, G*d],
/// dv [Lk, G*dv], each of its input's shape.
template <class T>
struct AttentionGradients {
  Matrix<T> dq, dk, dv;
};

namespace detail {

/// Checks the forward's results and the output gradient of a backward call against q and v: out and dout
/// [Lq, H*dv], lse [Lq, H].
template <class Q, class V, class O, class L, class G>
void check_backward(const char* fn, const Q& q, const V& v, Heads heads, const O& out, const L& lse, const G& dout) {
  const Shape outputs{q.rows(), v.cols() / heads.kv * heads.query};
  if (out.rows() != outputs.rows || out.cols() != outputs.cols)
    fail(fn, "out is ", shape_of(out), ", expected [Lq, H*dv] = ", outputs, " (q ", shape_of(q), ", v ", shape_of(v),
         ")");
  if (lse.rows() != q.rows() || lse.cols() != heads.query)
    fail(fn, "lse is ", shape_of(lse), ", expected [Lq, H] = ", Shape{q.rows(), heads.query}, " (q ", shape_of(q), ")");
  if (dout.rows() != outputs.rows || dout.cols() != outputs.cols)
    fail(fn, "dout is ", shape_of(dout), ", expected [Lq, H*dv] = ", outputs, " (out ", shape_of(out), ")");
}

template <class T>
AttentionGradients<T> backward(const ConstRowsRef<T>& q, const ConstRowsRef<T>& k, const ConstRowsRef<T>& v,
                               const ConstRowsRef<T>* bias, const ConstRowsRef<T>& out, const ConstRowsRef<T>& lse,
                               const ConstRowsRef<T>& dout, Heads heads, const Options& options) {
  const Problem<T, T> pb = make_problem(q, k, v, bias, heads, options);
  AttentionGradients<T> g{Matrix<T>(q.rows(), q.cols()), Matrix<T>(k.rows(), k.cols()), Matrix<T>(v.rows(), v.cols())};
  attention_backward(BackwardProblem<T>{pb, out, lse, dout}, g.dq, g.dk, g.dv);
  return g;
}

}  // namespace detail

/// The gradients of sum(dout o out) with respect to q, k and v, where out and lse are what
/// multi_head_attention_with_lse(q, k, v, heads, options) returned: for GQA and MQA, dk and dv sum over the query
/// heads that share each kv head. Through the scale, softcap (its tanh's derivative), every mask, sinks and ALiBi
/// (constants: no gradient with respect to them). A query row that sees no key gets zero dq; a key no query sees
/// gets zero dk and dv; a key hidden from a query never contributes to that query's gradients, nor the query to
/// the key's.
///
/// **Shapes:** (Lq,H*d) x (Lk,G*d) x (Lk,G*dv) x out (Lq,H*dv) x lse (Lq,H) x dout (Lq,H*dv)
///             => dq (Lq,H*d), dk (Lk,G*d), dv (Lk,G*dv)
///
/// Deterministic: the same bits for any number of OpenMP threads. Memory beyond inputs and gradients is O(tile)
/// per thread plus each task's query rows packed (about 2 Lq (d + dv) numbers per query head of a task).
/// \pre the preconditions of multi_head_attention(); out and dout [Lq, H*dv], lse [Lq, H]; T float or double.
/// \throws attend::shape_error before any work when a precondition fails.
template <class DQ, class DK, class DV, class DO, class DL, class DG>
AttentionGradients<typename DQ::Scalar> multi_head_attention_backward(
    const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v,
    const Eigen::MatrixBase<DO>& out, const Eigen::MatrixBase<DL>& lse, const Eigen::MatrixBase<DG>& dout, Heads heads,
    const Options& options = {}) {
  using T = typename DQ::Scalar;
  detail::static_check_scalars<T, DK, DV, DO, DL, DG>();
  constexpr const char* fn = "multi_head_attention_backward";
  detail::check_multi_head(fn, q, k, v, heads, options);
  detail::check_backward(fn, q, v, heads, out, lse, dout);
  Matrix<T> c[6];  // inputs that Eigen::Ref cannot read in place (see detail::bind_rows)
  const detail::ConstRowsRef<T> qe = detail::bind_rows(q, c[0]), ke = detail::bind_rows(k, c[1]),
                                ve = detail::bind_rows(v, c[2]);
  const detail::ConstRowsRef<T> oe = detail::bind_rows(out, c[3]), le = detail::bind_rows(lse, c[4]),
                                ge = detail::bind_rows(dout, c[5]);
  return detail::backward<T>(qe, ke, ve, nullptr, oe, le, ge, heads, options);
}

/// The gradients of sum(dout o out) with respect to q, k and v, where out and lse are what
/// scaled_dot_product_attention_with_lse(q, k, v, options) returned (see multi_head_attention_backward()).
///
/// **Shapes:** (Lq,d) x (Lk,d) x (Lk,dv) x out (Lq,dv) x lse (Lq,1) x dout (Lq,dv)
///             => dq (Lq,d), dk (Lk,d), dv (Lk,dv)
/// \throws attend::shape_error before any work when a precondition fails.
template <class DQ, class DK, class DV, class DO, class DL, class DG>
AttentionGradients<typename DQ::Scalar> scaled_dot_product_attention_backward(
    const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v,
    const Eigen::MatrixBase<DO>& out, const Eigen::MatrixBase<DL>& lse, const Eigen::MatrixBase<DG>& dout,
    const Options& options = {}) {
  using T = typename DQ::Scalar;
  detail::static_check_scalars<T, DK, DV, DO, DL, DG>();
  constexpr const char* fn = "scaled_dot_product_attention_backward";
  detail::check_attention(fn, q, k, v, options);
  detail::check_backward(fn, q, v, Heads{1, 1}, out, lse, dout);
  Matrix<T> c[6];  // inputs that Eigen::Ref cannot read in place (see detail::bind_rows)
  const detail::ConstRowsRef<T> qe = detail::bind_rows(q, c[0]), ke = detail::bind_rows(k, c[1]),
                                ve = detail::bind_rows(v, c[2]);
  const detail::ConstRowsRef<T> oe = detail::bind_rows(out, c[3]), le = detail::bind_rows(lse, c[4]),
                                ge = detail::bind_rows(dout, c[5]);
  return detail::backward<T>(qe, ke, ve, nullptr, oe, le, ge, Heads{1, 1}, options);
}

/// As above, for scaled_dot_product_attention(q, k, v, bias, options): out and lse are what
/// scaled_dot_product_attention_with_lse(q, k, v, bias, options) returned. The bias is a constant (no gradient
/// with respect to it); a -infinity entry hides its key from its query in the backward too.
///
/// **Shapes:** (Lq,d) x (Lk,d) x (Lk,dv) x bias (Lq,Lk) x out (Lq,dv) x lse (Lq,1) x dout (Lq,dv)
///             => dq (Lq,d), dk (Lk,d), dv (Lk,dv)
/// \throws attend::shape_error before any work when a precondition fails.
template <class DQ, class DK, class DV, class DB, class DO, class DL, class DG>
AttentionGradients<typename DQ::Scalar> scaled_dot_product_attention_backward(
    const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v,
    const Eigen::MatrixBase<DB>& bias, const Eigen::MatrixBase<DO>& out, const Eigen::MatrixBase<DL>& lse,
    const Eigen::MatrixBase<DG>& dout, const Options& options = {}) {
  using T = typename DQ::Scalar;
  detail::static_check_scalars<T, DK, DV, DB, DO, DL, DG>();
  constexpr const char* fn = "scaled_dot_product_attention_backward";
  detail::check_attention(fn, q, k, v, options);
  detail::check_bias(fn, bias, q, k);
  detail::check_backward(fn, q, v, Heads{1, 1}, out, lse, dout);
  Matrix<T> c[7];  // inputs that Eigen::Ref cannot read in place (see detail::bind_rows)
  const detail::ConstRowsRef<T> qe = detail::bind_rows(q, c[0]), ke = detail::bind_rows(k, c[1]),
                                ve = detail::bind_rows(v, c[2]), be = detail::bind_rows(bias, c[6]);
  const detail::ConstRowsRef<T> oe = detail::bind_rows(out, c[3]), le = detail::bind_rows(lse, c[4]),
                                ge = detail::bind_rows(dout, c[5]);
  return detail::backward<T>(qe, ke, ve, &be, oe, le, ge, Heads{1, 1}, options);
}

/// scaled_dot_product_attention(q, k, v, bias, options) with each row's log-sum-exp: the forward a training step
/// with a bias keeps for scaled_dot_product_attention_backward().
///
/// **Shapes:** (Lq,d) x (Lk,d) x (Lk,dv) x (Lq,Lk) => out (Lq,dv), lse (Lq,1)
/// \throws attend::shape_error as scaled_dot_product_attention() with a bias.
template <class DQ, class DK, class DV, class DB>
AttentionResult<typename DQ::Scalar> scaled_dot_product_attention_with_lse(const Eigen::MatrixBase<DQ>& q,
                                                                           const Eigen::MatrixBase<DK>& k,
                                                                           const Eigen::MatrixBase<DV>& v,
                                                                           const Eigen::MatrixBase<DB>& bias,
                                                                           const Options& options = {}) {
  using T = typename DQ::Scalar;
  detail::static_check_kernel_scalars<DQ, DK, DV, DB>();
  using S = typename DK::Scalar;
  constexpr const char* fn = "scaled_dot_product_attention_with_lse";
  detail::check_attention(fn, q, k, v, options);
  detail::check_bias(fn, bias, q, k);
  Matrix<T> qc, bc;
  Matrix<S> kc, vc;  // inputs that Eigen::Ref cannot read in place (see detail::bind_rows)
  const detail::ConstRowsRef<T> qe = detail::bind_rows(q, qc), be = detail::bind_rows(bias, bc);
  const detail::ConstRowsRef<S> ke = detail::bind_rows(k, kc), ve = detail::bind_rows(v, vc);
  AttentionResult<T> r{Matrix<T>(qe.rows(), ve.cols()), Matrix<accumulator_t<T>>(qe.rows(), 1)};
  detail::attention(detail::make_problem(qe, ke, ve, &be, Heads{1, 1}, options), r.out, &r.lse);
  return r;
}

}  // namespace attend
