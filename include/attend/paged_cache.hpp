#pragma once
/// \file
/// Paged caches for continuous batching: one cache per layer holds the keys and values (or MLA's latents) of every
/// sequence an engine serves, in fixed pages of `page_tokens` tokens with a page table per sequence. Sequences come
/// and go (add_sequence(), release()), released pages are reused, and the kernel reads keys and values through the
/// page tables in place (detail::GroupKeys runs): nothing is gathered into a contiguous copy. The layers'
/// forward(x, cache, seqs, x_offsets, options) appends each sequence's new tokens and attends all of them in one call.

#include <cstddef>
#include <deque>
#include <string>
#include <type_traits>
#include <vector>

#include "attend/detail/checks.hpp"
#include "attend/detail/group_keys.hpp"
#include "attend/detail/page_store.hpp"
#include "attend/detail/problem.hpp"
#include "attend/detail/schedule_ragged.hpp"
#include "attend/detail/tiles.hpp"
#include "attend/errors.hpp"
#include "attend/options.hpp"
#include "attend/shapes.hpp"

namespace attend {

namespace detail {

/// Throws shape_error naming `fn` unless page_tokens >= 1.
inline void check_page_tokens(const char* fn, Index page_tokens) {
  if (page_tokens < 1) fail(fn, "page_tokens is ", page_tokens, ", expected at least 1");
}

/// Throws shape_error naming `fn` unless `store` holds `seq`.
template <class S>
void check_held(const char* fn, const PageStore<S>& store, int seq, const char* name = "seq") {
  if (!store.holds(seq))
    fail(fn, name, " is ", seq, ", which the cache does not hold (never added, or released; it holds ",
         store.ids().size(), " sequences)");
}

/// Throws shape_error naming `fn` unless seqs and x_offsets describe a batch of `rows` rows of x for `store`: every
/// id held and named at most once, x_offsets seqs.size() + 1 non-decreasing offsets from 0 to `rows`.
template <class S>
void check_batch(const char* fn, const PageStore<S>& store, const std::vector<int>& seqs,
                 const std::vector<Index>& x_offsets, Index rows, Index cols) {
  for (std::size_t b = 0; b < seqs.size(); ++b) {
    if (!store.holds(seqs[b]))
      fail(fn, "seqs[", b, "] is ", seqs[b], ", which the cache does not hold (never added, or released; it holds ",
           store.ids().size(), " sequences)");
    for (std::size_t c = 0; c < b; ++c)
      if (seqs[c] == seqs[b])
        fail(fn, "seqs[", b, "] is ", seqs[b], ", which seqs[", c,
             "] already names (each sequence at most once a call)");
  }
  if (x_offsets.size() != seqs.size() + 1)
    fail(fn, "x_offsets has ", x_offsets.size(), " entries, expected seqs.size() + 1 = ", seqs.size() + 1);
  if (x_offsets.front() != 0) fail(fn, "x_offsets[0] is ", x_offsets.front(), ", expected 0");
  for (std::size_t b = 1; b < x_offsets.size(); ++b)
    if (x_offsets[b] < x_offsets[b - 1])
      fail(fn, "x_offsets[", b, "] is ", x_offsets[b], ", below x_offsets[", b - 1, "] = ", x_offsets[b - 1],
           " (offsets must not decrease)");
  if (x_offsets.back() != rows)
    fail(fn, "x_offsets ends at ", x_offsets.back(), ", expected x's rows (", rows, ") (x ", Shape{rows, cols}, ")");
}

/// Each sequence's new tokens: rows[b] = x_offsets[b + 1] - x_offsets[b].
inline std::vector<Index> batch_rows(const std::vector<Index>& x_offsets) {
  std::vector<Index> rows(x_offsets.size() - 1);
  for (std::size_t b = 0; b + 1 < x_offsets.size(); ++b) rows[b] = x_offsets[b + 1] - x_offsets[b];
  return rows;
}

/// Attention of each sequence's rows of q (rows [x_offsets[b], x_offsets[b+1]) for sequence seqs[b]) over every
/// token the cache holds for it, read through its pages, into the same rows of out [N, H*dv] and, when not null,
/// lse [N, H]: one ragged schedule for the whole batch. `cache.paged_keys(seq)` gives a sequence's kv groups.
template <class T, class Cache>
void paged_attention(const ConstRowsRef<T>& q, const Cache& cache, const std::vector<int>& seqs,
                     const std::vector<Index>& x_offsets, Heads heads, Index key_width, Index value_width,
                     const Options& options, RowsRef<T> out, Matrix<accumulator_t<T>>* lse) {
  using S = typename Cache::Storage;
  // The problems' k and v are empty views of the widths: their keys are the pages (GroupKeys), never these views.
  const Matrix<S> no_k(0, key_width), no_v(0, value_width);
  const ConstRowsRef<S> none_k(no_k), none_v(no_v);
  std::deque<ConstRowsRef<T>> qs;
  std::vector<RaggedSequence<T, S>> batch;
  batch.reserve(seqs.size());
  for (std::size_t b = 0; b < seqs.size(); ++b) {
    const Index q0 = x_offsets[b], lq = x_offsets[b + 1] - q0;
    if (lq == 0) continue;
    qs.emplace_back(q.middleRows(q0, lq));
    Problem<T, S> pb = make_problem(qs.back(), none_k, none_v, nullptr, heads, options);
    pb.keys = cache.length(seqs[b]);
    pb.alibi_diagonal = options.mask.diagonal().value_or(pb.keys - lq);
    batch.push_back(RaggedSequence<T, S>{std::move(pb), cache.paged_keys(seqs[b], heads.kv), q0});
  }
  ragged(batch, Tiles(), out, lse);
}

}  // namespace detail

/// The keys and values of many sequences for MultiHeadAttention<T>'s continuous batching
/// (forward(x, cache, seqs, x_offsets, options)), stored as S (T, or Eigen::bfloat16 / Eigen::half under a float
/// layer) in pages of `page_tokens` tokens. A page holds the keys of all of a layer's kv heads for its tokens
/// ([page_tokens, kv_heads * head_dim], row-major), then their values: each page is a run of key rows the kernel
/// reads in place.
///
/// Memory follows the tokens held: a sequence holds ceil(length / page_tokens) pages. Pages of released sequences
/// are reused by the sequences that grow next; free pages beyond as many as are in use go back to the allocator
/// (shrink_to_fit() returns them all). Ids of released sequences are handed out again (the lowest first).
template <class T, class S = T>
class PagedKVCache {
  static_assert(detail::is_compute_scalar<T> && detail::is_storage_pair<T, S>, ATTEND_DETAIL_UNSUPPORTED_SCALAR);

 public:
  using Scalar = T;   ///< the layer's type
  using Storage = S;  ///< what the keys and values are stored as

  /// An empty cache of pages of `page_tokens` tokens. \throws attend::shape_error for page_tokens < 1.
  explicit PagedKVCache(Index page_tokens = 16) : store_(page_tokens, 0) {
    detail::check_page_tokens("PagedKVCache", page_tokens);
  }

  /// A new, empty sequence; returns its id.
  int add_sequence() { return store_.add(); }
  /// Forgets the sequence; its pages are reused. \throws attend::shape_error for an id the cache does not hold.
  void release(int seq) {
    detail::check_held("PagedKVCache::release", store_, seq);
    store_.release(seq);
    if (store_.pages_in_use() == 0) key_width_ = value_width_ = 0;
  }
  /// Tokens held for seq. \throws attend::shape_error for an id the cache does not hold.
  Index length(int seq) const {
    detail::check_held("PagedKVCache::length", store_, seq);
    return store_.length(seq);
  }

  /// Whether the cache holds seq (added and not released).
  bool holds(int seq) const { return store_.holds(seq); }
  /// The ids held, in increasing order.
  std::vector<int> sequences() const { return store_.ids(); }
  /// Tokens held over all sequences.
  Index tokens() const { return store_.rows(); }
  Index page_tokens() const { return store_.page_rows(); }
  /// Pages holding tokens, and free pages kept for reuse.
  Index pages_in_use() const { return store_.pages_in_use(); }
  Index free_pages() const { return store_.free_pages(); }
  /// Bytes of all pages allocated (in use and free).
  std::size_t bytes() const { return store_.bytes(); }
  /// Returns the free pages to the allocator.
  void shrink_to_fit() { store_.shrink_to_fit(); }
  /// Features per token of the keys and values held (0 while no page is in use).
  Index key_width() const { return key_width_; }
  Index value_width() const { return value_width_; }

  /// Throws shape_error naming `fn` when tokens held have other widths than a layer's.
  void check_widths(const char* fn, Index key_width, Index value_width) const {
    if (store_.pages_in_use() > 0 && (key_width_ != key_width || value_width_ != value_width))
      detail::fail(fn, "cache holds keys of ", key_width_, " and values of ", value_width_,
                   " features per token, expected ", key_width, " and ", value_width,
                   " (it was filled by a layer of other sizes)");
  }

  /// Throws shape_error naming `fn` unless seqs and x_offsets describe a batch of x's `rows` rows for this cache:
  /// every id held and named at most once, x_offsets seqs.size() + 1 non-decreasing offsets from 0 to rows.
  void check_batch(const char* fn, const std::vector<int>& seqs, const std::vector<Index>& x_offsets, Index rows,
                   Index cols) const {
    detail::check_batch(fn, store_, seqs, x_offsets, rows, cols);
  }

  /// Appends rows [x_offsets[b], x_offsets[b+1]) of k [N, key_width] and v [N, value_width] to sequence seqs[b]
  /// (of T, rounded to S when S is 16-bit, or of S). Every argument is checked and every page taken before any
  /// sequence changes.
  /// \throws attend::shape_error for a bad batch (see check_batch()), k and v of different rows, or widths other
  ///         than those of the tokens held.
  template <class DK, class DV>
  void append(const std::vector<int>& seqs, const std::vector<Index>& x_offsets, const Eigen::MatrixBase<DK>& k,
              const Eigen::MatrixBase<DV>& v) {
    constexpr const char* fn = "PagedKVCache::append";
    using K = typename DK::Scalar;
    static_assert((std::is_same_v<K, T> || std::is_same_v<K, S>)&&std::is_same_v<K, typename DV::Scalar>,
                  ATTEND_DETAIL_MIXED_SCALARS);
    if (k.rows() != v.rows())
      detail::fail(fn, "k has ", k.rows(), " rows and v ", v.rows(), ", expected one row per token in both (k ",
                   detail::shape_of(k), ", v ", detail::shape_of(v), ")");
    check_batch(fn, seqs, x_offsets, k.rows(), k.cols());
    check_widths(fn, k.cols(), v.cols());
    append_checked(seqs, x_offsets, k, v);
  }

  /// append() of n tokens to one sequence. \throws attend::shape_error as the batch append().
  template <class DK, class DV>
  void append(int seq, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v) {
    append(std::vector<int>{seq}, std::vector<Index>{0, k.rows()}, k, v);
  }

  /// The keys [length, key_width] of a sequence, gathered from its pages (a copy, for inspection).
  Matrix<S> keys(int seq) const { return gather("PagedKVCache::keys", seq, 0, key_width_); }
  /// The values [length, value_width] of a sequence, gathered from its pages (a copy, for inspection).
  Matrix<S> values(int seq) const {
    return gather("PagedKVCache::values", seq, store_.page_rows() * key_width_, value_width_);
  }

  /// Appends without checking (the layer has checked everything).
  template <class DK, class DV>
  void append_checked(const std::vector<int>& seqs, const std::vector<Index>& x_offsets, const Eigen::MatrixBase<DK>& k,
                      const Eigen::MatrixBase<DV>& v) {
    if (k.rows() == 0) return;
    if (store_.pages_in_use() == 0) {
      store_.resize_pages(store_.page_rows() * (k.cols() + v.cols()));
      key_width_ = k.cols();
      value_width_ = v.cols();
    }
    std::vector<Index> starts(seqs.size());
    for (std::size_t b = 0; b < seqs.size(); ++b) starts[b] = store_.length(seqs[b]);
    store_.grow(seqs, detail::batch_rows(x_offsets));
    const Index pr = store_.page_rows(), kw = key_width_, vw = value_width_;
    for (std::size_t b = 0; b < seqs.size(); ++b)
      for (Index r = x_offsets[b]; r < x_offsets[b + 1]; ++r) {
        const Index j = starts[b] + r - x_offsets[b];
        S* page = store_.page(seqs[b], j / pr);
        Eigen::Map<Matrix<S>>(page + (j % pr) * kw, 1, kw) = k.row(r).template cast<S>();
        Eigen::Map<Matrix<S>>(page + pr * kw + (j % pr) * vw, 1, vw) = v.row(r).template cast<S>();
      }
  }

  /// A sequence's kv groups as the kernel reads them: `key_width() / groups` key and value columns per group, each
  /// page one run.
  std::vector<detail::GroupKeys<S>> paged_keys(int seq, Index groups) const {
    const Index pr = store_.page_rows(), d = key_width_ / groups, dv = value_width_ / groups;
    std::vector<detail::GroupKeys<S>> keys;
    keys.reserve(static_cast<std::size_t>(groups));
    for (Index g = 0; g < groups; ++g)
      keys.emplace_back(store_.pages(seq), pr, store_.length(seq), detail::RunRows<S>{nullptr, g * d, key_width_, d},
                        detail::RunRows<S>{nullptr, pr * key_width_ + g * dv, value_width_, dv});
    return keys;
  }

 private:
  Matrix<S> gather(const char* fn, int seq, Index offset, Index width) const {
    detail::check_held(fn, store_, seq);
    const Index n = store_.length(seq), pr = store_.page_rows(), stride = offset == 0 ? key_width_ : value_width_;
    Matrix<S> out(n, width);
    for (Index j = 0; j < n; ++j)
      out.row(j) = Eigen::Map<const Matrix<S>>(store_.pages(seq)[j / pr] + offset + (j % pr) * stride, 1, width);
    return out;
  }

  detail::PageStore<S> store_;
  Index key_width_ = 0, value_width_ = 0;
};

/// MultiHeadLatentAttention<T>'s latent cache for continuous batching: per token the normalized latent c_KV
/// (kv_lora_rank numbers) then the roped shared key (qk_rope_head_dim numbers), as LatentCache, stored as S in
/// pages of `page_tokens` tokens ([page_tokens, kv_lora_rank + qk_rope_head_dim] each). The same rows are the keys
/// and (their latent part) the values of absorbed attention, read in place through the page tables.
template <class T, class S = T>
class PagedLatentCache {
  static_assert(detail::is_compute_scalar<T> && detail::is_storage_pair<T, S>, ATTEND_DETAIL_UNSUPPORTED_SCALAR);

 public:
  using Scalar = T;
  using Storage = S;

  /// An empty cache of pages of `page_tokens` tokens. \throws attend::shape_error for page_tokens < 1.
  explicit PagedLatentCache(Index page_tokens = 16) : store_(page_tokens, 0) {
    detail::check_page_tokens("PagedLatentCache", page_tokens);
  }

  int add_sequence() { return store_.add(); }
  /// \throws attend::shape_error for an id the cache does not hold.
  void release(int seq) {
    detail::check_held("PagedLatentCache::release", store_, seq);
    store_.release(seq);
    if (store_.pages_in_use() == 0) latent_ = rope_ = 0;
  }
  /// \throws attend::shape_error for an id the cache does not hold.
  Index length(int seq) const {
    detail::check_held("PagedLatentCache::length", store_, seq);
    return store_.length(seq);
  }
  bool holds(int seq) const { return store_.holds(seq); }
  std::vector<int> sequences() const { return store_.ids(); }
  Index tokens() const { return store_.rows(); }
  Index page_tokens() const { return store_.page_rows(); }
  Index pages_in_use() const { return store_.pages_in_use(); }
  Index free_pages() const { return store_.free_pages(); }
  std::size_t bytes() const { return store_.bytes(); }
  void shrink_to_fit() { store_.shrink_to_fit(); }
  /// Latent and rope-key features per token of the tokens held (0 while no page is in use).
  Index latent_width() const { return latent_; }
  Index rope_width() const { return rope_; }

  /// Throws shape_error naming `fn` when tokens held have other widths than a layer's.
  void check_widths(const char* fn, Index latent_width, Index rope_width) const {
    if (store_.pages_in_use() > 0 && (latent_ != latent_width || rope_ != rope_width))
      detail::fail(fn, "cache holds latents of ", latent_, " and rope keys of ", rope_,
                   " features per token, expected kv_lora_rank ", latent_width, " and qk_rope_head_dim ", rope_width,
                   " (it was filled by a layer of other sizes)");
  }
  /// As PagedKVCache::check_batch().
  void check_batch(const char* fn, const std::vector<int>& seqs, const std::vector<Index>& x_offsets, Index rows,
                   Index cols) const {
    detail::check_batch(fn, store_, seqs, x_offsets, rows, cols);
  }

  /// Appends rows [x_offsets[b], x_offsets[b+1]) of `rows` ([latent, rope key], the first latent_width columns the
  /// latent) to sequence seqs[b]. Every argument is checked and every page taken before any sequence changes.
  /// \throws attend::shape_error for a bad batch, a bad latent_width or widths other than those held.
  template <class Derived>
  void append(const std::vector<int>& seqs, const std::vector<Index>& x_offsets, const Eigen::MatrixBase<Derived>& rows,
              Index latent_width) {
    constexpr const char* fn = "PagedLatentCache::append";
    using R = typename Derived::Scalar;
    static_assert(std::is_same_v<R, T> || std::is_same_v<R, S>, ATTEND_DETAIL_MIXED_SCALARS);
    check_batch(fn, seqs, x_offsets, rows.rows(), rows.cols());
    if (latent_width < 0 || latent_width > rows.cols())
      detail::fail(fn, "latent_width is ", latent_width, ", expected 0 to the rows' ", rows.cols(), " columns");
    check_widths(fn, latent_width, rows.cols() - latent_width);
    append_checked(seqs, x_offsets, rows, latent_width);
  }

  /// The entries [length, kv_lora_rank + qk_rope_head_dim] of a sequence, gathered from its pages (a copy).
  Matrix<S> entries(int seq) const {
    detail::check_held("PagedLatentCache::entries", store_, seq);
    const Index n = store_.length(seq), pr = store_.page_rows(), w = latent_ + rope_;
    Matrix<S> out(n, w);
    for (Index j = 0; j < n; ++j)
      out.row(j) = Eigen::Map<const Matrix<S>>(store_.pages(seq)[j / pr] + (j % pr) * w, 1, w);
    return out;
  }

  /// Appends without checking (the layer has checked everything).
  template <class Derived>
  void append_checked(const std::vector<int>& seqs, const std::vector<Index>& x_offsets,
                      const Eigen::MatrixBase<Derived>& rows, Index latent_width) {
    if (rows.rows() == 0) return;
    if (store_.pages_in_use() == 0) {
      store_.resize_pages(store_.page_rows() * rows.cols());
      latent_ = latent_width;
      rope_ = rows.cols() - latent_width;
    }
    std::vector<Index> starts(seqs.size());
    for (std::size_t b = 0; b < seqs.size(); ++b) starts[b] = store_.length(seqs[b]);
    store_.grow(seqs, detail::batch_rows(x_offsets));
    const Index pr = store_.page_rows(), w = latent_ + rope_;
    for (std::size_t b = 0; b < seqs.size(); ++b)
      for (Index r = x_offsets[b]; r < x_offsets[b + 1]; ++r) {
        const Index j = starts[b] + r - x_offsets[b];
        Eigen::Map<Matrix<S>>(store_.page(seqs[b], j / pr) + (j % pr) * w, 1, w) = rows.row(r).template cast<S>();
      }
  }

  /// A sequence's one kv group of absorbed attention: keys the whole entries, values their latent part.
  std::vector<detail::GroupKeys<S>> paged_keys(int seq, Index groups = 1) const {
    (void)groups;
    const Index w = latent_ + rope_;
    return {detail::GroupKeys<S>(store_.pages(seq), store_.page_rows(), store_.length(seq),
                                 detail::RunRows<S>{nullptr, 0, w, w}, detail::RunRows<S>{nullptr, 0, w, latent_})};
  }

 private:
  detail::PageStore<S> store_;
  Index latent_ = 0, rope_ = 0;
};

}  // namespace attend
