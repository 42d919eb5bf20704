#pragma once
/// \file
/// ALiBi (Press et al., 2022): a per-head linear penalty on the distance between query and key, instead of
/// position embeddings (BLOOM, MPT, Baichuan). The kernels apply it through Options::alibi_slopes; this header
/// gives the slopes those models use.

#include <cmath>
#include <vector>

#include "attend/errors.hpp"

namespace attend {

/// The slopes of BLOOM and ggml for `heads` heads: with n the largest power of two <= heads,
/// m0 = 2^(-max_bias / n) and m1 = 2^(-max_bias / (2n)), head h (0-based) gets m0^(h+1) for h < n and
/// m1^(2(h-n)+1) otherwise; for a power of two, 2^(-max_bias (h+1) / heads).
/// \throws attend::shape_error for heads < 1 or a max_bias that is not finite and > 0.
inline std::vector<double> geometric_alibi_slopes(int heads, double max_bias = 8.0) {
  constexpr const char* fn = "geometric_alibi_slopes";
  if (heads < 1) detail::fail(fn, "heads is ", heads, ", expected at least 1");
  if (!(std::isfinite(max_bias) && max_bias > 0))
    detail::fail(fn, "max_bias is ", max_bias, ", expected a finite value > 0");
  long long n = 1;
  while (2 * n <= heads) n *= 2;
  std::vector<double> slopes(static_cast<std::size_t>(heads));
  // m0^(h+1) = 2^(-max_bias (h+1) / n) and m1^(2(h-n)+1) = 2^(-max_bias (2(h-n)+1) / (2n)), as one exp2 each so
  // that no rounding accumulates over the powers.
  for (int h = 0; h < heads; ++h)
    slopes[h] = h < n ? std::exp2(-max_bias * double(h + 1) / double(n))
                      : std::exp2(-max_bias * double(2 * (h - n) + 1) / (2.0 * double(n)));
  return slopes;
}

}  // namespace attend
