#pragma once
/// \file
/// Options of every attention call: scale, mask, softcap, sinks and ALiBi slopes, their checks and the default
/// scale.

#include <cmath>
#include <cstddef>
#include <optional>
#include <type_traits>
#include <vector>

#include "attend/errors.hpp"
#include "attend/masks.hpp"

namespace attend {

/// How scores are formed: `s = scale * (q . k)`, then softcap, then additive bias, then ALiBi, then the mask, then
/// a numerically stable softmax over the visible keys, with the sink in its denominator.
struct Options {
  std::optional<double> scale;  ///< default 1/sqrt(d_qk)
  Mask mask;                    ///< default Mask::none()
  double softcap = 0;           ///< > 0: s = softcap * tanh(s / softcap); 0 disables it
  /// Empty, or one logit per query head (1 for scaled_dot_product_attention): head h's softmax denominator gains
  /// exp(sinks[h]) (gpt-oss), so a row's weights sum to less than 1.
  std::vector<double> sinks = {};
  /// Empty, or one slope >= 0 per query head (1 for scaled_dot_product_attention): s_ij -= alibi_slopes[h] *
  /// |i + Lk - Lq - j| (ALiBi, FlashAttention's definition, whatever the mask; with a mask of fixed diagonal
  /// Mask::with_diagonal(D), |i + D - j|).
  std::vector<double> alibi_slopes = {};
};

namespace detail {

/// Throws shape_error naming `function` when the options cannot be used: a non-finite or non-positive scale,
/// a negative or non-finite softcap, a sliding window < 1. `T` is the scalar type the kernel computes in: a
/// scale or softcap that is fine as a double but overflows T, or rounds to 0 in it, would turn every score into
/// NaN or silently drop the option, so it is refused too.
///
/// `query_heads` is the number of query heads of the call (1 for single-head calls): sinks and alibi_slopes must
/// be empty or hold one value per query head, each finite in T, the slopes >= 0.
template <class T = double>
void check_options(const char* function, const Options& o, Index query_heads) {
  const char* type = std::is_same_v<T, float> ? "float" : "double";
  if (o.scale) {
    if (!(std::isfinite(*o.scale) && *o.scale > 0))
      fail(function, "options.scale is ", *o.scale, ", expected a finite value > 0");
    const T s = static_cast<T>(*o.scale);
    if (!(std::isfinite(s) && s > 0))
      fail(function, "options.scale is ", *o.scale, ", which ", type, " cannot represent (it becomes ", s, ")");
  }
  if (!(std::isfinite(o.softcap) && o.softcap >= 0))
    fail(function, "options.softcap is ", o.softcap, ", expected a finite value >= 0 (0 disables it)");
  if (o.softcap > 0) {
    // The kernels divide scores by the cap: both it and its reciprocal must be finite in T.
    const T c = static_cast<T>(o.softcap);
    if (!(std::isfinite(c) && c > 0 && std::isfinite(T(1) / c)))
      fail(function, "options.softcap is ", o.softcap, ", which ", type,
           " cannot represent together with its reciprocal (it becomes ", c, ")");
  }
  if (o.mask.kind() == Mask::Kind::sliding_window && o.mask.window() < 1)
    fail(function, "options.mask is sliding_window(", o.mask.window(), "), expected a window >= 1");
  const auto check_per_head = [&](const char* name, const std::vector<double>& values, bool non_negative) {
    if (!values.empty() && static_cast<Index>(values.size()) != query_heads)
      fail(function, "options.", name, " has ", values.size(), " entries, expected 0 or one per query head (",
           query_heads, ")");
    for (std::size_t h = 0; h < values.size(); ++h) {
      const T x = static_cast<T>(values[h]);
      if (!std::isfinite(values[h]) || !std::isfinite(x))
        fail(function, "options.", name, "[", h, "] is ", values[h], ", expected a value finite in ", type);
      if (non_negative && values[h] < 0)
        fail(function, "options.", name, "[", h, "] is ", values[h], ", expected a slope >= 0");
    }
  };
  check_per_head("sinks", o.sinks, false);
  check_per_head("alibi_slopes", o.alibi_slopes, true);
}

/// The scale a call uses: the option when set, else 1/sqrt(head_dim).
inline double scale_for(const Options& o, Index head_dim) {
  return o.scale ? *o.scale : 1.0 / std::sqrt(static_cast<double>(head_dim));
}

}  // namespace detail
}  // namespace attend
