#pragma once
/// \file
/// What decoders keep between steps. KVCache holds the keys and values of MultiHeadAttention's tokens so far;
/// LatentCache holds MultiHeadLatentAttention's latent and shared rope key per token. Both grow as tokens arrive
/// (detail::RowStore: capacity doubles) and are read in place by the kernel.

#include <cstddef>
#include <type_traits>

#include "attend/detail/checks.hpp"
#include "attend/detail/q8_rows.hpp"
#include "attend/detail/row_store.hpp"
#include "attend/errors.hpp"
#include "attend/quantized.hpp"
#include "attend/shapes.hpp"

namespace attend {

namespace detail {

/// Throws shape_error naming `fn` unless the reserve() arguments are all >= 0.
inline void check_reserve(const char* fn, Index tokens, const char* a_name, Index a, const char* b_name, Index b) {
  if (tokens < 0 || a < 0 || b < 0)
    fail(fn, "tokens ", tokens, ", ", a_name, " ", a, " and ", b_name, " ", b, " must not be negative");
}

/// Rows stored in the q8 format with half scales (34 bytes per block of 32 values, as ggml's q8_0), growing as
/// tokens arrive: the storage of the 8-bit caches. Rows are quantized as they are appended (quantize_block(): the
/// scale computed in float as quantize_q8 does, then stored as half).
class Q8Store {
 public:
  Index size() const { return values_.size(); }
  Index capacity() const { return values_.capacity(); }
  Index width() const { return values_.width(); }
  void clear() {
    values_.clear();
    scales_.clear();
  }
  void reserve(Index rows, Index width) {
    values_.reserve(rows, width);
    scales_.reserve(rows, width / Q8Matrix::kBlock);
  }
  /// Appends the rows of x (finite, a multiple of 32 columns: checked by the caller).
  template <class Derived>
  void append(const Eigen::MatrixBase<Derived>& x) {
    const Matrix<float> rows = x.template cast<float>();
    const Index blocks = rows.cols() / Q8Matrix::kBlock;
    Matrix<std::int8_t> q(rows.rows(), rows.cols());
    Matrix<Eigen::half> s(rows.rows(), blocks);
    for (Index r = 0; r < rows.rows(); ++r)
      for (Index b = 0; b < blocks; ++b)
        s(r, b) = Eigen::half(
            quantize_block(rows.row(r).data() + b * Q8Matrix::kBlock, q.row(r).data() + b * Q8Matrix::kBlock));
    values_.append(q);
    scales_.append(s);
  }
  Q8Rows<Eigen::half> rows() const {
    const ConstRowsRef<std::int8_t> q = values_.rows();
    const ConstRowsRef<Eigen::half> s = scales_.rows();
    return Q8Rows<Eigen::half>(q.data(), q.outerStride(), s.data(), s.outerStride(), q.rows(), q.cols());
  }
  std::size_t bytes() const {
    return std::size_t(size()) * (std::size_t(width()) + std::size_t(width() / Q8Matrix::kBlock) * sizeof(Eigen::half));
  }

 private:
  RowStore<std::int8_t> values_;
  RowStore<Eigen::half> scales_;
};

/// Throws shape_error naming `fn` unless rows of `width` can go into an 8-bit cache: a multiple of 32.
inline void check_q8_width(const char* fn, const char* name, Index width) {
  if (width % Q8Matrix::kBlock != 0)
    fail(fn, name, " is ", width, ", expected a multiple of 32 for an 8-bit cache (its q8 blocks)");
}

}  // namespace detail

/// Keys and values of the tokens seen so far, for decoding with MultiHeadAttention<T>::forward(x, cache), stored
/// as S: T itself, or Eigen::bfloat16 / Eigen::half under a float layer (half the bytes per token; the kernel reads
/// them as they are stored, and only the stored keys and values are rounded).
template <class T, class S = T>
class KVCache {
  static_assert(detail::is_compute_scalar<T> && detail::is_storage_pair<T, S>, ATTEND_DETAIL_UNSUPPORTED_SCALAR);

 public:
  using Scalar = T;   ///< the layer's type
  using Storage = S;  ///< what the keys and values are stored as

  KVCache() = default;

  /// Tokens held.
  Index size() const { return keys_.size(); }
  /// Tokens that fit before the storage grows.
  Index capacity() const { return keys_.capacity(); }
  /// Forgets every token (keeps the storage); the cache can then serve a layer of any size.
  void clear() {
    keys_.clear();
    values_.clear();
  }
  /// Makes room for `tokens` tokens of `key_width` / `value_width` features, so decoding up to that length
  /// never reallocates. Throws shape_error for a negative argument or if the cache holds tokens of other widths.
  void reserve(Index tokens, Index key_width, Index value_width) {
    constexpr const char* fn = "KVCache::reserve";
    detail::check_reserve(fn, tokens, "key_width", key_width, "value_width", value_width);
    check_widths(fn, key_width, value_width);
    keys_.reserve(tokens, key_width);
    values_.reserve(tokens, value_width);
  }

  /// Keys of the held tokens, [size, kv_heads * head_dim] (a view, valid until the next append).
  detail::ConstRowsRef<S> keys() const { return keys_.rows(); }
  /// Values of the held tokens, [size, kv_heads * head_dim].
  detail::ConstRowsRef<S> values() const { return values_.rows(); }
  /// Bytes the held keys and values occupy (capacity aside).
  std::size_t bytes() const { return std::size_t(size()) * std::size_t(keys_.width() + values_.width()) * sizeof(S); }

  /// Throws shape_error naming `fn` when tokens already held have other widths than a layer's.
  void check_widths(const char* fn, Index key_width, Index value_width) const {
    if (size() > 0 && (keys_.width() != key_width || values_.width() != value_width))
      detail::fail(fn, "cache holds keys of ", keys_.width(), " and values of ", values_.width(),
                   " features per token, expected ", key_width, " and ", value_width,
                   " (it was filled by a layer of other sizes)");
  }

  /// Appends the keys [n, key_width] and values [n, value_width] of n new tokens, of T (rounded to S when S is
  /// 16-bit) or of S.
  /// \throws attend::shape_error when k and v have different rows or the cache holds tokens of other widths.
  template <class DK, class DV>
  void append(const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v) {
    constexpr const char* fn = "KVCache::append";
    using K = typename DK::Scalar;
    static_assert((std::is_same_v<K, T> || std::is_same_v<K, S>)&&std::is_same_v<K, typename DV::Scalar>,
                  ATTEND_DETAIL_MIXED_SCALARS);
    if (k.rows() != v.rows())
      detail::fail(fn, "k has ", k.rows(), " rows and v ", v.rows(), ", expected one row per token in both (k ",
                   detail::shape_of(k), ", v ", detail::shape_of(v), ")");
    check_widths(fn, k.cols(), v.cols());
    keys_.append(k.template cast<S>());
    values_.append(v.template cast<S>());
  }

 private:
  detail::RowStore<S> keys_, values_;
};

/// What MultiHeadLatentAttention<T> caches per token: the normalized latent c_KV (kv_lora_rank numbers) followed
/// by the roped shared key (qk_rope_head_dim numbers), one row per token, stored as S (T, or Eigen::bfloat16 /
/// Eigen::half under a float layer).
template <class T, class S = T>
class LatentCache {
  static_assert(detail::is_compute_scalar<T> && detail::is_storage_pair<T, S>, ATTEND_DETAIL_UNSUPPORTED_SCALAR);

 public:
  using Scalar = T;
  using Storage = S;

  LatentCache() = default;

  /// Tokens held.
  Index size() const { return rows_.size(); }
  /// Tokens that fit before the storage grows.
  Index capacity() const { return rows_.capacity(); }
  /// Forgets every token (keeps the storage); the cache can then serve a layer of any size.
  void clear() { rows_.clear(); }
  /// Makes room for `tokens` tokens of a layer with these widths, so decoding up to that length never
  /// reallocates. Throws shape_error for a negative argument or if the cache holds tokens of other widths.
  void reserve(Index tokens, Index latent_width, Index rope_width) {
    constexpr const char* fn = "LatentCache::reserve";
    detail::check_reserve(fn, tokens, "latent_width", latent_width, "rope_width", rope_width);
    check_widths(fn, latent_width, rope_width);
    if (size() == 0) latent_ = latent_width;
    rows_.reserve(tokens, latent_width + rope_width);
  }

  /// [size, kv_lora_rank + qk_rope_head_dim]: each token's latent then its shared rope key (a view, valid until
  /// the next append). These rows are the keys of absorbed attention.
  detail::ConstRowsRef<S> entries() const { return rows_.rows(); }
  /// [size, kv_lora_rank]: the normalized latents, which are also the values of absorbed attention.
  detail::ConstRowsRef<S> latent() const { return entries().leftCols(latent_); }
  /// [size, qk_rope_head_dim]: the roped shared keys.
  detail::ConstRowsRef<S> rope_keys() const { return entries().rightCols(rows_.width() - latent_); }
  /// Bytes the held entries occupy (capacity aside).
  std::size_t bytes() const { return std::size_t(size()) * std::size_t(rows_.width()) * sizeof(S); }

  /// Throws shape_error naming `fn` when tokens already held have other widths than a layer's.
  void check_widths(const char* fn, Index latent_width, Index rope_width) const {
    if (size() > 0 && (latent_ != latent_width || rows_.width() - latent_ != rope_width))
      detail::fail(fn, "cache holds latents of ", latent_, " and rope keys of ", rows_.width() - latent_,
                   " features per token, expected kv_lora_rank ", latent_width, " and qk_rope_head_dim ", rope_width,
                   " (it was filled by a layer of other sizes)");
  }

  /// Appends rows [latent, rope key] of new tokens, the first `latent_width` columns being the latent.
  /// \throws attend::shape_error when the cache holds tokens of other widths.
  template <class Derived>
  void append(const Eigen::MatrixBase<Derived>& rows, Index latent_width) {
    constexpr const char* fn = "LatentCache::append";
    using R = typename Derived::Scalar;
    static_assert(std::is_same_v<R, T> || std::is_same_v<R, S>, ATTEND_DETAIL_MIXED_SCALARS);
    if (latent_width < 0 || latent_width > rows.cols())
      detail::fail(fn, "latent_width is ", latent_width, ", expected 0 to the rows' ", rows.cols(), " columns");
    check_widths(fn, latent_width, rows.cols() - latent_width);
    if (size() == 0) latent_ = latent_width;
    rows_.append(rows.template cast<S>());
  }

 private:
  detail::RowStore<S> rows_;
  Index latent_ = 0;
};

/// An 8-bit KV cache under a float layer: keys and values quantized as they are appended (q8 blocks of 32 values
/// with a half scale: 34 bytes per 32 values, 0.27 of a float cache), read by the kernel in that form. Key and value
/// widths must be multiples of 32 (a layer's kv_heads * head_dim). A token whose keys or values are not finite
/// cannot be stored: appending it throws shape_error (a float cache would carry it along).
template <class T>
class KVCache<T, q8> {
  static_assert(std::is_same_v<T, float>, "attend: unsupported scalar type (8-bit caches hold float layers' keys)");

 public:
  using Scalar = T;
  using Storage = q8;

  KVCache() = default;

  Index size() const { return keys_.size(); }
  Index capacity() const { return keys_.capacity(); }
  void clear() {
    keys_.clear();
    values_.clear();
  }
  /// As KVCache::reserve(); the widths must be multiples of 32.
  void reserve(Index tokens, Index key_width, Index value_width) {
    constexpr const char* fn = "KVCache::reserve";
    detail::check_reserve(fn, tokens, "key_width", key_width, "value_width", value_width);
    check_widths(fn, key_width, value_width);
    keys_.reserve(tokens, key_width);
    values_.reserve(tokens, value_width);
  }

  /// The held keys [size, kv_heads * head_dim] and values, as the kernel reads them (q8 rows, half scales).
  detail::Q8Rows<Eigen::half> keys() const { return keys_.rows(); }
  detail::Q8Rows<Eigen::half> values() const { return values_.rows(); }
  /// The held keys and values dequantized (what the 8-bit values stand for).
  Matrix<float> keys_dequantized() const { return dequantized(keys_.rows()); }
  Matrix<float> values_dequantized() const { return dequantized(values_.rows()); }
  /// Bytes the held keys and values occupy, scales included (capacity aside).
  std::size_t bytes() const { return keys_.bytes() + values_.bytes(); }

  /// Throws shape_error naming `fn` when a layer's widths cannot use this cache: not multiples of 32, or other than
  /// those of the tokens held.
  void check_widths(const char* fn, Index key_width, Index value_width) const {
    detail::check_q8_width(fn, "key_width", key_width);
    detail::check_q8_width(fn, "value_width", value_width);
    if (size() > 0 && (keys_.width() != key_width || values_.width() != value_width))
      detail::fail(fn, "cache holds keys of ", keys_.width(), " and values of ", values_.width(),
                   " features per token, expected ", key_width, " and ", value_width,
                   " (it was filled by a layer of other sizes)");
  }

  /// Quantizes and appends the keys [n, key_width] and values [n, value_width] of n new tokens.
  /// \throws attend::shape_error when k and v have different rows, widths that check_widths() refuses, or a
  ///         non-finite value; the cache is unchanged then.
  template <class DK, class DV>
  void append(const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v) {
    constexpr const char* fn = "KVCache::append";
    static_assert(std::is_same_v<typename DK::Scalar, float> && std::is_same_v<typename DV::Scalar, float>,
                  ATTEND_DETAIL_MIXED_SCALARS);
    if (k.rows() != v.rows())
      detail::fail(fn, "k has ", k.rows(), " rows and v ", v.rows(), ", expected one row per token in both (k ",
                   detail::shape_of(k), ", v ", detail::shape_of(v), ")");
    check_widths(fn, k.cols(), v.cols());
    detail::check_quantizable(fn, "k", k);
    detail::check_quantizable(fn, "v", v);
    keys_.append(k);
    values_.append(v);
  }

 private:
  static Matrix<float> dequantized(const detail::Q8Rows<Eigen::half>& rows) {
    Matrix<float> x(rows.rows(), rows.cols());
    for (Index r = 0; r < rows.rows(); ++r) rows.dequantize_row(r, x.row(r).data());
    return x;
  }

  detail::Q8Store keys_, values_;
};

/// An 8-bit latent cache under a float MLA layer: each token's [latent, rope key] row quantized as it is appended
/// (q8 blocks with half scales). The latent (kv_lora_rank) and the whole row (kv_lora_rank + qk_rope_head_dim) must
/// be multiples of 32, so that the latent, the values of absorbed attention, is whole blocks; the rope key is
/// quantized with it (one format for the whole row, read by one loop). A token that is not finite cannot be
/// stored: appending it throws shape_error.
template <class T>
class LatentCache<T, q8> {
  static_assert(std::is_same_v<T, float>, "attend: unsupported scalar type (8-bit caches hold float layers' keys)");

 public:
  using Scalar = T;
  using Storage = q8;

  LatentCache() = default;

  Index size() const { return rows_.size(); }
  Index capacity() const { return rows_.capacity(); }
  void clear() { rows_.clear(); }
  void reserve(Index tokens, Index latent_width, Index rope_width) {
    constexpr const char* fn = "LatentCache::reserve";
    detail::check_reserve(fn, tokens, "latent_width", latent_width, "rope_width", rope_width);
    check_widths(fn, latent_width, rope_width);
    if (size() == 0) latent_ = latent_width;
    rows_.reserve(tokens, latent_width + rope_width);
  }

  /// [size, kv_lora_rank + qk_rope_head_dim] as the kernel reads them (q8 rows, half scales): the keys of absorbed
  /// attention.
  detail::Q8Rows<Eigen::half> entries() const { return rows_.rows(); }
  /// [size, kv_lora_rank]: the latents, the values of absorbed attention.
  detail::Q8Rows<Eigen::half> latent() const { return entries().leftCols(latent_); }
  /// The held rows dequantized.
  Matrix<float> entries_dequantized() const {
    const auto rows = entries();
    Matrix<float> x(rows.rows(), rows.cols());
    for (Index r = 0; r < rows.rows(); ++r) rows.dequantize_row(r, x.row(r).data());
    return x;
  }
  std::size_t bytes() const { return rows_.bytes(); }

  /// Throws shape_error naming `fn` when a layer's widths cannot use this cache (see the class comment) or differ
  /// from those of the tokens held.
  void check_widths(const char* fn, Index latent_width, Index rope_width) const {
    detail::check_q8_width(fn, "kv_lora_rank", latent_width);
    detail::check_q8_width(fn, "kv_lora_rank + qk_rope_head_dim", latent_width + rope_width);
    if (size() > 0 && (latent_ != latent_width || rows_.width() - latent_ != rope_width))
      detail::fail(fn, "cache holds latents of ", latent_, " and rope keys of ", rows_.width() - latent_,
                   " features per token, expected kv_lora_rank ", latent_width, " and qk_rope_head_dim ", rope_width,
                   " (it was filled by a layer of other sizes)");
  }

  /// Quantizes and appends rows [latent, rope key] of new tokens, the first `latent_width` columns the latent.
  /// \throws attend::shape_error for widths check_widths() refuses or a non-finite value; the cache is unchanged.
  template <class Derived>
  void append(const Eigen::MatrixBase<Derived>& rows, Index latent_width) {
    constexpr const char* fn = "LatentCache::append";
    static_assert(std::is_same_v<typename Derived::Scalar, float>, ATTEND_DETAIL_MIXED_SCALARS);
    if (latent_width < 0 || latent_width > rows.cols())
      detail::fail(fn, "latent_width is ", latent_width, ", expected 0 to the rows' ", rows.cols(), " columns");
    check_widths(fn, latent_width, rows.cols() - latent_width);
    detail::check_quantizable(fn, "rows", rows);
    if (size() == 0) latent_ = latent_width;
    rows_.append(rows);
  }

 private:
  detail::Q8Store rows_;
  Index latent_ = 0;
};

}  // namespace attend
