#pragma once
/// \file
/// The two products of a tile with a handful of query rows (decoding), on Eigen's packet primitives: scores
/// S = Q K^T as dot products and acc += P V as weighted sums of value rows, read straight from the unpacked key and
/// value rows, any number of keys at a time.
///
/// Why not Eigen's matrix-vector products, one query row at a time: each call reads the key or value tile again for
/// every query row, and only long tiles amortize its setup. Here a register block of rows x keys shares its loads
/// and a call on 16 keys costs little, so the decode schedule walks 16 whole key rows through every kv group before
/// moving on, instead of one group's column slice of 64 keys (a page-strided read) at a time: reading order, not
/// the arithmetic, decides the speed of a decode step (docs/kernel-notes.md, "Decode").
///
/// Each dot product sums whole packets across the depth, then the packet's lanes, then the remainder of the depth
/// one value at a time: the same values as a plain product up to the order of the additions.

#include <Eigen/Core>

#include "attend/detail/cpu.hpp"
#include "attend/shapes.hpp"

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"  // packet types as template arguments, as in packed_gemm.hpp
// GCC 12's AVX-512 intrinsics start some vectors from the self-initialized `__m512d __Y = __Y`
// (_mm512_undefined_pd); inlined here through Eigen's predux, that is reported as used uninitialized, a false
// positive that -Werror makes fatal for anyone compiling this header with -march=native.
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif

namespace attend::detail {

/// Products of a few rows for scalar type T; every matrix is row-major with the given row stride. Every function is
/// forced inline: a decode step calls them on 16 key rows of one kv group at a time, and as calls the float decode
/// was measurably slower while executing fewer instructions, presumably because the calls cut the overlap of one
/// block's loads with its neighbours' work (docs/kernel-notes.md, "Decode").
template <class T>
struct RowProducts {
  using Packet = typename Eigen::internal::packet_traits<T>::type;
  static constexpr Index width = Eigen::internal::unpacket_traits<Packet>::size;
  /// Register blocks of 16 accumulators with 32 vector registers (AVX-512), 8 with 16 (SSE, AVX2), so that the
  /// operands still fit beside them: scores take `block_rows` rows x `block` keys, or one row x `wide` keys;
  /// accumulate takes `block_rows` rows x `block` packets of columns.
  static constexpr int block = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS >= 32 ? 4 : 2;
  static constexpr int wide = 4 * block;
  static constexpr int block_rows = 4;

  /// s[r, j] = q[r, :] . k[j, :] for r < rows, j < keys, over `depth` values.
  ///
  /// Up to rows_alone() rows go one at a time against `wide` keys: there each key is used by few rows, reading keys
  /// is the cost, and more key rows in flight read faster. More rows share each key's loads in blocks of
  /// `block_rows` x `block`.
  EIGEN_ALWAYS_INLINE static void scores(T* s, Index lds, const T* q, Index ldq, Index rows, const T* k, Index ldk,
                                         Index keys, Index depth) {
    // Empty operands may have null data; offsetting a null pointer is undefined behaviour even unused.
    if (rows == 0 || keys == 0) return;
    Index r = 0;
    if (rows > rows_alone())
      for (; r + block_rows <= rows; r += block_rows)
        scores_rows<block_rows, block>(s + r * lds, lds, q + r * ldq, ldq, k, ldk, keys, depth);
    for (; r < rows; ++r) scores_rows<1, wide>(s + r * lds, lds, q + r * ldq, ldq, k, ldk, keys, depth);
  }

  /// How many rows scores() takes one at a time: `block_rows` (a decode step of a kv group of 4 query heads), or
  /// fewer where AVX-512 runs in 256-bit halves (cpu.hpp). There a vector load holds the L1 port for two halves,
  /// and one row at a time, a load for every multiply-add, is bound by its loads and reads the block's key rows
  /// again for every row; in a cache of a few kv heads those rows are a page apart, so the same columns of 16 rows
  /// share one L1 set of fewer ways (4 KiB per way). With full-width units one row at a time measured faster.
  /// Either way each score sums the same products in the same order (docs/kernel-notes.md, "Decode").
  static Index rows_alone() { return cpu().avx512_double_pumped ? block_rows - 1 : block_rows; }

  /// acc[r, :] += sum over j < keys of p[r, j] * v[j, :] for r < rows, over `cols` values.
  EIGEN_ALWAYS_INLINE static void accumulate(T* acc, Index lda, const T* p, Index ldp, Index rows, const T* v,
                                             Index ldv, Index keys, Index cols) {
    if (rows == 0 || keys == 0 || cols == 0) return;  // as in scores(): empty operands may have null data
    Index r = 0;
    for (; r + block_rows <= rows; r += block_rows)
      accumulate_rows<block_rows>(acc + r * lda, lda, p + r * ldp, ldp, v, ldv, keys, cols);
    for (; r < rows; ++r) accumulate_rows<1>(acc + r * lda, lda, p + r * ldp, ldp, v, ldv, keys, cols);
  }

 private:
  template <int R, int C>
  EIGEN_ALWAYS_INLINE static void scores_rows(T* s, Index lds, const T* q, Index ldq, const T* k, Index ldk, Index keys,
                                              Index depth) {
    Index j = 0;
    for (; j + C <= keys; j += C) scores_block<R, C>(s + j, lds, q, ldq, k + j * ldk, ldk, depth);
    for (; j < keys; ++j) scores_block<R, 1>(s + j, lds, q, ldq, k + j * ldk, ldk, depth);
  }

  // R rows against C keys: R x C packet accumulators across the depth, then one horizontal sum each.
  template <int R, int C>
  EIGEN_ALWAYS_INLINE static void scores_block(T* s, Index lds, const T* q, Index ldq, const T* k, Index ldk,
                                               Index depth) {
    namespace ei = Eigen::internal;
    const Index packed_depth = depth / width * width;
    Packet acc[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = ei::pset1<Packet>(T(0));
    for (Index x = 0; x < packed_depth; x += width) {
      Packet kp[C];
      for (int c = 0; c < C; ++c) kp[c] = ei::ploadu<Packet>(k + c * ldk + x);
      for (int r = 0; r < R; ++r) {
        const Packet qp = ei::ploadu<Packet>(q + r * ldq + x);
        for (int c = 0; c < C; ++c) acc[r][c] = ei::pmadd(qp, kp[c], acc[r][c]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) {
        T sum = ei::predux(acc[r][c]);
        for (Index x = packed_depth; x < depth; ++x) sum += q[r * ldq + x] * k[c * ldk + x];
        s[r * lds + c] = sum;
      }
  }

  template <int R>
  EIGEN_ALWAYS_INLINE static void accumulate_rows(T* acc, Index lda, const T* p, Index ldp, const T* v, Index ldv,
                                                  Index keys, Index cols) {
    Index x = 0;
    for (; x + block * width <= cols; x += block * width)
      accumulate_block<R, block>(acc + x, lda, p, ldp, v + x, ldv, keys);
    for (; x + width <= cols; x += width) accumulate_block<R, 1>(acc + x, lda, p, ldp, v + x, ldv, keys);
    for (; x < cols; ++x)
      for (int r = 0; r < R; ++r) {
        T sum = acc[r * lda + x];
        for (Index j = 0; j < keys; ++j) sum += p[r * ldp + j] * v[j * ldv + x];
        acc[r * lda + x] = sum;
      }
  }

  // R rows x C packets of columns: the accumulators stay in registers across all keys, and each key's value
  // packets are loaded once for the R rows.
  template <int R, int C>
  EIGEN_ALWAYS_INLINE static void accumulate_block(T* acc, Index lda, const T* p, Index ldp, const T* v, Index ldv,
                                                   Index keys) {
    namespace ei = Eigen::internal;
    Packet a[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) a[r][c] = ei::ploadu<Packet>(acc + r * lda + c * width);
    for (Index j = 0; j < keys; ++j) {
      Packet vp[C];
      for (int c = 0; c < C; ++c) vp[c] = ei::ploadu<Packet>(v + j * ldv + c * width);
      for (int r = 0; r < R; ++r) {
        const Packet w = ei::pset1<Packet>(p[r * ldp + j]);
        for (int c = 0; c < C; ++c) a[r][c] = ei::pmadd(w, vp[c], a[r][c]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) ei::pstoreu(acc + r * lda + c * width, a[r][c]);
  }
};

}  // namespace attend::detail

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
