#pragma once
/// \file
/// A vectorized finite check, for the one place the kernel needs it: a zero weight times a non-finite value
/// would poison a row (0 * inf = NaN), and only tiles where some keys are hidden from some rows can pair the two,
/// so the mainloops check those tiles' values (one pass over a value tile) and then skip zero weights.

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "attend/shapes.hpp"

namespace attend::detail {

/// Whether the bits of a 16-bit value (bfloat16 or half) are inf or NaN: its exponent bits all ones. A branch-free
/// test on the stored bits, so loops over 16-bit rows vectorize without converting to float.
template <class T>
constexpr bool non_finite_bits(std::uint16_t bits) {
  constexpr std::uint16_t exponent = std::is_same_v<T, Eigen::bfloat16> ? 0x7f80 : 0x7c00;
  return (bits & exponent) == exponent;
}

/// Whether every entry is finite, row by row with vectorized sums (x * 0 is 0 for finite x, NaN otherwise):
/// Eigen's allFinite() is a scalar loop in column order, slow on the strided rows of a key tile.
/// For 16-bit storage (rows of a row-major map or block), a test of the exponent bits instead (all ones: inf or
/// NaN): 16-bit arithmetic would convert every value to float and back.
template <class Derived>
bool all_finite(const Eigen::MatrixBase<Derived>& m) {
  using T = typename Derived::Scalar;
  if constexpr (is_16bit<T>) {
    const auto& rows = m.derived();
    for (Index r = 0; r < rows.rows(); ++r) {
      const T* row = rows.data() + r * rows.outerStride();
      unsigned non_finite = 0;
      for (Index c = 0; c < rows.cols(); ++c) {
        std::uint16_t bits;
        std::memcpy(&bits, row + c, sizeof bits);
        non_finite |= unsigned(non_finite_bits<T>(bits));
      }
      if (non_finite) return false;
    }
    return true;
  } else {
    for (Index r = 0; r < m.rows(); ++r)
      if (!((m.row(r).array() * T(0)).sum() == T(0))) return false;
    return true;
  }
}

/// Whether values [j0, j1) of a kv group's stored keys and values (detail::GroupKeys) are all finite.
template <class Keys>
bool values_finite(const Keys& kv, Index j0, Index j1) {
  bool finite = true;
  kv.for_each_run(j0, j1, [&](Index a, Index b) { finite = finite && all_finite(kv.values(a, b)); });
  return finite;
}

}  // namespace attend::detail
