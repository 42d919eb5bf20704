#pragma once
/// \file
/// Attention results with their log-sum-exp, their exact merge over disjoint key sets, and sinks applied to a
/// merged result.

#include <cmath>
#include <type_traits>
#include <vector>

#include "attend/detail/checks.hpp"
#include "attend/detail/merge.hpp"
#include "attend/detail/online_softmax.hpp"
#include "attend/errors.hpp"
#include "attend/shapes.hpp"

namespace attend {

/// Attention output with the log-sum-exp of each row's visible scaled scores, per head: what is needed to merge
/// attention over disjoint key sets (split across threads, machines or cache segments) exactly.
/// `out` is [Lq, H*dv]; `lse` is [Lq, H], -infinity where a head's row saw no key, in the compute type (float for
/// bfloat16 and half outputs).
template <class T>
struct AttentionResult {
  Matrix<T> out;
  Matrix<accumulator_t<T>> lse;
};

/// Merges attention results computed for the same queries over disjoint sets of keys into the result over
/// their union: per row and head, out = sum_i exp(lse_i - lse) out_i with lse = log sum_i exp(lse_i).
/// Exact up to rounding; a part with lse = -inf (no visible key) contributes nothing.
///
/// **Shapes:** n x ((Lq,H*dv), (Lq,H)) => ((Lq,H*dv), (Lq,H))
/// \pre at least one part; all parts of equal shapes; H >= 1 dividing the output columns.
/// \throws attend::shape_error when a precondition fails.
template <class T>
AttentionResult<T> merge_attention(const std::vector<AttentionResult<T>>& parts) {
  static_assert(detail::is_supported_scalar<T>, ATTEND_DETAIL_UNSUPPORTED_SCALAR);
  using C = accumulator_t<T>;
  constexpr const char* fn = "merge_attention";
  if (parts.empty()) detail::fail(fn, "parts is empty, expected at least one result");
  const Index rows = parts[0].out.rows(), cols = parts[0].out.cols(), heads = parts[0].lse.cols();
  if (heads < 1 || cols % heads != 0 || parts[0].lse.rows() != rows)
    detail::fail(fn, "parts[0].lse is ", detail::shape_of(parts[0].lse), ", expected [Lq, H] with H dividing out ",
                 detail::shape_of(parts[0].out));
  for (std::size_t i = 1; i < parts.size(); ++i)
    if (parts[i].out.rows() != rows || parts[i].out.cols() != cols || parts[i].lse.rows() != rows ||
        parts[i].lse.cols() != heads)
      detail::fail(fn, "parts[", i, "] has out ", detail::shape_of(parts[i].out), " and lse ",
                   detail::shape_of(parts[i].lse), ", expected ", detail::Shape{rows, cols}, " and ",
                   detail::Shape{rows, heads}, " as parts[0]");
  const Index dv = cols / heads;
  AttentionResult<T> merged{Matrix<T>(rows, cols), Matrix<C>(rows, heads)};
  if (rows == 0) return merged;  // offsetting an empty matrix's null data pointer is undefined behaviour
  // 16-bit outputs are merged in float (and rounded once at the end).
  std::vector<Matrix<C>> widened;
  if constexpr (!std::is_same_v<T, C>)
    for (const auto& p : parts) widened.push_back(p.out.template cast<C>());
  const auto out_of = [&](std::size_t i) -> const C* {
    if constexpr (std::is_same_v<T, C>)
      return parts[i].out.data();
    else
      return widened[i].data();
  };
  std::vector<detail::PartRows<C>> rows_of(parts.size());
  Vector<C> scratch(dv);
  for (Index h = 0; h < heads; ++h) {
    for (std::size_t i = 0; i < parts.size(); ++i)
      rows_of[i] = {out_of(i) + h * dv, cols, parts[i].lse.data() + h, heads};
    detail::merge_rows<C>(rows_of.data(), rows_of.size(), rows, dv, scratch.data(),
                          [&](Index r, const auto& row, C lse) {
                            merged.out.block(r, h * dv, 1, dv) = row.template cast<T>();
                            merged.lse(r, h) = lse;
                          });
  }
  return merged;
}

/// merge_attention() of two results.
template <class T>
AttentionResult<T> merge_attention(const AttentionResult<T>& a, const AttentionResult<T>& b) {
  return merge_attention(std::vector<AttentionResult<T>>{a, b});
}

/// The result with sinks (gpt-oss) of a result computed without them: per row and head h,
/// out *= 1 / (1 + exp(sinks[h] - lse)) and lse = log(exp(lse) + exp(sinks[h])). Attention split over key blocks
/// (threads, ring attention) computes its parts without sinks, merges them, then applies the sinks once; the
/// result equals one call with Options::sinks. A row that saw no key stays zero with lse = sinks[h].
///
/// **Shapes:** ((Lq,H*dv), (Lq,H)) x H sinks => ((Lq,H*dv), (Lq,H))
/// \throws attend::shape_error when sinks has other than H entries or a non-finite one, or the result's shapes
///         disagree (lse [Lq, H] with H dividing out's columns).
template <class T>
AttentionResult<T> apply_sinks(const AttentionResult<T>& sink_free, const std::vector<double>& sinks) {
  static_assert(detail::is_supported_scalar<T>, ATTEND_DETAIL_UNSUPPORTED_SCALAR);
  using C = accumulator_t<T>;
  constexpr const char* fn = "apply_sinks";
  const Index rows = sink_free.out.rows(), cols = sink_free.out.cols(), heads = sink_free.lse.cols();
  if (heads < 1 || cols % heads != 0 || sink_free.lse.rows() != rows)
    detail::fail(fn, "sink_free.lse is ", detail::shape_of(sink_free.lse), ", expected [Lq, H] with H dividing out ",
                 detail::shape_of(sink_free.out));
  if (static_cast<Index>(sinks.size()) != heads)
    detail::fail(fn, "sinks has ", sinks.size(), " entries, expected one per head of the result (", heads, ")");
  for (std::size_t h = 0; h < sinks.size(); ++h)
    if (!std::isfinite(sinks[h]) || !std::isfinite(static_cast<C>(sinks[h])))
      detail::fail(fn, "sinks[", h, "] is ", sinks[h], ", expected a finite value");
  AttentionResult<T> r = sink_free;
  const Index dv = cols / heads;
  for (Index i = 0; i < rows; ++i)
    for (Index h = 0; h < heads; ++h) {
      const auto sunk = detail::online_softmax::sink_row(r.lse(i, h), static_cast<C>(sinks[h]));
      r.out.block(i, h * dv, 1, dv) =
          (r.out.block(i, h * dv, 1, dv).template cast<C>() * sunk.factor).template cast<T>();
      r.lse(i, h) = sunk.lse;
    }
  return r;
}

}  // namespace attend
