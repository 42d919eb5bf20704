#pragma once
/// \file
/// Which rows of one sequence each rank holds: RowRange and RowLayout (contiguous blocks, even blocks, the
/// zigzag layout or any partition). No MPI here: a layout is plain data, built and checked locally, so it can
/// be used and tested without MPI. Part of `<attend/mpi.hpp>`.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "attend/errors.hpp"
#include "attend/shapes.hpp"

namespace attend {

/// Half-open range `[begin, end)` of global rows (token positions) of the whole sequence.
struct RowRange {
  Index begin = 0;
  Index end = 0;
  Index size() const { return end > begin ? end - begin : 0; }
  friend bool operator==(const RowRange& a, const RowRange& b) { return a.begin == b.begin && a.end == b.end; }
};

/// Which rows of one sequence of `length()` tokens each rank of a communicator holds: rank r holds the pieces
/// `pieces(r)`, stored one after the other in its local matrices (local row 0 is the first row of the first
/// piece). The pieces of all ranks partition [0, length()).
class RowLayout {
 public:
  /// An empty layout (no ranks).
  RowLayout() = default;

  /// `pieces[r]` lists the global row ranges rank r holds, in its local row order.
  /// \throws attend::shape_error unless the non-empty pieces partition [0, L) for some L.
  explicit RowLayout(std::vector<std::vector<RowRange>> pieces) : pieces_(std::move(pieces)) {
    std::vector<RowRange> all;
    for (std::size_t r = 0; r < pieces_.size(); ++r)
      for (const RowRange& p : pieces_[r]) {
        if (p.begin < 0 || p.end < p.begin)
          detail::fail("RowLayout", "rank ", r, " has the row range [", p.begin, ", ", p.end,
                       "), expected 0 <= begin <= end");
        if (p.size() > 0) all.push_back(p);
      }
    std::sort(all.begin(), all.end(), [](const RowRange& a, const RowRange& b) { return a.begin < b.begin; });
    Index next = 0;
    for (const RowRange& p : all) {
      if (p.begin != next)
        detail::fail("RowLayout", "the row ranges do not partition [0, L): ",
                     p.begin < next ? "rows overlap at " : "rows are missing from ", std::min(p.begin, next));
      next = p.end;
    }
    length_ = next;
  }

  /// Contiguous blocks in rank order: rank r holds rows_per_rank[r] rows following those of ranks < r.
  static RowLayout contiguous(const std::vector<Index>& rows_per_rank) {
    std::vector<std::vector<RowRange>> pieces;
    Index at = 0;
    for (std::size_t r = 0; r < rows_per_rank.size(); ++r) {
      if (rows_per_rank[r] < 0) detail::fail("RowLayout::contiguous", "rank ", r, " has ", rows_per_rank[r], " rows");
      pieces.push_back({RowRange{at, at + rows_per_rank[r]}});
      at += rows_per_rank[r];
    }
    return RowLayout(std::move(pieces));
  }

  /// Contiguous blocks of (nearly) equal size: rank r holds [r L / P, (r+1) L / P).
  static RowLayout even(Index length, int ranks) {
    check_sizes("RowLayout::even", length, ranks);
    std::vector<Index> rows;
    for (int r = 0; r < ranks; ++r) rows.push_back(cut(length, ranks, r + 1) - cut(length, ranks, r));
    return contiguous(rows);
  }

  /// The load-balanced layout for causal attention: the sequence is cut into 2P chunks of (nearly) equal size,
  /// chunk c = [c L / 2P, (c+1) L / 2P), and rank r holds chunk r followed by chunk 2P-1-r. Under a causal
  /// mask every rank then has (nearly) the same number of visible (query, key) pairs.
  static RowLayout zigzag(Index length, int ranks) {
    check_sizes("RowLayout::zigzag", length, ranks);
    std::vector<std::vector<RowRange>> pieces;
    const int chunks = 2 * ranks;
    for (int r = 0; r < ranks; ++r) {
      const int late = chunks - 1 - r;
      pieces.push_back({RowRange{cut(length, chunks, r), cut(length, chunks, r + 1)},
                        RowRange{cut(length, chunks, late), cut(length, chunks, late + 1)}});
    }
    return RowLayout(std::move(pieces));
  }

  int ranks() const { return static_cast<int>(pieces_.size()); }
  Index length() const { return length_; }
  const std::vector<RowRange>& pieces(int rank) const { return pieces_.at(static_cast<std::size_t>(rank)); }

  /// Rows rank `rank` holds.
  Index local_rows(int rank) const {
    Index n = 0;
    for (const RowRange& p : pieces(rank)) n += p.size();
    return n;
  }

  /// The global position of each local row of rank `rank`.
  std::vector<Index> global_rows(int rank) const {
    std::vector<Index> rows;
    for (const RowRange& p : pieces(rank))
      for (Index i = p.begin; i < p.end; ++i) rows.push_back(i);
    return rows;
  }

  /// A hash of the whole layout (the same on every rank that built the same layout).
  std::uint64_t fingerprint() const {
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a over (rank count, pieces)
    const auto mix = [&h](std::uint64_t x) {
      for (int b = 0; b < 8; ++b) {
        h ^= (x >> (8 * b)) & 0xffu;
        h *= 1099511628211ull;
      }
    };
    mix(pieces_.size());
    for (const auto& rank : pieces_) {
      mix(rank.size());
      for (const RowRange& p : rank) {
        mix(static_cast<std::uint64_t>(p.begin));
        mix(static_cast<std::uint64_t>(p.end));
      }
    }
    return h;
  }

  friend bool operator==(const RowLayout& a, const RowLayout& b) { return a.pieces_ == b.pieces_; }
  friend bool operator!=(const RowLayout& a, const RowLayout& b) { return !(a == b); }

 private:
  static void check_sizes(const char* fn, Index length, int ranks) {
    if (length < 0) detail::fail(fn, "length is ", length, ", expected >= 0");
    if (ranks < 1) detail::fail(fn, "ranks is ", ranks, ", expected >= 1");
  }
  static Index cut(Index length, Index parts, Index i) { return length / parts * i + length % parts * i / parts; }

  std::vector<std::vector<RowRange>> pieces_;
  Index length_ = 0;
};

}  // namespace attend
