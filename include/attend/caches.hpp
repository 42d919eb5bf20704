#pragma once
/// \file
/// What decoders keep between steps. KVCache holds the keys and values of MultiHeadAttention's tokens so far;
/// LatentCache holds MultiHeadLatentAttention's latent and shared rope key per token. Both grow as tokens arrive
/// (detail::RowStore: capacity doubles) and are read in place by the kernel.

#include "attend/detail/checks.hpp"
#include "attend/detail/row_store.hpp"
#include "attend/errors.hpp"
#include "attend/shapes.hpp"

namespace attend {

namespace detail {

/// Throws shape_error naming `fn` unless the reserve() arguments are all >= 0.
inline void check_reserve(const char* fn, Index tokens, const char* a_name, Index a, const char* b_name, Index b) {
  if (tokens < 0 || a < 0 || b < 0)
    fail(fn, "tokens ", tokens, ", ", a_name, " ", a, " and ", b_name, " ", b, " must not be negative");
}

}  // namespace detail

/// Keys and values of the tokens seen so far, for decoding with MultiHeadAttention::forward(x, cache). The cache
/// remembers the layout of the layer that filled it (kv heads and head dim), so that a layer of other sizes is
/// refused even when its widths agree (2 kv heads of 8 and 4 of 4 both cache 16 features per token). A moved-from
/// cache is empty and serves a layer of any size, as a fresh one.
template <class T>
class KVCache {
 public:
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

  /// Keys of the held tokens, [size, kv_heads * head_dim] (a view, valid until the next append).
  detail::ConstRowsRef<T> keys() const { return keys_.rows(); }
  /// Values of the held tokens, [size, kv_heads * head_dim].
  detail::ConstRowsRef<T> values() const { return values_.rows(); }

  /// Throws shape_error naming `fn` when tokens already held have other widths than a layer's.
  void check_widths(const char* fn, Index key_width, Index value_width) const {
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

  /// Appends the keys [n, key_width] and values [n, value_width] of n new tokens.
  /// \throws attend::shape_error when k and v have different rows or the cache holds tokens of other widths.
  template <class DK, class DV>
  void append(const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v) {
    constexpr const char* fn = "KVCache::append";
    detail::static_check_scalars<T, DK, DV>();
    check_rows(fn, k, v);
    check_widths(fn, k.cols(), v.cols());
    append_rows(k, v, 0, 0);
  }

  /// Appends the keys and values [n, kv_heads * head_dim] of n new tokens of a layer with `kv_heads` kv heads of
  /// `head_dim` (what MultiHeadAttention::forward(x, cache) appends): the cache remembers that layout.
  /// \throws attend::shape_error when k and v have different rows or other widths than kv_heads * head_dim, when
  ///         kv_heads or head_dim is < 1, or when the cache holds tokens of another layout (check_layout()).
  template <class DK, class DV>
  void append(const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v, int kv_heads, int head_dim) {
    constexpr const char* fn = "KVCache::append";
    detail::static_check_scalars<T, DK, DV>();
    if (kv_heads < 1 || head_dim < 1)
      detail::fail(fn, "kv_heads is ", kv_heads, " and head_dim ", head_dim, ", expected both at least 1");
    check_rows(fn, k, v);
    const Index width = Index(kv_heads) * head_dim;
    if (k.cols() != width || v.cols() != width)
      detail::fail(fn, "k is ", detail::shape_of(k), " and v ", detail::shape_of(v), ", expected kv_heads (", kv_heads,
                   ") * head_dim (", head_dim, ") = ", width, " columns in both");
    check_layout(fn, kv_heads, head_dim);
    append_rows(k, v, kv_heads, head_dim);
  }

 private:
  template <class DK, class DV>
  static void check_rows(const char* fn, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v) {
    if (k.rows() != v.rows())
      detail::fail(fn, "k has ", k.rows(), " rows and v ", v.rows(), ", expected one row per token in both (k ",
                   detail::shape_of(k), ", v ", detail::shape_of(v), ")");
  }

  // The first tokens of an empty cache set its layout (0, 0: unknown); later ones keep it.
  template <class DK, class DV>
  void append_rows(const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v, int kv_heads, int head_dim) {
    if (size() == 0) kv_heads_ = kv_heads, head_dim_ = head_dim;
    keys_.append(k);
    values_.append(v);
  }

  detail::RowStore<T> keys_, values_;
  int kv_heads_ = 0, head_dim_ = 0;  ///< meaningful while size() > 0
};

/// What MultiHeadLatentAttention caches per token: the normalized latent c_KV (kv_lora_rank numbers) followed
/// by the roped shared key (qk_rope_head_dim numbers), one row per token.
template <class T>
class LatentCache {
 public:
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
  detail::ConstRowsRef<T> entries() const { return rows_.rows(); }
  /// [size, kv_lora_rank]: the normalized latents, which are also the values of absorbed attention.
  detail::ConstRowsRef<T> latent() const { return entries().leftCols(latent_); }
  /// [size, qk_rope_head_dim]: the roped shared keys.
  detail::ConstRowsRef<T> rope_keys() const { return entries().rightCols(rows_.width() - latent_); }

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
    detail::static_check_scalars<T, Derived>();
    if (latent_width < 0 || latent_width > rows.cols())
      detail::fail(fn, "latent_width is ", latent_width, ", expected 0 to the rows' ", rows.cols(), " columns");
    check_widths(fn, latent_width, rows.cols() - latent_width);
    if (size() == 0) latent_ = latent_width;
    rows_.append(rows);
  }

 private:
  detail::RowStore<T> rows_;
  Index latent_ = 0;
};

}  // namespace attend
