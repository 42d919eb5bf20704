#pragma once
/// \file
/// A vectorized finite check, for the one place the kernel needs it: a zero weight times a non-finite value
/// would poison a row (0 * inf = NaN), and only tiles where some keys are hidden from some rows can pair the two,
/// so the mainloops check those tiles' values (one pass over a value tile) and then skip zero weights.

#include "attend/shapes.hpp"

namespace attend::detail {

/// Whether every entry is finite, row by row with vectorized sums (x * 0 is 0 for finite x, NaN otherwise):
/// Eigen's allFinite() is a scalar loop in column order, slow on the strided rows of a key tile.
template <class Derived>
bool all_finite(const Eigen::MatrixBase<Derived>& m) {
  using T = typename Derived::Scalar;
  for (Index r = 0; r < m.rows(); ++r)
    if (!((m.row(r).array() * T(0)).sum() == T(0))) return false;
  return true;
}

/// Whether values [j0, j1) of a kv group's stored keys and values (detail::GroupKeys) are all finite.
template <class Keys>
bool values_finite(const Keys& kv, Index j0, Index j1) {
  bool finite = true;
  kv.for_each_run(j0, j1, [&](Index a, Index b) { finite = finite && all_finite(kv.values(a, b)); });
  return finite;
}

}  // namespace attend::detail
