#pragma once
/// \file
/// The storage behind the paged caches: sequences of rows held in fixed pages, each page `page_rows` rows of
/// `page_values` values, a page table per sequence. A sequence grows a page at a time, so no row is ever copied to
/// make room (a contiguous cache doubles and copies), and the memory held follows the rows held: at most one
/// partly filled page per sequence. Pages of released sequences go to a free list and are handed out again before
/// any new page is allocated (fresh memory costs a page fault per 4 KiB on first touch); free pages beyond as many
/// as are in use are returned to the allocator, so a batch that shrinks gives its memory back.

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <new>
#include <vector>

#include "attend/detail/assert.hpp"
#include "attend/errors.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

template <class S>
class PageStore {
 public:
  /// Pages of `page_rows` rows of `page_values` values (the values of all of a page's rows, in whatever layout the
  /// cache chooses).
  PageStore(Index page_rows, Index page_values) : page_rows_(page_rows), page_values_(page_values) {}
  PageStore(const PageStore& other)
      : page_rows_(other.page_rows_), page_values_(other.page_values_), in_use_(0), free_ids_(other.free_ids_) {
    seqs_.reserve(other.seqs_.size());
    try {
      for (const Sequence& s : other.seqs_) {
        seqs_.push_back(Sequence{s.live, s.length, {}});
        for (const S* page : s.pages) {
          S* copy = allocate();
          std::memcpy(copy, page, page_bytes());
          seqs_.back().pages.push_back(copy);
          ++in_use_;
        }
      }
    } catch (...) {
      release_all();
      throw;
    }
  }
  PageStore& operator=(const PageStore& other) {
    if (this != &other) {
      PageStore copy(other);
      swap(copy);
    }
    return *this;
  }
  PageStore(PageStore&& other) noexcept { swap(other); }
  PageStore& operator=(PageStore&& other) noexcept {
    swap(other);
    return *this;
  }
  ~PageStore() { release_all(); }

  void swap(PageStore& other) noexcept {
    std::swap(page_rows_, other.page_rows_);
    std::swap(page_values_, other.page_values_);
    std::swap(in_use_, other.in_use_);
    seqs_.swap(other.seqs_);
    free_pages_.swap(other.free_pages_);
    free_ids_.swap(other.free_ids_);
  }

  Index page_rows() const { return page_rows_; }
  Index page_values() const { return page_values_; }
  /// Pages of another size from now on: only while no page is in use (the free pages of the old size are freed).
  void resize_pages(Index page_values) {
    ATTEND_DASSERT(in_use_ == 0, "pages change size only while none is in use");
    if (page_values == page_values_) return;
    shrink_to_fit();
    page_values_ = page_values;
  }

  /// A new empty sequence: the lowest id not in use.
  int add() {
    if (!free_ids_.empty()) {
      const auto lowest = std::min_element(free_ids_.begin(), free_ids_.end());
      const int id = *lowest;
      free_ids_.erase(lowest);
      seqs_[static_cast<std::size_t>(id)] = Sequence{true, 0, {}};
      return id;
    }
    seqs_.push_back(Sequence{true, 0, {}});
    return static_cast<int>(seqs_.size() - 1);
  }

  /// Whether `seq` names a sequence held (added and not released).
  bool holds(int seq) const {
    return seq >= 0 && static_cast<std::size_t>(seq) < seqs_.size() && seqs_[static_cast<std::size_t>(seq)].live;
  }

  /// Forgets a held sequence; its pages go to the free list (those beyond as many as are in use are freed).
  void release(int seq) {
    Sequence& s = at(seq);
    for (S* page : s.pages) free_pages_.push_back(page);
    in_use_ -= static_cast<Index>(s.pages.size());
    s = Sequence{};
    free_ids_.push_back(seq);
    while (static_cast<Index>(free_pages_.size()) > in_use_) {
      deallocate(free_pages_.back());
      free_pages_.pop_back();
    }
  }

  /// Rows held by a held sequence.
  Index length(int seq) const { return at(seq).length; }
  /// Rows held by every sequence.
  Index rows() const {
    Index n = 0;
    for (const Sequence& s : seqs_) n += s.length;
    return n;
  }
  /// Ids of the sequences held, in increasing order.
  std::vector<int> ids() const {
    std::vector<int> out;
    for (std::size_t i = 0; i < seqs_.size(); ++i)
      if (seqs_[i].live) out.push_back(static_cast<int>(i));
    return out;
  }

  Index pages_in_use() const { return in_use_; }
  Index free_pages() const { return static_cast<Index>(free_pages_.size()); }
  /// Bytes of every page allocated, in use or free.
  std::size_t bytes() const { return std::size_t(in_use_ + free_pages()) * page_bytes(); }
  /// Returns every free page to the allocator.
  void shrink_to_fit() {
    for (S* page : free_pages_) deallocate(page);
    free_pages_.clear();
  }

  /// The page table of a held sequence: page i holds its rows [i * page_rows, (i + 1) * page_rows).
  const S* const* pages(int seq) const { return at(seq).pages.data(); }
  /// Page i of a held sequence, writable.
  S* page(int seq, Index i) { return at(seq).pages[static_cast<std::size_t>(i)]; }

  /// Pages a sequence of `length` rows occupies.
  Index pages_for(Index length) const { return (length + page_rows_ - 1) / page_rows_; }

  /// Grows each sequence seqs[b] (held, each once) by rows[b] rows: all the pages they need are taken (the free
  /// list first) before any sequence changes, so when an allocation throws nothing has changed. The new rows are
  /// the caller's to fill.
  void grow(const std::vector<int>& seqs, const std::vector<Index>& rows) {
    Index needed = 0;
    for (std::size_t b = 0; b < seqs.size(); ++b) {
      const Sequence& s = at(seqs[b]);
      needed += pages_for(s.length + rows[b]) - static_cast<Index>(s.pages.size());
    }
    std::vector<S*> fresh;
    fresh.reserve(static_cast<std::size_t>(std::max<Index>(0, needed - free_pages())));
    try {
      while (static_cast<Index>(fresh.size()) + free_pages() < needed) fresh.push_back(allocate());
      // Room in every page table before any is changed: push_back below must not throw midway.
      for (std::size_t b = 0; b < seqs.size(); ++b) {
        Sequence& s = at(seqs[b]);
        s.pages.reserve(static_cast<std::size_t>(pages_for(s.length + rows[b])));
      }
    } catch (...) {
      for (S* page : fresh) deallocate(page);
      throw;
    }
    for (std::size_t b = 0; b < seqs.size(); ++b) {
      Sequence& s = at(seqs[b]);
      while (static_cast<Index>(s.pages.size()) < pages_for(s.length + rows[b])) {
        if (!free_pages_.empty()) {
          s.pages.push_back(free_pages_.back());
          free_pages_.pop_back();
        } else {
          s.pages.push_back(fresh.back());
          fresh.pop_back();
        }
        ++in_use_;
      }
      s.length += rows[b];
    }
  }

  /// Frees every page and forgets every sequence.
  void clear() {
    release_all();
    seqs_.clear();
    free_ids_.clear();
    in_use_ = 0;
  }

 private:
  struct Sequence {
    bool live = false;
    Index length = 0;
    std::vector<S*> pages;
  };

  std::size_t page_bytes() const { return std::size_t(page_values_) * sizeof(S); }
  /// A page aligned to a cache line: the mainloops read whole 64-byte lines of it.
  S* allocate() const { return static_cast<S*>(::operator new(page_bytes(), std::align_val_t(64))); }
  static void deallocate(S* page) { ::operator delete(page, std::align_val_t(64)); }

  Sequence& at(int seq) {
    ATTEND_DASSERT(holds(seq), "a page store is asked about sequences it holds");
    return seqs_[static_cast<std::size_t>(seq)];
  }
  const Sequence& at(int seq) const {
    ATTEND_DASSERT(holds(seq), "a page store is asked about sequences it holds");
    return seqs_[static_cast<std::size_t>(seq)];
  }

  void release_all() {
    for (Sequence& s : seqs_) {
      for (S* page : s.pages) deallocate(page);
      s.pages.clear();
    }
    shrink_to_fit();
  }

  Index page_rows_ = 1, page_values_ = 0, in_use_ = 0;
  std::vector<Sequence> seqs_;
  std::vector<S*> free_pages_;
  std::vector<int> free_ids_;
};

}  // namespace attend::detail
