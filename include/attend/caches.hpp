#pragma once
/// \file
/// What decoders keep between steps. KVCache holds the keys and values of MultiHeadAttention's tokens so far;
/// LatentCache holds MultiHeadLatentAttention's latent and shared rope key per token. Both grow as tokens arrive
/// (capacity doubles) and are read in place by the kernel, in the storage S they hold: the layer's T, 16 bits
/// (Eigen::bfloat16, Eigen::half) or 8 bits (attend::q8) under a float layer. The storage itself is
/// detail::CacheRows<S> (detail/cache_rows.hpp); the two classes here are written once for all of them.

#include <cstddef>
#include <type_traits>

#include "attend/detail/cache_rows.hpp"
#include "attend/detail/checks.hpp"
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

/// Throws shape_error naming `fn` unless k and v have one row per token each.
template <class DK, class DV>
void check_token_rows(const char* fn, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v) {
  if (k.rows() != v.rows())
    fail(fn, "k has ", k.rows(), " rows and v ", v.rows(), ", expected one row per token in both (k ", shape_of(k),
         ", v ", shape_of(v), ")");
}

}  // namespace detail

/// Keys and values of the tokens seen so far, for decoding with MultiHeadAttention<T>::forward(x, cache), stored
/// as S: T itself; Eigen::bfloat16 or Eigen::half under a float layer (half the bytes per token); or attend::q8
/// under a float layer (blocks of 32 int8 values with a half scale, 34 bytes per 32 values: 0.27 of a float
/// cache; key and value widths must be multiples of 32, and a token that is not finite cannot be stored). Only the
/// stored keys and values are rounded; the kernel reads them as stored.
///
/// The cache remembers the layout of the layer that filled it (kv heads and head dim), so that a layer of other
/// sizes is refused even when its widths agree (2 kv heads of 8 and 4 of 4 both cache 16 features per token). A
/// moved-from cache is empty and serves a layer of any size, as a fresh one.
template <class T, class S = T>
class KVCache {
  static_assert(detail::is_compute_scalar<T> && detail::is_cache_storage<T, S>, ATTEND_DETAIL_UNSUPPORTED_SCALAR);

 public:
  using Scalar = T;   ///< the layer's type
  using Storage = S;  ///< what the keys and values are stored as

  KVCache() = default;

  /// Tokens held.
  Index size() const { return keys_.size(); }
  /// The kv heads of the layer whose tokens the cache holds; 0 when it is empty, or when it was filled through
  /// append(k, v) without a layout.
  int kv_heads() const { return size() > 0 ? kv_heads_ : 0; }
  /// The head dim of the layer whose tokens the cache holds (0 as kv_heads()).
  int head_dim() const { return size() > 0 ? head_dim_ : 0; }
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

  /// Keys of the held tokens, [size, kv_heads * head_dim], as the kernel reads them (rows of S, or q8 rows with
  /// half scales; a view, valid until the next append).
  detail::CacheView<S> keys() const { return keys_.rows(); }
  /// Values of the held tokens, [size, kv_heads * head_dim].
  detail::CacheView<S> values() const { return values_.rows(); }
  /// The held keys and values as T (what the stored values stand for: widened from 16 bits, dequantized from 8).
  Matrix<T> keys_dequantized() const { return detail::rows_as<T>(keys_); }
  Matrix<T> values_dequantized() const { return detail::rows_as<T>(values_); }
  /// Bytes the held keys and values occupy, scales included (capacity aside).
  std::size_t bytes() const { return detail::bytes_of(keys_) + detail::bytes_of(values_); }

  /// Throws shape_error naming `fn` when a layer's widths cannot use this cache: other than those of the tokens
  /// held, or (8 bits) not multiples of 32.
  void check_widths(const char* fn, Index key_width, Index value_width) const {
    detail::check_storable_width<S>(fn, "key_width", key_width);
    detail::check_storable_width<S>(fn, "value_width", value_width);
    if (size() > 0 && (keys_.width() != key_width || values_.width() != value_width))
      detail::fail(fn, "cache holds keys of ", keys_.width(), " and values of ", values_.width(),
                   " features per token, expected ", key_width, " and ", value_width,
                   " (it was filled by a layer of other sizes)");
  }

  /// Throws shape_error naming `fn` when tokens already held come from a layer of another layout: other widths
  /// (check_widths()), or the same widths cut into other heads (`kv_heads` of `head_dim` keys and values each).
  void check_layout(const char* fn, int kv_heads, int head_dim) const {
    const Index width = Index(kv_heads) * head_dim;
    check_widths(fn, width, width);
    if (size() > 0 && kv_heads_ != 0 && (kv_heads_ != kv_heads || head_dim_ != head_dim))
      detail::fail(fn, "cache holds tokens of ", kv_heads_, " kv heads of head dim ", head_dim_, " (", width,
                   " features per token), expected ", kv_heads, " kv heads of head dim ", head_dim,
                   " (it was filled by a layer of other sizes)");
  }

  /// Appends the keys [n, key_width] and values [n, value_width] of n new tokens, of T (rounded to S) or, for
  /// 16-bit storage, of S.
  /// \throws attend::shape_error when k and v have different rows, the cache holds tokens of other widths, or
  ///         (8 bits) a width is not a multiple of 32 or a value is not finite; the cache is unchanged then.
  template <class DK, class DV>
  void append(const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v) {
    constexpr const char* fn = "KVCache::append";
    static_check_rows<DK, DV>();
    detail::check_token_rows(fn, k, v);
    check_widths(fn, k.cols(), v.cols());
    append_rows(fn, k, v, 0, 0);
  }

  /// Appends the keys and values [n, kv_heads * head_dim] of n new tokens of a layer with `kv_heads` kv heads of
  /// `head_dim` (what MultiHeadAttention::forward(x, cache) appends): the cache remembers that layout.
  /// \throws attend::shape_error as append(k, v), when k and v have other widths than kv_heads * head_dim, when
  ///         kv_heads or head_dim is < 1, or when the cache holds tokens of another layout (check_layout()).
  template <class DK, class DV>
  void append(const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v, int kv_heads, int head_dim) {
    constexpr const char* fn = "KVCache::append";
    static_check_rows<DK, DV>();
    if (kv_heads < 1 || head_dim < 1)
      detail::fail(fn, "kv_heads is ", kv_heads, " and head_dim ", head_dim, ", expected both at least 1");
    detail::check_token_rows(fn, k, v);
    const Index width = Index(kv_heads) * head_dim;
    if (k.cols() != width || v.cols() != width)
      detail::fail(fn, "k is ", detail::shape_of(k), " and v ", detail::shape_of(v), ", expected kv_heads (", kv_heads,
                   ") * head_dim (", head_dim, ") = ", width, " columns in both");
    check_layout(fn, kv_heads, head_dim);
    append_rows(fn, k, v, kv_heads, head_dim);
  }

 private:
  template <class DK, class DV>
  static void static_check_rows() {
    using K = typename DK::Scalar;
    static_assert(
        (std::is_same_v<K, T> || std::is_same_v<K, detail::appendable_t<T, S>>)&&std::is_same_v<K, typename DV::Scalar>,
        ATTEND_DETAIL_MIXED_SCALARS);
  }

  // The first tokens of an empty cache set its layout (0, 0: unknown); later ones keep it.
  template <class DK, class DV>
  void append_rows(const char* fn, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v, int kv_heads,
                   int head_dim) {
    detail::check_storable<S>(fn, "k", k);
    detail::check_storable<S>(fn, "v", v);
    if (size() == 0) kv_heads_ = kv_heads, head_dim_ = head_dim;
    detail::append_rows(keys_, k);
    detail::append_rows(values_, v);
  }

  detail::CacheRows<S> keys_, values_;
  int kv_heads_ = 0, head_dim_ = 0;  ///< meaningful while size() > 0
};

/// What MultiHeadLatentAttention<T> caches per token: the normalized latent c_KV (kv_lora_rank numbers) followed
/// by the roped shared key (qk_rope_head_dim numbers), one row per token, stored as S: T; Eigen::bfloat16 or
/// Eigen::half under a float layer; or attend::q8 under a float layer, where the latent (kv_lora_rank) and the
/// whole row (kv_lora_rank + qk_rope_head_dim) must be multiples of 32, so that the latent, the values of absorbed
/// attention, is whole blocks (the rope key is quantized with it: one format for the whole row, read by one loop),
/// and a token that is not finite cannot be stored.
template <class T, class S = T>
class LatentCache {
  static_assert(detail::is_compute_scalar<T> && detail::is_cache_storage<T, S>, ATTEND_DETAIL_UNSUPPORTED_SCALAR);

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

  /// [size, kv_lora_rank + qk_rope_head_dim]: each token's latent then its shared rope key, as the kernel reads
  /// them (a view, valid until the next append). These rows are the keys of absorbed attention.
  detail::CacheView<S> entries() const { return rows_.rows(); }
  /// [size, kv_lora_rank]: the normalized latents, which are also the values of absorbed attention.
  detail::CacheView<S> latent() const { return entries().leftCols(latent_); }
  /// [size, qk_rope_head_dim]: the roped shared keys (dense storage only: in 8 bits they are not whole blocks).
  template <class U = S, class = std::enable_if_t<!std::is_same_v<U, q8>>>
  detail::CacheView<S> rope_keys() const {
    return entries().rightCols(rows_.width() - latent_);
  }
  /// The held rows as T (widened from 16 bits, dequantized from 8).
  Matrix<T> entries_dequantized() const { return detail::rows_as<T>(rows_); }
  /// Bytes the held entries occupy, scales included (capacity aside).
  std::size_t bytes() const { return detail::bytes_of(rows_); }

  /// Throws shape_error naming `fn` when a layer's widths cannot use this cache: other than those of the tokens
  /// held, or (8 bits) not multiples of 32 as the class comment says.
  void check_widths(const char* fn, Index latent_width, Index rope_width) const {
    detail::check_storable_width<S>(fn, "kv_lora_rank", latent_width);
    detail::check_storable_width<S>(fn, "kv_lora_rank + qk_rope_head_dim", latent_width + rope_width);
    if (size() > 0 && (latent_ != latent_width || rows_.width() - latent_ != rope_width))
      detail::fail(fn, "cache holds latents of ", latent_, " and rope keys of ", rows_.width() - latent_,
                   " features per token, expected kv_lora_rank ", latent_width, " and qk_rope_head_dim ", rope_width,
                   " (it was filled by a layer of other sizes)");
  }

  /// Appends rows [latent, rope key] of new tokens, the first `latent_width` columns being the latent.
  /// \throws attend::shape_error when the cache holds tokens of other widths, or (8 bits) for widths
  ///         check_widths() refuses or a value that is not finite; the cache is unchanged then.
  template <class Derived>
  void append(const Eigen::MatrixBase<Derived>& rows, Index latent_width) {
    constexpr const char* fn = "LatentCache::append";
    using R = typename Derived::Scalar;
    static_assert(std::is_same_v<R, T> || std::is_same_v<R, detail::appendable_t<T, S>>, ATTEND_DETAIL_MIXED_SCALARS);
    if (latent_width < 0 || latent_width > rows.cols())
      detail::fail(fn, "latent_width is ", latent_width, ", expected 0 to the rows' ", rows.cols(), " columns");
    check_widths(fn, latent_width, rows.cols() - latent_width);
    detail::check_storable<S>(fn, "rows", rows);
    if (size() == 0) latent_ = latent_width;
    detail::append_rows(rows_, rows);
  }

 private:
  detail::CacheRows<S> rows_;
  Index latent_ = 0;
};

}  // namespace attend
