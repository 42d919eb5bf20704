#pragma once
/// \file
/// Keys and values packed for the 16-bit prefill mainloop: bfloat16 values in the pair-interleaved ("VNNI") order
/// that AMX's tdpbf16ps reads as its right operand and AVX512-BF16's vdpbf16ps reads one 64-byte row at a time.
/// A right operand multiplies pairs along its depth: row p of a tile holds, for each of 16 columns, the two depth
/// values 2p and 2p + 1 side by side.
///
///   keys    S = Q K^T: depth = head dims, columns = keys. Tile (key block n of 16 keys, dim block b of 32 dims) is
///           1 KiB: [16 dim pairs][16 keys][2].
///   values  O += P V: depth = keys, columns = value dims. Tile (key block m of 32 keys, column block c of 16) is
///           1 KiB: [16 key pairs][16 columns][2].
///
/// Tiles are stored one after the other (contiguous 1 KiB loads, no page-strided rows); dims are padded with zeros
/// to a multiple of 32, value columns to 16 and keys to 32, which changes no product. Half (fp16) storage is
/// rounded to bfloat16 here (its 10-bit mantissa to 7 bits); bfloat16 is copied.

#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

#include "attend/detail/group_keys.hpp"
#include "attend/detail/problem.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// The bits of x as bfloat16 (round to nearest even through float for half).
template <class S>
std::uint16_t bf16_bits(S x) {
  Eigen::bfloat16 b;
  if constexpr (std::is_same_v<S, Eigen::bfloat16>)
    b = x;
  else
    b = Eigen::bfloat16(static_cast<float>(x));
  std::uint16_t bits;
  std::memcpy(&bits, &b, sizeof bits);
  return bits;
}

inline constexpr Index round_up(Index n, Index m) { return (n + m - 1) / m * m; }

/// An allocator of cache-line (64-byte) aligned storage: a tile row that straddles two cache lines costs two line
/// accesses, and tile loads are the 16-bit mainloop's bottleneck.
template <class T>
struct LineAllocator {
  using value_type = T;
  LineAllocator() = default;
  template <class U>
  LineAllocator(const LineAllocator<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <class U>
  bool operator==(const LineAllocator<U>&) const {
    return true;
  }
  template <class U>
  bool operator!=(const LineAllocator<U>&) const {
    return false;
  }
};
template <class T>
using LineVector = std::vector<T, LineAllocator<T>>;

/// One kv group's keys and values in tiles (see the file comment). Reused by every query tile of the group that
/// runs on this thread.
struct VnniKeys {
  static constexpr Index kTile = 512;  ///< bfloat16 values per tile: 16 rows of 64 bytes
  LineVector<std::uint16_t> k, v;
  std::vector<unsigned char> finite_v;  ///< per 32-key block of values: 1 when every value of it is finite
  Index keys = 0, keys_pad = 0, d = 0, d_pad = 0, dv = 0, dv_pad = 0;
  Index group = -1;  ///< the kv group held (an id its schedule gives), -1 for none

  /// Tile of keys [16 n, 16 n + 16), dims [32 b, 32 b + 32).
  const std::uint16_t* key_tile(Index n, Index b) const { return k.data() + (n * (d_pad / 32) + b) * kTile; }
  /// Tile of keys [32 m, 32 m + 32), value columns [16 c, 16 c + 16).
  const std::uint16_t* value_tile(Index m, Index c) const { return v.data() + (m * (dv_pad / 16) + c) * kTile; }

  template <class S>
  void pack(const GroupKeys<S>& kv, Index g) {
    keys = kv.rows();
    d = kv.key_cols();
    dv = kv.value_cols();
    keys_pad = round_up(keys, 32);
    d_pad = round_up(d, 32);
    dv_pad = round_up(dv, 16);
    k.assign(static_cast<std::size_t>(keys_pad * d_pad), 0);
    v.assign(static_cast<std::size_t>(keys_pad * dv_pad), 0);
    finite_v.assign(static_cast<std::size_t>(keys_pad / 32), 1);
    // Rows as bfloat16 bits, padded with zeros: one key row (d_pad), two value rows (a pair) at a time.
    std::vector<std::uint16_t> key_row(static_cast<std::size_t>(d_pad), 0),
        pair(static_cast<std::size_t>(2 * dv_pad), 0);
    const auto bits_of = [](const S* src, Index n, std::uint16_t* dst) {
      if constexpr (std::is_same_v<S, Eigen::bfloat16>)
        std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(std::uint16_t));
      else
        for (Index i = 0; i < n; ++i) dst[i] = bf16_bits(src[i]);
    };
    for (Index j = 0; j < keys; ++j) {
      // Key j is column j % 16 of key block j / 16: its dim pair p of dim block b is the 32-bit word (p, j % 16).
      bits_of(kv.key_row(j), d, key_row.data());
      std::uint16_t* block = k.data() + j / 16 * (d_pad / 32) * kTile + j % 16 * 2;
      for (Index b = 0; b < d_pad / 32; ++b)
        for (Index p = 0; p < 16; ++p) std::memcpy(block + b * kTile + p * 32, &key_row[b * 32 + 2 * p], 4);
    }
    for (Index j = 0; j < keys; j += 2) {
      // Keys j, j + 1 are pair row (j % 32) / 2 of key block j / 32: column c of it holds (V[j][c], V[j + 1][c]).
      bits_of(kv.value_row(j), dv, pair.data());
      if (j + 1 < keys)
        bits_of(kv.value_row(j + 1), dv, pair.data() + dv_pad);
      else
        std::fill_n(pair.data() + dv_pad, dv_pad, std::uint16_t(0));
      std::uint16_t* row = v.data() + j / 32 * (dv_pad / 16) * kTile + (j % 32) / 2 * 32;
      bool finite = true;
      for (Index c = 0; c < dv; ++c) {
        const std::uint16_t a = pair[c], b = pair[dv_pad + c];
        finite = finite && (a & 0x7f80) != 0x7f80 && (b & 0x7f80) != 0x7f80;  // exponent all ones: inf or NaN
        std::uint16_t* dst = row + c / 16 * kTile + c % 16 * 2;
        dst[0] = a;
        dst[1] = b;
      }
      if (!finite) finite_v[static_cast<std::size_t>(j / 32)] = 0;
    }
    group = g;
  }
};

}  // namespace attend::detail
