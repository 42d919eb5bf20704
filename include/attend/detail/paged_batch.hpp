#pragma once
/// \file
/// A batch of a paged cache's sequences: the checks of the sequences and offsets a batched call names (every one
/// before any sequence changes), and paged_attention(), the kernel over every sequence of the batch reading its
/// keys and values through its page table (one ragged schedule, schedule_ragged.hpp).

#include <cstddef>
#include <deque>
#include <vector>

#include "attend/detail/checks.hpp"
#include "attend/detail/group_keys.hpp"
#include "attend/detail/page_store.hpp"
#include "attend/detail/problem.hpp"
#include "attend/detail/q8_rows.hpp"
#include "attend/detail/schedule_ragged.hpp"
#include "attend/detail/tiles.hpp"
#include "attend/errors.hpp"
#include "attend/options.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// page_tokens, after throwing shape_error naming `fn` unless it is >= 1.
inline Index checked_page_tokens(const char* fn, Index page_tokens) {
  if (page_tokens < 1) fail(fn, "page_tokens is ", page_tokens, ", expected at least 1");
  return page_tokens;
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

/// Views without rows of the widths of a paged batch's keys and values: the problems' k and v (their keys are the
/// pages, read through GroupKeys, never these views).
template <class K>
struct NoRows {
  explicit NoRows(Index width) : rows(0, width), view(rows) {}
  Matrix<K> rows;
  ConstRowsRef<K> view;
};
template <class Scale>
struct NoRows<Q8<Scale>> {
  explicit NoRows(Index width) : view(nullptr, 0, nullptr, 0, 0, width) {}
  Q8Rows<Scale> view;
};

/// Attention of each sequence's rows of q (rows [x_offsets[b], x_offsets[b+1]) for sequence seqs[b]) over every
/// token the cache holds for it, read through its pages, into the same rows of out [N, H*dv] and, when not null,
/// lse [N, H]: one ragged schedule for the whole batch. `cache.paged_keys(seq, groups)` gives a sequence's kv
/// groups as the kernel reads them (storage Cache::K).
template <class T, class Cache>
void paged_attention(const ConstRowsRef<T>& q, const Cache& cache, const std::vector<int>& seqs,
                     const std::vector<Index>& x_offsets, Heads heads, Index key_width, Index value_width,
                     const Options& options, RowsRef<T> out, Matrix<accumulator_t<T>>* lse) {
  using K = typename Cache::K;
  const NoRows<K> no_k(key_width), no_v(value_width);
  std::deque<ConstRowsRef<T>> qs;
  std::vector<RaggedSequence<T, K>> batch;
  batch.reserve(seqs.size());
  for (std::size_t b = 0; b < seqs.size(); ++b) {
    const Index q0 = x_offsets[b], lq = x_offsets[b + 1] - q0;
    if (lq == 0) continue;
    qs.emplace_back(q.middleRows(q0, lq));
    Problem<T, K> pb = make_problem(qs.back(), no_k.view, no_v.view, nullptr, heads, options);
    pb.keys = cache.length(seqs[b]);
    pb.alibi_diagonal = options.mask.diagonal().value_or(pb.keys - lq);
    batch.push_back(RaggedSequence<T, K>{std::move(pb), cache.paged_keys(seqs[b], heads.kv), q0});
  }
  ragged(batch, Tiles(), out, lse);
}

}  // namespace attend::detail
