#pragma once
/// \file
/// The one attention kernel behind every public function: blocked, online softmax, threaded. This file is the
/// dispatcher; the kernel's map, one file per seam:
///
///   problem.hpp          Problem: a call's inputs as row views, its options in the kernel's scalar type
///   group_keys.hpp       GroupKeys: each kv group's keys and values in runs of rows read in place (the key
///                        storage the mainloops read: contiguous matrices are one run, a paged cache a run per page;
///                        rows of S or q8 rows)
///   plan.hpp             Plan: tile sizes, split-key chunks and the choice of schedule, from the shapes alone
///   tiles.hpp            Tiles: the tuning, with named setters for tests and benchmarks
///   schedule_prefill.hpp prefill: tasks (kv group, query tile) over threads, each written to its own rows
///   schedule_decode.hpp  decode: one query tile per group, keys split into chunks, chunks merged
///   schedule_ragged.hpp  ragged batches: each sequence planned alone, the tasks of all sequences in one team
///   key_tiles.hpp        the key tiles one query tile visits (mask-aware, narrower where the mask cuts)
///   query_tile.hpp       a query tile's geometry: stacked heads, key ranges, rows seeing a key tile, store
///   rows_mainloop.hpp    mainloop for tiles of a few rows: register-blocked products on unpacked keys
///   packed_mainloop.hpp  mainloop for tiles of many rows: products on operands packed once
///   score_transform.hpp  scale, softcap, bias, mask: the score's order of operations, once
///   online_softmax.hpp   the running max and sum, row-wise and panel-wise, and the -inf rules, once
///   merge.hpp            exact merge of results over disjoint key sets (decode chunks, merge_attention, ring)
///   tile16_mainloop.hpp  mainloop for 16-bit tiles on AMX (bf16 A and B tiles, float C tiles), with
///   tile16_products.hpp  its tile products and vnni_pack.hpp, the pair layout AMX and vdpbf16ps read
///   row_products.hpp, packed_gemm.hpp   the products of the float mainloops
///   row_products_narrow.hpp             the same register-blocked products on 16-bit and q8 rows (decode)
///   row_products_q8.hpp                 q8 scores as integer dot products (AVX512-VNNI), queries in 8-bit digits
///   q8_rows.hpp          q8 rows (int8 blocks of 32 with a scale) as a key storage, read in place
///   cpu.hpp              which instructions this CPU and process may use (AVX-512, BF16, AMX tile state)
///   threads.hpp, finite.hpp, assert.hpp, checks.hpp   OpenMP use, the 0 * inf guard, invariants, argument checks
///   diagnostics.hpp      the compiler warnings silenced around AVX-512 intrinsics, and why
///
/// Beside it: backward.hpp (FlashAttention-2 backward: backward_problem, _plan, _schedule, _mainloop, _gemm),
/// layer_backward.hpp (the layers' gradients), row_store.hpp and cache_rows.hpp (the caches' storage), and the
/// paged caches' page_store.hpp, paged_rows.hpp (a page's layout per storage), paged_tokens.hpp and paged_batch.hpp.
///
/// The algorithm (FlashAttention-2 forward): queries in tiles of rows, keys in tiles of columns; for each pair,
/// S = Q K^T, the score transform, the online-softmax step (rescaling the accumulator when a row's maximum moves),
/// O += P V; after the last key tile O = acc / l and lse = m + log(l). Memory beyond inputs and output is one tile
/// of queries, scores and accumulators per thread, plus in prefill one kv group's keys and values packed per
/// thread, never the Lq x Lk score matrix. The decomposition into tasks depends only on the shapes, and every task
/// writes its own rows, so results are bitwise identical for any number of threads.

#include "attend/detail/group_keys.hpp"
#include "attend/detail/plan.hpp"
#include "attend/detail/problem.hpp"
#include "attend/detail/schedule_decode.hpp"
#include "attend/detail/schedule_prefill.hpp"
#include "attend/detail/tiles.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// Attention of the problem into `out` [Lq, H*dv] and, when not null, `lse` [Lq, H]. Arguments are validated.
template <class T, class S>
void attention(const Problem<T, S>& pb, RowsRef<typename type_identity<T>::type> out, Matrix<accumulator_t<T>>* lse,
               const Tiles& tiles = Tiles()) {
  if (pb.positions == 0) return;
  const std::vector<GroupKeys<S>> keys = group_keys(pb);
  const Plan s = plan(pb, tiles);
  if (s.split_keys)
    decode(pb, keys, s, tiles, out, lse);
  else
    prefill(pb, keys, s, tiles, out, lse);
}

}  // namespace attend::detail
