#pragma once
/// \file
/// Mask policies. A mask is a rule giving each query row a contiguous range of visible keys; every kernel asks the
/// mask for that range instead of carrying its own copy of the loop.

#include <algorithm>
#include <limits>
#include <optional>
#include <ostream>

#include "attend/shapes.hpp"

namespace attend {

namespace detail {

/// a + b, saturated at the ends of Index instead of overflowing.
inline Index saturating_add(Index a, Index b) {
  constexpr Index hi = std::numeric_limits<Index>::max(), lo = std::numeric_limits<Index>::min();
  if (b > 0 && a > hi - b) return hi;
  if (b < 0 && a < lo - b) return lo;
  return a + b;
}

/// a - b, saturated at the ends of Index instead of overflowing.
inline Index saturating_sub(Index a, Index b) {
  constexpr Index hi = std::numeric_limits<Index>::max(), lo = std::numeric_limits<Index>::min();
  if (b < 0 && a > hi + b) return hi;
  if (b > 0 && a < lo + b) return lo;
  return a - b;
}

}  // namespace detail

/// Half-open range `[begin, end)` of key indices; empty when `begin >= end`.
struct KeyRange {
  Index begin;
  Index end;
  bool empty() const { return begin >= end; }
  Index size() const { return end > begin ? end - begin : 0; }
};

/// Which keys each query may see. All masks here give every query a contiguous key range whose ends never
/// decrease from one query row to the next, which is what lets the blocked kernel skip whole tiles.
class Mask {
 public:
  enum class Kind { none, causal, causal_top_left, sliding_window };

  /// Every key visible (the default).
  Mask() = default;
  static Mask none() { return Mask(); }
  /// Bottom-right aligned: query i sees key j iff j <= i + (Lk - Lq). With a KV cache the queries are the
  /// newest tokens, so this is the mask for decoding.
  static Mask causal() { return Mask(Kind::causal, 0); }
  /// Top-left aligned (PyTorch `is_causal`): query i sees key j iff j <= i.
  static Mask causal_top_left() { return Mask(Kind::causal_top_left, 0); }
  /// causal() restricted to the last `window` keys, itself included: j > i + (Lk - Lq) - window.
  /// Precondition window >= 1; every kernel throws shape_error for a smaller window (the factory itself does
  /// not throw, so a bad mask fails where it is used, with that function's name).
  static Mask sliding_window(Index window) { return Mask(Kind::sliding_window, window); }

  /// The same mask with its diagonal fixed: query i sees keys j <= i + diagonal (and, for sliding_window,
  /// j > i + diagonal - window) whatever Lq and Lk are. This places a block of queries and a block of keys
  /// taken from one longer sequence: with query block offset qo and key block offset ko, `diagonal = qo - ko`
  /// gives the causal mask of the whole sequence (as ring attention needs). none() is unchanged.
  Mask with_diagonal(Index diagonal) const {
    Mask m = *this;
    if (kind_ != Kind::none) m.diagonal_ = diagonal;
    return m;
  }
  /// The fixed diagonal, if with_diagonal() set one.
  std::optional<Index> diagonal() const { return diagonal_; }

  Kind kind() const { return kind_; }
  /// The window of sliding_window(), 0 for the other kinds.
  Index window() const { return window_; }
  /// True for every kind but none().
  bool hides_future() const { return kind_ != Kind::none; }

  /// The keys query row `i` of `lq` may see among `lk` keys. Any diagonal and window an Index holds give the exact
  /// range: the ends i + diagonal + 1 and i + diagonal + 1 - window saturate at the ends of Index instead of
  /// overflowing, and a saturated end lies on the same side of [0, lk] as the exact one, so the clamp to [0, lk]
  /// is the same.
  KeyRange keys(Index i, Index lq, Index lk) const {
    const auto clamp = [lk](Index x) { return std::clamp<Index>(x, 0, lk); };
    // The last key query i sees is i + diagonal: lk - lq aligns the last query with the last key.
    const Index diagonal = diagonal_ ? *diagonal_ : (kind_ == Kind::causal_top_left ? 0 : lk - lq);
    const Index next = detail::saturating_add(i, 1);
    switch (kind_) {
      case Kind::none:
        return {0, lk};
      case Kind::causal:
      case Kind::causal_top_left:
        return {0, clamp(detail::saturating_add(next, diagonal))};
      case Kind::sliding_window:  // (i + 1) + (diagonal - window): each step saturates on the exact side
        return {clamp(detail::saturating_add(next, detail::saturating_sub(diagonal, window_))),
                clamp(detail::saturating_add(next, diagonal))};
    }
    return {0, lk};
  }

  /// Whether query row `i` of `lq` sees key `j` of `lk`.
  bool visible(Index i, Index j, Index lq, Index lk) const {
    const KeyRange r = keys(i, lq, lk);
    return j >= r.begin && j < r.end;
  }

  friend bool operator==(const Mask& a, const Mask& b) {
    return a.kind_ == b.kind_ && a.window_ == b.window_ && a.diagonal_ == b.diagonal_;
  }
  friend bool operator!=(const Mask& a, const Mask& b) { return !(a == b); }

  friend std::ostream& operator<<(std::ostream& os, const Mask& m) {
    switch (m.kind_) {
      case Kind::none:
        os << "none()";
        break;
      case Kind::causal:
        os << "causal()";
        break;
      case Kind::causal_top_left:
        os << "causal_top_left()";
        break;
      case Kind::sliding_window:
        os << "sliding_window(" << m.window_ << ')';
        break;
    }
    if (m.diagonal_) os << ".with_diagonal(" << *m.diagonal_ << ')';
    return os;
  }

 private:
  Mask(Kind kind, Index window) : kind_(kind), window_(window) {}
  Kind kind_ = Kind::none;
  Index window_ = 0;
  std::optional<Index> diagonal_;
};

}  // namespace attend
