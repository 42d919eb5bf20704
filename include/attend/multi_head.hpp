#pragma once
/// \file
/// Multi-head attention by splitting the embedding: a matrix [L, H*d] holds head h in columns [h*d, (h+1)*d).
/// One kernel, grouped-query attention, serves all three names: MHA is H kv heads, GQA fewer, MQA one.

#include "attend/detail/attention.hpp"
#include "attend/detail/checks.hpp"
#include "attend/detail/problem.hpp"
#include "attend/options.hpp"
#include "attend/result.hpp"
#include "attend/shapes.hpp"

namespace attend {
namespace detail {

template <class DQ, class DK, class DV>
Matrix<typename DQ::Scalar> multi_head(const char* fn, const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                                       const Eigen::MatrixBase<DV>& v, Heads heads, const Options& options) {
  using T = typename DQ::Scalar;
  static_check_kernel_scalars<DQ, DK, DV>();
  using S = typename DK::Scalar;
  check_multi_head(fn, q, k, v, heads, options);
  Matrix<T> qc;
  Matrix<S> kc, vc;  // inputs that Eigen::Ref cannot read in place (see bind_rows)
  const ConstRowsRef<T> qe = bind_rows(q, qc);
  const ConstRowsRef<S> ke = bind_rows(k, kc), ve = bind_rows(v, vc);
  Matrix<T> out(qe.rows(), ve.cols() / heads.kv * heads.query);
  attention(make_problem(qe, ke, ve, nullptr, heads, options), out, nullptr);
  return out;
}

}  // namespace detail

/// Grouped-query attention: query head h attends with kv head h / (H/G) (contiguous groups, as
/// torch.repeat_interleave), heads are computed independently and concatenated in head order.
///
/// **Shapes:** (Lq,H*d) x (Lk,G*d) x (Lk,G*dv) => (Lq,H*dv)
///
/// G == H is multi-head attention, 1 < G < H grouped-query, G == 1 multi-query. Each key/value tile is read
/// once per kv group for all of the group's query heads. Options apply to every head.
/// \pre H >= 1, G >= 1, G divides H, H divides q's columns, k has G*d columns, G divides v's columns, k and v
///      have the same rows; options valid.
/// \throws attend::shape_error before any work when a precondition fails.
template <class DQ, class DK, class DV>
Matrix<typename DQ::Scalar> multi_head_attention(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                                                 const Eigen::MatrixBase<DV>& v, Heads heads,
                                                 const Options& options = {}) {
  return detail::multi_head("multi_head_attention", q, k, v, heads, options);
}

/// multi_head_attention() that also returns, per row and query head, the log-sum-exp of the visible scaled
/// scores (-inf where that head's row sees no key). Attention over keys split into disjoint parts (threads,
/// machines, cache segments) is recombined exactly by merge_attention().
///
/// **Shapes:** (Lq,H*d) x (Lk,G*d) x (Lk,G*dv) => out (Lq,H*dv), lse (Lq,H)
/// \throws attend::shape_error as multi_head_attention().
template <class DQ, class DK, class DV>
AttentionResult<typename DQ::Scalar> multi_head_attention_with_lse(const Eigen::MatrixBase<DQ>& q,
                                                                   const Eigen::MatrixBase<DK>& k,
                                                                   const Eigen::MatrixBase<DV>& v, Heads heads,
                                                                   const Options& options = {}) {
  using T = typename DQ::Scalar;
  detail::static_check_kernel_scalars<DQ, DK, DV>();
  using S = typename DK::Scalar;
  detail::check_multi_head("multi_head_attention_with_lse", q, k, v, heads, options);
  Matrix<T> qc;
  Matrix<S> kc, vc;  // inputs that Eigen::Ref cannot read in place (see detail::bind_rows)
  const detail::ConstRowsRef<T> qe = detail::bind_rows(q, qc);
  const detail::ConstRowsRef<S> ke = detail::bind_rows(k, kc), ve = detail::bind_rows(v, vc);
  AttentionResult<T> r{Matrix<T>(qe.rows(), ve.cols() / heads.kv * heads.query),
                       Matrix<accumulator_t<T>>(qe.rows(), heads.query)};
  detail::attention(detail::make_problem(qe, ke, ve, nullptr, heads, options), r.out, &r.lse);
  return r;
}

/// multi_head_attention() into a preallocated `out` [Lq, H*dv]. `out` may share memory with q, k or v: the call then
/// computes into a temporary and copies it into `out`, as if every input were read before `out` is written (see
/// scaled_dot_product_attention_into() for what an Eigen::Ref out cannot express).
///
/// **Shapes:** (Lq,H*d) x (Lk,G*d) x (Lk,G*dv) => out (Lq,H*dv)
/// \throws attend::shape_error as multi_head_attention(), and when out has another shape or its rows overlap in
///         memory.
template <class DQ, class DK, class DV>
void multi_head_attention_into(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                               const Eigen::MatrixBase<DV>& v, Heads heads,
                               detail::RowsRef<typename detail::type_identity<typename DQ::Scalar>::type> out,
                               const Options& options = {}) {
  using T = typename DQ::Scalar;
  detail::static_check_kernel_scalars<DQ, DK, DV>();
  using S = typename DK::Scalar;
  constexpr const char* fn = "multi_head_attention_into";
  detail::check_multi_head(fn, q, k, v, heads, options);
  detail::check_output(fn, out, q.rows(), v.cols() / heads.kv * heads.query);
  Matrix<T> qc;
  Matrix<S> kc, vc;  // inputs that Eigen::Ref cannot read in place (see detail::bind_rows)
  const detail::ConstRowsRef<T> qe = detail::bind_rows(q, qc);
  const detail::ConstRowsRef<S> ke = detail::bind_rows(k, kc), ve = detail::bind_rows(v, vc);
  const auto problem = detail::make_problem(qe, ke, ve, nullptr, heads, options);
  if (detail::may_overlap(out, qe) || detail::may_overlap(out, ke) || detail::may_overlap(out, ve)) {
    Matrix<T> result(out.rows(), out.cols());  // out shares memory with an input: read them all first
    detail::attention(problem, result, nullptr);
    out = result;
  } else {
    detail::attention(problem, out, nullptr);
  }
}

/// Grouped-query attention (GQA): `query_heads` query heads in groups sharing `kv_heads` key/value heads.
/// Same as multi_head_attention(q, k, v, Heads{query_heads, kv_heads}, options).
///
/// **Shapes:** (Lq,H*d) x (Lk,G*d) x (Lk,G*dv) => (Lq,H*dv)
/// \throws attend::shape_error as multi_head_attention().
template <class DQ, class DK, class DV>
Matrix<typename DQ::Scalar> grouped_query_attention(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                                                    const Eigen::MatrixBase<DV>& v, int query_heads, int kv_heads,
                                                    const Options& options = {}) {
  return detail::multi_head("grouped_query_attention", q, k, v, Heads{query_heads, kv_heads}, options);
}

/// Multi-query attention (MQA): every query head shares one key/value head.
/// Same as multi_head_attention(q, k, v, Heads{query_heads, 1}, options).
///
/// **Shapes:** (Lq,H*d) x (Lk,d) x (Lk,dv) => (Lq,H*dv)
/// \throws attend::shape_error as multi_head_attention().
template <class DQ, class DK, class DV>
Matrix<typename DQ::Scalar> multi_query_attention(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                                                  const Eigen::MatrixBase<DV>& v, int query_heads,
                                                  const Options& options = {}) {
  return detail::multi_head("multi_query_attention", q, k, v, Heads{query_heads, 1}, options);
}

}  // namespace attend
