#pragma once
/// \file
/// What both paged caches are: the tokens of many sequences in pages (PageStore) with one or two sides per page
/// (page_rows.hpp), stored as S (the layer's T, 16 bits, or attend::q8). PagedTokens holds the sequences, their
/// bookkeeping and the widths of the tokens held, appends a batch's rows, and gives the kernel each sequence's rows
/// as GroupKeys runs (one per page, read in place). PagedKVCache and PagedLatentCache (paged_cache.hpp) are thin
/// layers over it that name their sides.

#include <cstddef>
#include <string>
#include <vector>

#include "attend/detail/cache_rows.hpp"
#include "attend/detail/group_keys.hpp"
#include "attend/detail/page_store.hpp"
#include "attend/detail/paged_batch.hpp"
#include "attend/detail/paged_rows.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

template <class S>
class PagedTokens {
 public:
  using K = kernel_storage_t<S>;  ///< what the kernel reads
  using Layout = PageLayout<K>;
  using Page = typename Layout::Page;

  /// Pages of `page_tokens` tokens (>= 1: checked by the cache) of a cache named `name` in its messages.
  PagedTokens(const char* name, Index page_tokens) : name_(name), store_(page_tokens, 0) {}

  /// A new, empty sequence; returns its id.
  int add_sequence() { return store_.add(); }
  /// Forgets the sequence; its pages are reused. \throws attend::shape_error for an id the cache does not hold.
  void release(int seq) {
    held("release", seq);
    store_.release(seq);
  }
  /// Tokens held for seq. \throws attend::shape_error for an id the cache does not hold.
  Index length(int seq) const {
    held("length", seq);
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
  /// Bytes of all pages allocated (in use and free), scales included.
  std::size_t bytes() const { return store_.bytes(); }
  /// Returns the free pages to the allocator.
  void shrink_to_fit() { store_.shrink_to_fit(); }

  /// Throws shape_error naming `fn` unless seqs and x_offsets describe a batch of x's `rows` rows for this cache:
  /// every id held and named at most once, x_offsets seqs.size() + 1 non-decreasing offsets from 0 to rows.
  void check_batch(const char* fn, const std::vector<int>& seqs, const std::vector<Index>& x_offsets, Index rows,
                   Index cols) const {
    detail::check_batch(fn, store_, seqs, x_offsets, rows, cols);
  }

 protected:
  /// The widths of the sides of the tokens held (0 while no page is in use).
  Index width(int side) const { return store_.pages_in_use() > 0 ? widths_[side] : 0; }

  /// Throws shape_error naming the cache's `what` unless it holds seq.
  void held(const char* what, int seq) const {
    if (!store_.holds(seq)) check_held((std::string(name_) + "::" + what).c_str(), store_, seq);
  }

  /// Appends rows [x_offsets[b], x_offsets[b+1]) of x0 (side 0) and, with two sides, of x1 (side 1) to sequence
  /// seqs[b]: every page is taken before any sequence changes. Arguments checked by the caller.
  template <class D0, class D1>
  void append_sides(const std::vector<int>& seqs, const std::vector<Index>& x_offsets, const Eigen::MatrixBase<D0>& x0,
                    const Eigen::MatrixBase<D1>* x1) {
    if (x0.rows() == 0) return;
    const Index pr = store_.page_rows();
    if (store_.pages_in_use() == 0) {
      widths_[0] = x0.cols();
      widths_[1] = x1 ? x1->cols() : 0;
      store_.resize_pages(Layout::side_size(pr, widths_[0]) + Layout::side_size(pr, widths_[1]));
    }
    std::vector<Index> starts(seqs.size());
    for (std::size_t b = 0; b < seqs.size(); ++b) starts[b] = store_.length(seqs[b]);
    store_.grow(seqs, batch_rows(x_offsets));
    for (std::size_t b = 0; b < seqs.size(); ++b)
      for (Index r = x_offsets[b]; r < x_offsets[b + 1]; ++r) {
        const Index j = starts[b] + r - x_offsets[b];
        Page* page = store_.page(seqs[b], j / pr);
        Layout::store(page, 0, pr, widths_[0], j % pr, x0.row(r));
        if (x1) Layout::store(page, offset(1), pr, widths_[1], j % pr, x1->row(r));
      }
  }

  /// Columns [c, c + n) of side `side`, as the kernel reads them.
  RunRows<K> columns(int side, Index c, Index n) const {
    return Layout::columns(offset(side), store_.page_rows(), widths_[side], c, n);
  }
  /// A held sequence's rows: keys `k` and values `v`, one run per page.
  GroupKeys<K> rows_of_sequence(int seq, const RunRows<K>& k, const RunRows<K>& v) const {
    return GroupKeys<K>(store_.pages(seq), store_.page_rows(), store_.length(seq), k, v);
  }
  /// Side `side` of a held sequence's tokens in C (a copy: rounded values as stored, q8 dequantized).
  template <class C>
  Matrix<C> gather(const char* what, int seq, int side) const {
    held(what, seq);
    const RunRows<K> all = columns(side, 0, width(side));
    const GroupKeys<K> rows = rows_of_sequence(seq, all, all);
    Matrix<C> out(rows.rows(), width(side));
    rows.for_each_run(0, rows.rows(), [&](Index a, Index b) { copy_rows(rows.keys(a, b), 0, b - a, out, a); });
    return out;
  }

  const char* name_;
  PageStore<Page> store_;

 private:
  Index offset(int side) const { return side == 0 ? 0 : Layout::side_size(store_.page_rows(), widths_[0]); }

  Index widths_[2] = {0, 0};
};

}  // namespace attend::detail
