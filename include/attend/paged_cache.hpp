#pragma once
/// \file
/// Paged caches for continuous batching: one cache per layer holds the keys and values (or MLA's latents) of every
/// sequence an engine serves, in fixed pages of `page_tokens` tokens with a page table per sequence. Sequences come
/// and go (add_sequence(), release()), released pages are reused, and the kernel reads keys and values through the
/// page tables in place (detail::GroupKeys runs): nothing is gathered into a contiguous copy. The layers'
/// forward(x, cache, seqs, x_offsets, options) appends each sequence's new tokens and attends all of them in one call.
/// Storage as the contiguous caches': the layer's T, Eigen::bfloat16 or Eigen::half, or attend::q8 under a float
/// layer (detail/paged_rows.hpp lays each out in a page; detail/paged_tokens.hpp is what both caches share).

#include <type_traits>
#include <vector>

#include "attend/caches.hpp"
#include "attend/detail/cache_rows.hpp"
#include "attend/detail/checks.hpp"
#include "attend/detail/group_keys.hpp"
#include "attend/detail/paged_batch.hpp"
#include "attend/detail/paged_tokens.hpp"
#include "attend/errors.hpp"
#include "attend/quantized.hpp"
#include "attend/shapes.hpp"

namespace attend {

/// The keys and values of many sequences for MultiHeadAttention<T>'s continuous batching
/// (forward(x, cache, seqs, x_offsets, options)), stored as S: T; Eigen::bfloat16 or Eigen::half under a float
/// layer; or attend::q8 under a float layer (blocks of 32 int8 values with a half scale, as KVCache<float, q8>:
/// widths and head dims multiples of 32, finite values only). A page holds the keys of all of a layer's kv heads for
/// its tokens ([page_tokens, kv_heads * head_dim], row-major; q8: their values, then their scales), then their
/// values: each page is a run of key rows the kernel reads in place.
///
/// Memory follows the tokens held: a sequence holds ceil(length / page_tokens) pages. Pages of released sequences
/// are reused by the sequences that grow next; free pages beyond as many as are in use go back to the allocator
/// (shrink_to_fit() returns them all). Ids of released sequences are handed out again (the lowest first). The cache
/// remembers the layout (kv heads, head dim) of the layer that filled it while it holds tokens, as KVCache does.
template <class T, class S = T>
class PagedKVCache : public detail::PagedTokens<S> {
  static_assert(detail::is_compute_scalar<T> && detail::is_cache_storage<T, S>, ATTEND_DETAIL_UNSUPPORTED_SCALAR);
  using Base = detail::PagedTokens<S>;

 public:
  using Scalar = T;   ///< the layer's type
  using Storage = S;  ///< what the keys and values are stored as
  using typename Base::K;

  /// An empty cache of pages of `page_tokens` tokens. \throws attend::shape_error for page_tokens < 1.
  explicit PagedKVCache(Index page_tokens = 16)
      : Base("PagedKVCache", detail::checked_page_tokens("PagedKVCache", page_tokens)) {}

  /// Features per token of the keys and values held (0 while no page is in use).
  Index key_width() const { return this->width(0); }
  Index value_width() const { return this->width(1); }
  /// The kv heads and head dim of the layer whose tokens the cache holds (0 while it holds none, or when it was
  /// filled through append() without a layout).
  int kv_heads() const { return this->pages_in_use() > 0 ? kv_heads_ : 0; }
  int head_dim() const { return this->pages_in_use() > 0 ? head_dim_ : 0; }

  /// Throws shape_error naming `fn` when a layer's widths cannot use this cache: other than those of the tokens
  /// held, or (8 bits) not multiples of 32.
  void check_widths(const char* fn, Index key_width, Index value_width) const {
    detail::check_storable_width<S>(fn, "key_width", key_width);
    detail::check_storable_width<S>(fn, "value_width", value_width);
    if (this->pages_in_use() > 0 && (this->key_width() != key_width || this->value_width() != value_width))
      detail::fail(fn, "cache holds keys of ", this->key_width(), " and values of ", this->value_width(),
                   " features per token, expected ", key_width, " and ", value_width,
                   " (it was filled by a layer of other sizes)");
  }

  /// Throws shape_error naming `fn` when a layer of `kv_heads` kv heads of `head_dim` cannot use this cache: its
  /// widths (check_widths()), (8 bits) a head dim that is not a multiple of 32 (a head's slice of a q8 row is whole
  /// blocks), or tokens held of the same widths cut into other heads.
  void check_layout(const char* fn, int kv_heads, int head_dim) const {
    const Index width = Index(kv_heads) * head_dim;
    check_widths(fn, width, width);
    detail::check_storable_width<S>(fn, "head_dim", head_dim);
    if (this->pages_in_use() > 0 && kv_heads_ != 0 && (kv_heads_ != kv_heads || head_dim_ != head_dim))
      detail::fail(fn, "cache holds tokens of ", kv_heads_, " kv heads of head dim ", head_dim_, " (", width,
                   " features per token), expected ", kv_heads, " kv heads of head dim ", head_dim,
                   " (it was filled by a layer of other sizes)");
  }

  /// Appends rows [x_offsets[b], x_offsets[b+1]) of k [N, key_width] and v [N, value_width] to sequence seqs[b]
  /// (of T, rounded to S; or, for 16-bit storage, of S). Every argument is checked and every page taken before any
  /// sequence changes.
  /// \throws attend::shape_error for a bad batch (see check_batch()), k and v of different rows, widths other than
  ///         those of the tokens held, or (8 bits) widths that are not multiples of 32 or a value that is not finite.
  template <class DK, class DV>
  void append(const std::vector<int>& seqs, const std::vector<Index>& x_offsets, const Eigen::MatrixBase<DK>& k,
              const Eigen::MatrixBase<DV>& v) {
    append(seqs, x_offsets, k, v, 0, 0);
  }

  /// append() of the keys and values of a layer with `kv_heads` kv heads of `head_dim` (what
  /// MultiHeadAttention::forward(x, cache, seqs, x_offsets) appends): the cache remembers that layout.
  /// \throws attend::shape_error as append(), and when the cache holds tokens of another layout (check_layout()).
  template <class DK, class DV>
  void append(const std::vector<int>& seqs, const std::vector<Index>& x_offsets, const Eigen::MatrixBase<DK>& k,
              const Eigen::MatrixBase<DV>& v, int kv_heads, int head_dim) {
    constexpr const char* fn = "PagedKVCache::append";
    using R = typename DK::Scalar;
    static_assert(
        (std::is_same_v<R, T> || std::is_same_v<R, detail::appendable_t<T, S>>)&&std::is_same_v<R, typename DV::Scalar>,
        ATTEND_DETAIL_MIXED_SCALARS);
    detail::check_token_rows(fn, k, v);
    this->check_batch(fn, seqs, x_offsets, k.rows(), k.cols());
    if (kv_heads > 0)
      check_layout(fn, kv_heads, head_dim);
    else
      check_widths(fn, k.cols(), v.cols());
    detail::check_storable<S>(fn, "k", k);
    detail::check_storable<S>(fn, "v", v);
    if (this->pages_in_use() == 0) kv_heads_ = kv_heads, head_dim_ = head_dim;
    this->append_sides(seqs, x_offsets, k, &v);
  }

  /// append() of n tokens to one sequence. \throws attend::shape_error as the batch append().
  template <class DK, class DV>
  void append(int seq, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v) {
    append(std::vector<int>{seq}, std::vector<Index>{0, k.rows()}, k, v);
  }

  /// The keys [length, key_width] of a sequence as stored, gathered from its pages (a copy, for inspection; rows of
  /// S: not for 8-bit storage, see keys_dequantized()). \throws attend::shape_error for an id the cache does not hold.
  template <class U = S, class = std::enable_if_t<!std::is_same_v<U, q8>>>
  Matrix<S> keys(int seq) const {
    return this->template gather<S>("keys", seq, 0);
  }
  /// The values [length, value_width] of a sequence as stored (a copy; rows of S).
  template <class U = S, class = std::enable_if_t<!std::is_same_v<U, q8>>>
  Matrix<S> values(int seq) const {
    return this->template gather<S>("values", seq, 1);
  }
  /// A sequence's keys and values as T: what the stored values stand for (widened from 16 bits, dequantized from 8).
  Matrix<T> keys_dequantized(int seq) const { return this->template gather<T>("keys_dequantized", seq, 0); }
  Matrix<T> values_dequantized(int seq) const { return this->template gather<T>("values_dequantized", seq, 1); }

  /// A held sequence's kv groups as the kernel reads them: `key_width() / groups` key and value columns per group,
  /// each page one run.
  std::vector<detail::GroupKeys<K>> paged_keys(int seq, Index groups) const {
    const Index d = key_width() / groups, dv = value_width() / groups;
    std::vector<detail::GroupKeys<K>> keys;
    keys.reserve(static_cast<std::size_t>(groups));
    for (Index g = 0; g < groups; ++g)
      keys.push_back(this->rows_of_sequence(seq, this->columns(0, g * d, d), this->columns(1, g * dv, dv)));
    return keys;
  }

 private:
  int kv_heads_ = 0, head_dim_ = 0;  ///< meaningful while pages are in use
};

/// MultiHeadLatentAttention<T>'s latent cache for continuous batching: per token the normalized latent c_KV
/// (kv_lora_rank numbers) then the roped shared key (qk_rope_head_dim numbers), as LatentCache, stored as S (T,
/// 16 bits, or attend::q8 under a float layer, with the latent and the whole row multiples of 32, as
/// LatentCache<float, q8>) in pages of `page_tokens` tokens ([page_tokens, kv_lora_rank + qk_rope_head_dim] each).
/// The same rows are the keys and (their latent part) the values of absorbed attention, read in place through the
/// page tables.
template <class T, class S = T>
class PagedLatentCache : public detail::PagedTokens<S> {
  static_assert(detail::is_compute_scalar<T> && detail::is_cache_storage<T, S>, ATTEND_DETAIL_UNSUPPORTED_SCALAR);
  using Base = detail::PagedTokens<S>;

 public:
  using Scalar = T;
  using Storage = S;
  using typename Base::K;

  /// An empty cache of pages of `page_tokens` tokens. \throws attend::shape_error for page_tokens < 1.
  explicit PagedLatentCache(Index page_tokens = 16)
      : Base("PagedLatentCache", detail::checked_page_tokens("PagedLatentCache", page_tokens)) {}

  /// Latent and rope-key features per token of the tokens held (0 while no page is in use).
  Index latent_width() const { return this->pages_in_use() > 0 ? latent_ : 0; }
  Index rope_width() const { return this->width(0) - latent_width(); }

  /// Throws shape_error naming `fn` when a layer's widths cannot use this cache: other than those of the tokens
  /// held, or (8 bits) not multiples of 32 as the class comment says.
  void check_widths(const char* fn, Index latent_width, Index rope_width) const {
    detail::check_storable_width<S>(fn, "kv_lora_rank", latent_width);
    detail::check_storable_width<S>(fn, "kv_lora_rank + qk_rope_head_dim", latent_width + rope_width);
    if (this->pages_in_use() > 0 && (latent_ != latent_width || this->rope_width() != rope_width))
      detail::fail(fn, "cache holds latents of ", latent_, " and rope keys of ", this->rope_width(),
                   " features per token, expected kv_lora_rank ", latent_width, " and qk_rope_head_dim ", rope_width,
                   " (it was filled by a layer of other sizes)");
  }

  /// Appends rows [x_offsets[b], x_offsets[b+1]) of `rows` ([latent, rope key], the first latent_width columns the
  /// latent) to sequence seqs[b]. Every argument is checked and every page taken before any sequence changes.
  /// \throws attend::shape_error for a bad batch, a bad latent_width, widths other than those held, or (8 bits)
  ///         widths check_widths() refuses or a value that is not finite.
  template <class Derived>
  void append(const std::vector<int>& seqs, const std::vector<Index>& x_offsets, const Eigen::MatrixBase<Derived>& rows,
              Index latent_width) {
    constexpr const char* fn = "PagedLatentCache::append";
    using R = typename Derived::Scalar;
    static_assert(std::is_same_v<R, T> || std::is_same_v<R, detail::appendable_t<T, S>>, ATTEND_DETAIL_MIXED_SCALARS);
    this->check_batch(fn, seqs, x_offsets, rows.rows(), rows.cols());
    if (latent_width < 0 || latent_width > rows.cols())
      detail::fail(fn, "latent_width is ", latent_width, ", expected 0 to the rows' ", rows.cols(), " columns");
    check_widths(fn, latent_width, rows.cols() - latent_width);
    detail::check_storable<S>(fn, "rows", rows);
    if (this->pages_in_use() == 0) latent_ = latent_width;
    this->append_sides(seqs, x_offsets, rows, static_cast<const Eigen::MatrixBase<Derived>*>(nullptr));
  }

  /// The entries [length, kv_lora_rank + qk_rope_head_dim] of a sequence as stored, gathered from its pages (a
  /// copy; rows of S: not for 8-bit storage, see entries_dequantized()).
  template <class U = S, class = std::enable_if_t<!std::is_same_v<U, q8>>>
  Matrix<S> entries(int seq) const {
    return this->template gather<S>("entries", seq, 0);
  }
  /// A sequence's entries as T (widened from 16 bits, dequantized from 8).
  Matrix<T> entries_dequantized(int seq) const { return this->template gather<T>("entries_dequantized", seq, 0); }

  /// A held sequence's one kv group of absorbed attention: keys the whole entries, values their latent part.
  std::vector<detail::GroupKeys<K>> paged_keys(int seq, Index groups = 1) const {
    (void)groups;
    return {this->rows_of_sequence(seq, this->columns(0, 0, this->width(0)), this->columns(0, 0, latent_))};
  }

 private:
  Index latent_ = 0;  ///< meaningful while pages are in use
};

}  // namespace attend
