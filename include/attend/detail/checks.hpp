#pragma once
/// \file
/// Argument checks shared by the kernels and the reference, run before any work.

#include <type_traits>

#include "attend/errors.hpp"
#include "attend/options.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// The compile-time tier of attend's checks. Every static_assert of attend uses one of these two wordings.
#define ATTEND_DETAIL_UNSUPPORTED_SCALAR \
  "attend: unsupported scalar type (float or double; the kernels also take Eigen::bfloat16 and Eigen::half)"
#define ATTEND_DETAIL_MIXED_SCALARS \
  "attend: all matrix arguments must have the same scalar type (the kernels also take float q with 16-bit k and v)"

/// T must be float or double (layers, norms, RoPE, the reference) and every matrix argument must hold T.
template <class T, class... Derived>
constexpr void static_check_scalars() {
  static_assert(is_compute_scalar<T>, ATTEND_DETAIL_UNSUPPORTED_SCALAR);
  static_assert((std::is_same_v<T, typename Derived::Scalar> && ...), ATTEND_DETAIL_MIXED_SCALARS);
}

/// The kernels' rule: q (and a bias) of T, k and v both of S, with S == T or float q over 16-bit k and v.
template <class DQ, class DK, class DV, class... DB>
constexpr void static_check_kernel_scalars() {
  using T = typename DQ::Scalar;
  using S = typename DK::Scalar;
  static_assert(is_supported_scalar<T> && is_supported_scalar<S>, ATTEND_DETAIL_UNSUPPORTED_SCALAR);
  static_assert(std::is_same_v<S, typename DV::Scalar> && is_storage_pair<T, S> &&
                    (std::is_same_v<T, typename DB::Scalar> && ...),
                ATTEND_DETAIL_MIXED_SCALARS);
}

template <class Compute, class Q>
using compute_scalar = std::conditional_t<std::is_void_v<Compute>, accumulator_t<typename Q::Scalar>, Compute>;

/// Checks q [Lq,d], k [Lk,d], v [Lk,dv] and the options. `Compute` is the scalar type the caller computes in
/// (default: q's), against which the options' scale and softcap must be representable.
template <class Compute = void, class Q, class K, class V>
void check_attention(const char* fn, const Q& q, const K& k, const V& v, const Options& options) {
  if (q.cols() < 1) fail(fn, "q is ", shape_of(q), ", expected at least one column (the head dimension)");
  if (k.cols() != q.cols())
    fail(fn, "k has ", k.cols(), " columns, expected q's ", q.cols(), " (q ", shape_of(q), ", k ", shape_of(k), ")");
  if (v.rows() != k.rows())
    fail(fn, "v has ", v.rows(), " rows, expected k's ", k.rows(), " (k ", shape_of(k), ", v ", shape_of(v), ")");
  check_options<compute_scalar<Compute, Q>>(fn, options, 1);
}

template <class B, class Q, class K>
void check_bias(const char* fn, const B& bias, const Q& q, const K& k) {
  if (bias.rows() != q.rows() || bias.cols() != k.rows())
    fail(fn, "bias is ", shape_of(bias), ", expected [Lq, Lk] = ", Shape{q.rows(), k.rows()}, " (q ", shape_of(q),
         ", k ", shape_of(k), ")");
}

/// Checks q [Lq,H*d], k [Lk,G*d], v [Lk,G*dv] against Heads{H,G} and the options (`Compute` as above).
template <class Compute = void, class Q, class K, class V>
void check_multi_head(const char* fn, const Q& q, const K& k, const V& v, Heads heads, const Options& options) {
  if (heads.query < 1) fail(fn, "heads.query is ", heads.query, ", expected at least 1");
  if (heads.kv < 1) fail(fn, "heads.kv is ", heads.kv, ", expected at least 1");
  if (heads.query % heads.kv != 0)
    fail(fn, "query heads (", heads.query, ") are not a multiple of kv heads (", heads.kv, ")");
  if (q.cols() < heads.query || q.cols() % heads.query != 0)
    fail(fn, "q has ", q.cols(), " columns, expected a positive multiple of query heads (", heads.query, ") (q ",
         shape_of(q), ")");
  const Index d = q.cols() / heads.query;
  if (k.cols() != heads.kv * d)
    fail(fn, "k has ", k.cols(), " columns, expected kv heads (", heads.kv, ") * head dim (", d, ") = ", heads.kv * d,
         " (q ", shape_of(q), ", k ", shape_of(k), ")");
  if (v.cols() % heads.kv != 0)
    fail(fn, "v has ", v.cols(), " columns, expected a multiple of kv heads (", heads.kv, ") (v ", shape_of(v), ")");
  if (v.rows() != k.rows())
    fail(fn, "v has ", v.rows(), " rows, expected k's ", k.rows(), " (k ", shape_of(k), ", v ", shape_of(v), ")");
  check_options<compute_scalar<Compute, Q>>(fn, options, heads.query);
}

template <class O>
void check_output(const char* fn, const O& out, Index rows, Index cols) {
  if (out.rows() != rows || out.cols() != cols) fail(fn, "out is ", shape_of(out), ", expected ", Shape{rows, cols});
  // Rows sharing memory would be written by several tasks at once, each over the others.
  if (rows > 1 && cols > 0 && (out.outerStride() < cols && out.outerStride() > -cols))
    fail(fn, "out has rows of ", cols, " values ", out.outerStride(), " apart (out ", shape_of(out),
         "): its rows overlap in memory, expected an outer stride of at least ", cols);
}

}  // namespace attend::detail
