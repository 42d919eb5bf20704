#pragma once
/// \file
/// The online softmax (Milakov & Gimelshein 2018; FlashAttention's recurrence): a row's softmax over keys that
/// arrive one block at a time, carried as its running maximum m and running sum l. For each block of scores s_j:
///
///   m' = max(m, max_j s_j),   p_j = exp(s_j - m'),   alpha = exp(m - m'),   l' = alpha l + sum_j p_j,
///
/// and the caller rescales its accumulator, acc' = alpha acc + sum_j p_j v_j. After the last block the row is
/// acc / l and its log-sum-exp is m + log(l).
///
/// The -inf rules, written here once:
/// - Hidden entries of a block are set to 0 directly, never exponentiated: Eigen's vectorized exp clamps its
///   argument, so exp(-inf) would be ~1e-38 in float, not 0.
/// - A row that has seen only -inf scores (a bias hiding every key so far) has m = -inf; it shifts by 0 instead of
///   computing exp(-inf - -inf) = NaN.
/// - On a row's first visible block alpha = std::exp(-inf) = 0 exactly (std::exp, not Eigen's), and l and acc are 0.
/// - A row with l = 0 at the end saw no key: its output is zero (whatever the values held) and its lse is -inf.
/// - With additive terms (ALiBi, a bias), weights below negligible_weight() (2^-102 of the row's largest in
///   float) are 0: no subnormal numbers enter the products (see negligible_weight() and ScoreKind).
///
/// Two forms of the step: row_step() on one row of a row-major block (the rows mainloop), panel_step() on a
/// column-major panel of rows, vectorized across the panel's rows so there is no per-row reduction (the packed
/// mainloop).

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include "attend/detail/assert.hpp"
#include "attend/shapes.hpp"

namespace attend::detail::online_softmax {

/// The weights p = exp(s - m') below which a weight is 0: 2^digits times the smallest normal number (2^-102 in
/// float, 2^-969 in double). A row's largest weight is 1, so such a weight is below the rounding of every output
/// entry larger than 2^-102 max|v|; kept, its products with the values and the GEMM's partial sums over a tile of
/// such weights fall below the smallest normal number, and every multiply-add that makes a subnormal result takes a
/// microcode assist on today's x86 cores (ALiBi's far keys, a softcap's floor), which made whole products slower.
template <class T>
constexpr T negligible_weight() {
  return std::numeric_limits<T>::min() * T(Index(1) << std::numeric_limits<T>::digits);
}

/// p -> 0 where p < negligible_weight() (NaN stays NaN): a compare and a mask per packet.
template <class T>
struct DropNegligible {
  T operator()(const T& p) const { return p < negligible_weight<T>() ? T(0) : p; }
  template <class Packet>
  Packet packetOp(const Packet& p) const {
    namespace ei = Eigen::internal;
    return ei::pandnot(p, ei::pcmp_lt(p, ei::pset1<Packet>(negligible_weight<T>())));  // p & ~(p < w)
  }
};

}  // namespace attend::detail::online_softmax

namespace Eigen::internal {
template <class T>
struct functor_traits<attend::detail::online_softmax::DropNegligible<T>> {
  enum { Cost = 2 * NumTraits<T>::AddCost, PacketAccess = packet_traits<T>::Vectorizable };
};
}  // namespace Eigen::internal

namespace attend::detail::online_softmax {

/// p = exp(x), with negligible weights 0 (see negligible_weight()): the softmax's exponential, as one expression
/// (inlined: it only builds the expression, and is called once per panel column).
template <class X>
EIGEN_ALWAYS_INLINE auto weights(const X& x) {
  using T = typename X::Scalar;
  return x.exp().unaryExpr(DropNegligible<T>());
}

/// What a block's scores may hold besides the products (ScoreTransform says): -inf (a bias hiding keys) and
/// additive terms (ALiBi, a bias), which put scores far below their row's maximum as a rule. Only then are
/// negligible weights dropped (weights()): without terms the weights are Eigen's exp as they always were, so calls
/// without modifiers give the same bits as before, at the cost of neither the compare nor the mask.
struct ScoreKind {
  bool may_hold_neg_inf = false;
  bool has_terms = false;
};

/// exp(seen - shift) in place (`shift` a scalar or an array like `seen`), with entries equal to -inf mapped to
/// exactly 0 when they may hold it (a bias may hide keys). Eigen 3.4 evaluates select() one scalar at a time, so
/// it is used only then.
template <class Seen, class Shift>
EIGEN_ALWAYS_INLINE void exp_shifted(Seen&& seen, const Shift& shift, ScoreKind kind) {
  using T = typename std::decay_t<Seen>::Scalar;
  if (kind.may_hold_neg_inf)
    seen = (seen == -std::numeric_limits<T>::infinity()).select(T(0), weights(seen - shift));
  else if (kind.has_terms)
    seen = weights(seen - shift);
  else
    seen = (seen - shift).exp();
}

/// The step on one row: `seen` (an array expression) holds the row's visible scores of the block and becomes
/// their weights p_j. Calls rescale(alpha) when the maximum moved, for the caller's accumulator. Forced inline (as
/// exp_shifted()): the rows mainloop runs it per row on 64 scores at a time, and as a call it showed in a float
/// decode's time (docs/kernel-notes.md, "Decode").
template <class T, class Seen, class Rescale>
EIGEN_ALWAYS_INLINE void row_step(T& m, T& l, Seen&& seen, ScoreKind kind, Rescale&& rescale) {
  const T m_new = std::max(m, seen.maxCoeff());                                 // m' = max(m, max_j s_j)
  const T shift = m_new == -std::numeric_limits<T>::infinity() ? T(0) : m_new;  // see the -inf rules
  exp_shifted(seen, shift, kind);                                               // p_j = exp(s_j - m')
  if (m_new != m) {
    const T alpha = std::exp(m - shift);  // alpha = exp(m - m'): std::exp, exactly 0 on a row's first block
    l *= alpha;
    rescale(alpha);
    m = m_new;
  }
  l += seen.sum();  // l' = alpha l + sum_j p_j
}

/// The step on one panel: `h` rows whose scores are the column-major h x tk block at `s` (a column is one key, a
/// panel's rows), running maxima m and sums l (h each). With `lo` and `hi` (the mask cuts the tile), row r sees
/// keys [lo[r], hi[r]) of the block: as both grow with r, the rows that see key j are one run [a, b) of the
/// column, and only that run is read; the rest of the column is set to 0. Calls rescale(alpha) with the h
/// factors when some row's maximum moved and some row held something. Panels have at most kMaxRows rows.
template <int kMaxRows, class T, class Rescale>
void panel_step(T* s, Index h, Index tk, T* m_data, T* l_data, const Index* lo, const Index* hi, ScoreKind kind,
                Rescale&& rescale) {
  ATTEND_DASSERT(h <= kMaxRows, "a panel holds at most kMaxRows rows");
  // Panel columns live on the stack. A fixed size would be unrolled whole, and GCC 12 then reports a false
  // -Wuninitialized inside Eigen's AVX-512 exp.
  using Col = Eigen::Array<T, Eigen::Dynamic, 1, Eigen::ColMajor, kMaxRows, 1>;
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  Eigen::Map<Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic>> p(s, h, tk);
  Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> m(m_data, h), l(l_data, h);
  // Rows [a, b) of the panel see key j: a is the first row whose range ends after j, b the first starting after.
  Index a = 0, b = 0;
  const auto seen_by = [&](Index j) {
    if (!lo) return std::pair<Index, Index>{0, h};
    while (a < h && hi[a] <= j) ++a;
    b = std::max(a, b);
    while (b < h && lo[b] <= j) ++b;
    return std::pair<Index, Index>{a, b};
  };
  // Where every row sees every key, kBatch adjacent columns (contiguous) go through one vectorized expression
  // with the row vector repeated, which divides the per-column loop overhead by kBatch.
  constexpr Index kBatch = 4;
  using Batch = Eigen::Array<T, Eigen::Dynamic, 1, Eigen::ColMajor, kBatch * kMaxRows, 1>;
  Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> flat(s, h * tk);
  const Index batched = lo ? 0 : tk / kBatch * kBatch;
  Col m_new = m;  // m' = max(m, max_j s_j)
  if (batched > 0) {
    Batch wide = flat.head(kBatch * h);
    for (Index j = kBatch; j < batched; j += kBatch) wide = wide.max(flat.segment(j * h, kBatch * h));
    for (Index c = 0; c < kBatch; ++c) m_new = m_new.max(wide.segment(c * h, h));
  }
  for (Index j = batched; j < tk; ++j) {
    const auto [ra, rb] = seen_by(j);
    m_new.segment(ra, rb - ra) = m_new.segment(ra, rb - ra).max(p.col(j).segment(ra, rb - ra));
  }
  const Col shift = (m_new == neg_inf).select(Col::Zero(h), m_new);  // see the -inf rules
  const Col alpha = (m - shift).exp();  // 0 * (~1e-38) when the row has seen nothing yet: l and acc are 0
  Col total = Col::Zero(h);
  const Index batched_exp = kind.may_hold_neg_inf ? 0 : batched;
  if (batched_exp > 0) {
    Batch shifts(kBatch * h), sums = Batch::Zero(kBatch * h);
    for (Index c = 0; c < kBatch; ++c) shifts.segment(c * h, h) = shift;
    for (Index j = 0; j < batched_exp; j += kBatch) {
      auto cols = flat.segment(j * h, kBatch * h);
      if (kind.has_terms)
        cols = weights(cols - shifts);  // p_j = exp(s_j - m')
      else
        cols = (cols - shifts).exp();
      sums += cols;
    }
    for (Index c = 0; c < kBatch; ++c) total += sums.segment(c * h, h);
  }
  a = b = 0;
  for (Index j = batched_exp; j < tk; ++j) {
    const auto [ra, rb] = seen_by(j);
    auto c = p.col(j);
    c.head(ra).setZero();
    c.tail(h - rb).setZero();
    auto seen = c.segment(ra, rb - ra);
    exp_shifted(seen, shift.segment(ra, rb - ra), kind);  // p_j = exp(s_j - m')
    total.segment(ra, rb - ra) += seen;
  }
  // The accumulator needs rescaling only if it holds something (some row had a maximum) and some maximum moved.
  const bool moved = !(m == neg_inf).all() && !(alpha == T(1)).all();
  l = l * alpha + total;  // l' = alpha l + sum_j p_j
  m = m_new;
  if (moved) rescale(alpha);
}

/// What a row divides its accumulator by at the end: l, or 1 for a row that saw no key (l = 0; it is zeroed).
template <class T>
T divisor(T l) {
  return l == T(0) ? T(1) : l;
}

/// The row's log-sum-exp, m + log(l), or -inf for a row that saw no key.
template <class T>
T log_sum_exp(T m, T l) {
  return l == T(0) ? -std::numeric_limits<T>::infinity() : m + std::log(l);
}

/// A sink (gpt-oss): a logit in the softmax's denominator that belongs to no key. Applied to a finished row, whose
/// normalized output is `out` and log-sum-exp `lse`, it gives the row with the sink:
///
///   out' = out / (1 + exp(sink - lse)),   lse' = log(exp(lse) + exp(sink)),
///
/// so the weights sum to less than 1. Because it needs only the finished row, the split-key and ring paths compute
/// their parts without the sink, merge them, and apply it once. A row that saw no key (lse = -inf) stays zero with
/// lse' = sink; NaN stays NaN.
///
/// sink_row() gives the factor and the new lse (sink_factor() the factor alone, one exponential where the new lse
/// takes three and a logarithm more); apply_sink() applies them in place.
template <class T>
struct Sunk {
  T factor;  ///< 1 / (1 + exp(sink - lse)), what the row's output is multiplied by
  T lse;     ///< log(exp(lse) + exp(sink))
};
template <class T>
T sink_factor(T lse, T sink) {
  return T(1) / (T(1) + std::exp(sink - lse));  // out' = out / (1 + exp(sink - lse))
}
template <class T>
Sunk<T> sink_row(T lse, T sink) {
  const T hi = std::max(lse, sink);
  return {sink_factor(lse, sink), hi + std::log(std::exp(lse - hi) + std::exp(sink - hi))};  // log(e^lse + e^sink)
}

/// apply_sink() in place on a row and its lse.
template <class Row, class T>
void apply_sink(Row&& out, T& lse, T sink) {
  const Sunk<T> r = sink_row(lse, sink);
  out *= r.factor;
  lse = r.lse;
}

}  // namespace attend::detail::online_softmax
