#pragma once
/// \file
/// The kernels over 8-bit keys and values (Q8Matrix) under float queries: multi_head_attention,
/// grouped_query_attention, multi_query_attention, scaled_dot_product_attention and their _with_lse forms. The
/// same kernel as for float keys: decoding multiplies the 8-bit values widened in registers, one scale per block
/// of 32 (detail/row_products_narrow.hpp); prefill dequantizes each key tile into the float mainloop.

#include "attend/detail/attention.hpp"
#include "attend/detail/checks.hpp"
#include "attend/detail/problem.hpp"
#include "attend/detail/q8_rows.hpp"
#include "attend/options.hpp"
#include "attend/quantized.hpp"
#include "attend/result.hpp"
#include "attend/shapes.hpp"

namespace attend {
namespace detail {

/// The kernel's view of a Q8Matrix.
inline Q8Rows<float> q8_rows(const Q8Matrix& m) {
  return Q8Rows<float>(m.data(), m.cols(), m.scales(), m.blocks(), m.rows(), m.cols());
}

/// Checks q [Lq, H*d] against Q8Matrix k [Lk, G*d] and v [Lk, G*dv]: as check_multi_head(), and d and dv
/// multiples of 32 (a head's slice of a q8 row is whole blocks).
template <class DQ>
void check_q8_heads(const char* fn, const Eigen::MatrixBase<DQ>& q, const Q8Matrix& k, const Q8Matrix& v, Heads heads,
                    const Options& options) {
  check_multi_head(fn, q, k, v, heads, options);
  const Index d = q.cols() / heads.query, dv = v.cols() / heads.kv;
  if (d % Q8Matrix::kBlock != 0 || dv % Q8Matrix::kBlock != 0)
    fail(fn, "head dims d = ", d, " and dv = ", dv, " must be multiples of 32 for 8-bit keys and values (q ",
         shape_of(q), ", k ", shape_of(k), ", v ", shape_of(v), ")");
}

template <class DQ>
AttentionResult<float> q8_attention(const char* fn, const Eigen::MatrixBase<DQ>& q, const Q8Matrix& k,
                                    const Q8Matrix& v, Heads heads, const Options& options, bool with_lse) {
  static_assert(std::is_same_v<typename DQ::Scalar, float>, ATTEND_DETAIL_MIXED_SCALARS);
  check_q8_heads(fn, q, k, v, heads, options);
  const ConstRowsRef<float> qe(q.derived());
  const Q8Rows<float> ke = q8_rows(k), ve = q8_rows(v);
  AttentionResult<float> r{Matrix<float>(qe.rows(), v.cols() / heads.kv * heads.query),
                           Matrix<float>(with_lse ? qe.rows() : 0, with_lse ? heads.query : 0)};
  attention(make_problem(qe, ke, ve, nullptr, heads, options), r.out, with_lse ? &r.lse : nullptr);
  return r;
}

}  // namespace detail

/// Grouped-query attention over 8-bit keys and values: float q [Lq, H*d], k [Lk, G*d], v [Lk, G*dv] in q8 => float
/// [Lq, H*dv]. d and dv multiples of 32. Equals multi_head_attention(q, dequantize(k), dequantize(v), heads,
/// options) up to rounding.
/// \throws attend::shape_error as multi_head_attention(), and for head dims that are not multiples of 32.
template <class DQ>
Matrix<float> multi_head_attention(const Eigen::MatrixBase<DQ>& q, const Q8Matrix& k, const Q8Matrix& v, Heads heads,
                                   const Options& options = {}) {
  return detail::q8_attention("multi_head_attention", q, k, v, heads, options, false).out;
}

/// multi_head_attention() over q8 keys and values, with the log-sum-exp [Lq, H].
template <class DQ>
AttentionResult<float> multi_head_attention_with_lse(const Eigen::MatrixBase<DQ>& q, const Q8Matrix& k,
                                                     const Q8Matrix& v, Heads heads, const Options& options = {}) {
  return detail::q8_attention("multi_head_attention_with_lse", q, k, v, heads, options, true);
}

/// grouped_query_attention() over q8 keys and values.
template <class DQ>
Matrix<float> grouped_query_attention(const Eigen::MatrixBase<DQ>& q, const Q8Matrix& k, const Q8Matrix& v,
                                      int query_heads, int kv_heads, const Options& options = {}) {
  return detail::q8_attention("grouped_query_attention", q, k, v, Heads{query_heads, kv_heads}, options, false).out;
}

/// multi_query_attention() over q8 keys and values (one kv head).
template <class DQ>
Matrix<float> multi_query_attention(const Eigen::MatrixBase<DQ>& q, const Q8Matrix& k, const Q8Matrix& v,
                                    int query_heads, const Options& options = {}) {
  return detail::q8_attention("multi_query_attention", q, k, v, Heads{query_heads, 1}, options, false).out;
}

/// scaled_dot_product_attention() over q8 keys and values: q [Lq, d], k [Lk, d], v [Lk, dv], d and dv multiples of
/// 32.
template <class DQ>
Matrix<float> scaled_dot_product_attention(const Eigen::MatrixBase<DQ>& q, const Q8Matrix& k, const Q8Matrix& v,
                                           const Options& options = {}) {
  return detail::q8_attention("scaled_dot_product_attention", q, k, v, Heads{1, 1}, options, false).out;
}

/// scaled_dot_product_attention_with_lse() over q8 keys and values (lse [Lq, 1]).
template <class DQ>
AttentionResult<float> scaled_dot_product_attention_with_lse(const Eigen::MatrixBase<DQ>& q, const Q8Matrix& k,
                                                             const Q8Matrix& v, const Options& options = {}) {
  return detail::q8_attention("scaled_dot_product_attention_with_lse", q, k, v, Heads{1, 1}, options, true);
}

}  // namespace attend
