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

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

#include "attend/detail/finite.hpp"
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
    // Rows as bfloat16 bits, padded with zeros, a block at a time: 16 key rows, or 32 value rows (16 pairs).
    std::vector<std::uint16_t> block(static_cast<std::size_t>(32 * std::max(d_pad, dv_pad)), 0);
    const auto bits_of = [](const S* src, Index n, std::uint16_t* dst) {
      if constexpr (std::is_same_v<S, Eigen::bfloat16>)
        std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(std::uint16_t));
      else
        for (Index i = 0; i < n; ++i) dst[i] = bf16_bits(src[i]);
    };
    // One kv group's row is a few hundred bytes at a stride of every group's row, too far apart for the hardware
    // prefetcher to follow: each block asks for the next block's rows before reordering its own.
    const auto prefetch = [&](const auto& row_of, Index j0, Index j1, Index n) {
#if defined(__GNUC__)
      for (Index j = j0; j < std::min(j1, keys); ++j)
        for (Index x = 0; x < n; x += 64 / Index(sizeof(S))) __builtin_prefetch(row_of(j) + x);
#else
      (void)row_of, (void)j0, (void)j1, (void)n;
#endif
    };
    const auto key_row = [&](Index j) { return kv.key_row(j); };
    const auto value_row = [&](Index j) { return kv.value_row(j); };

    for (Index j0 = 0; j0 < keys; j0 += 16) {
      prefetch(key_row, j0 + 16, j0 + 32, d);
      const Index n = std::min<Index>(16, keys - j0);
      for (Index jj = 0; jj < n; ++jj) bits_of(kv.key_row(j0 + jj), d, block.data() + jj * d_pad);
      std::fill(block.begin() + n * d_pad, block.begin() + 16 * d_pad, std::uint16_t(0));
      // Key j0 + jj is column jj of the block's tiles: dim pair p of dim block b is the 32-bit word (p, jj).
      for (Index b = 0; b < d_pad / 32; ++b) {
        std::uint16_t* tile = k.data() + (j0 / 16 * (d_pad / 32) + b) * kTile;
        for (Index p = 0; p < 16; ++p)
          for (Index jj = 0; jj < 16; ++jj) std::memcpy(tile + p * 32 + jj * 2, &block[jj * d_pad + b * 32 + 2 * p], 4);
      }
    }
    for (Index j0 = 0; j0 < keys; j0 += 32) {
      prefetch(value_row, j0 + 32, j0 + 64, dv);
      const Index n = std::min<Index>(32, keys - j0);
      for (Index jj = 0; jj < n; ++jj) bits_of(kv.value_row(j0 + jj), dv, block.data() + jj * dv_pad);
      std::fill(block.begin() + n * dv_pad, block.begin() + 32 * dv_pad, std::uint16_t(0));
      // Keys j0 + 2 r, j0 + 2 r + 1 are pair row r of the block's tiles: column c holds (V[j][c], V[j + 1][c]), 16
      // columns of two rows interleaved into one 64-byte tile row (fixed-size loops the compiler vectorizes).
      unsigned non_finite = 0;
      for (Index r = 0; r < 16; ++r) {
        const std::uint16_t* first = block.data() + 2 * r * dv_pad;
        const std::uint16_t* second = first + dv_pad;
        for (Index c0 = 0; c0 < dv_pad; c0 += 16) {
          std::uint16_t* dst = v.data() + (j0 / 32 * (dv_pad / 16) + c0 / 16) * kTile + r * 32;
          for (int i = 0; i < 16; ++i) {
            dst[2 * i] = first[c0 + i];
            dst[2 * i + 1] = second[c0 + i];
          }
        }
      }
      // The padding (zeros) is finite.
      for (Index i = 0; i < 32 * dv_pad; ++i) non_finite |= unsigned(non_finite_bits<Eigen::bfloat16>(block[i]));
      if (non_finite) finite_v[static_cast<std::size_t>(j0 / 32)] = 0;
    }
    group = g;
  }
};

}  // namespace attend::detail
