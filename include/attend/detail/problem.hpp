#pragma once
/// \file
/// One grouped-query attention problem as the kernel sees it, built once from a public call's validated
/// arguments: the inputs as row views, the options resolved into the kernel's scalar type, and the sizes every
/// schedule and mainloop derives its tiles from.

#include <optional>
#include <type_traits>
#include <vector>

#include "attend/detail/q8_rows.hpp"
#include "attend/masks.hpp"
#include "attend/options.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// How the kernel sees keys and values stored as S: row views of S (float, double, bfloat16, half), or q8 rows for
/// the 8-bit storage tags Q8<Scale>.
template <class S>
struct storage {
  using View = ConstRowsRef<S>;
};
template <class Scale>
struct storage<Q8<Scale>> {
  using View = Q8Rows<Scale>;
};
template <class S>
using storage_view = typename storage<S>::View;

/// The storage S of a view: the inverse of storage_view.
template <class View>
struct storage_of;
template <class S>
struct storage_of<ConstRowsRef<S>> {
  using type = S;
};
template <class Scale>
struct storage_of<Q8Rows<Scale>> {
  using type = Q8<Scale>;
};

/// q [Lq, H*d], k [Lk, G*d], v [Lk, G*dv] and an optional bias [Lq, Lk] shared by all heads. q, the bias and the
/// output are of T; k and v of S: the same type, or 16-bit or 8-bit (Q8) keys and values under float queries.
/// Everything is computed in C = accumulator_t<T>: float for 16-bit inputs. The views are the caller's: a Problem
/// lives no longer than the call that built it.
template <class T, class S = T>
struct Problem {
  using Input = T;             ///< q, bias, output
  using Storage = S;           ///< k, v
  using C = accumulator_t<T>;  ///< scores, softmax statistics, accumulators
  const ConstRowsRef<T>& q;
  const storage_view<S>& k;
  const storage_view<S>& v;
  const ConstRowsRef<T>* bias;
  Mask mask;
  C scale;          ///< folded into the queries: s = (scale * q) . k, one multiply per query instead of per score
  C softcap;        ///< 0: none
  Index positions;  ///< Lq
  Index keys;       ///< Lk
  Index d, dv;
  Index groups;          ///< G, the kv heads
  Index stack;           ///< H / G, the query heads that share one kv head
  std::vector<C> sinks;  ///< empty, or one logit per query head
  std::vector<C> alibi;  ///< empty, or one slope per query head
  Index alibi_diagonal;  ///< ALiBi's distance of query i and key j is |i + alibi_diagonal - j|
};

/// The Problem of a call with validated arguments (check_multi_head() or check_attention() passed). ALiBi measures
/// distances from the mask's diagonal: Lk - Lq, or the one Mask::with_diagonal() fixed, or `alibi_diagonal` when
/// given (blocks of a longer sequence under a mask that has no diagonal, as ring attention's none()).
template <class T, class View, class S = typename storage_of<View>::type>
Problem<T, S> make_problem(const ConstRowsRef<T>& q, const View& k, const View& v,
                           const ConstRowsRef<typename type_identity<T>::type>* bias, Heads heads,
                           const Options& options, std::optional<Index> alibi_diagonal = std::nullopt) {
  using C = accumulator_t<T>;
  const Index d = q.cols() / heads.query;
  const auto in_c = [](const std::vector<double>& x) { return std::vector<C>(x.begin(), x.end()); };
  return Problem<T, S>{q,
                       k,
                       v,
                       bias,
                       options.mask,
                       static_cast<C>(scale_for(options, d)),
                       static_cast<C>(options.softcap),
                       q.rows(),
                       k.rows(),
                       d,
                       v.cols() / heads.kv,
                       heads.kv,
                       heads.query / heads.kv,
                       in_c(options.sinks),
                       in_c(options.alibi_slopes),
                       alibi_diagonal.value_or(options.mask.diagonal().value_or(k.rows() - q.rows()))};
}

/// The keys [Lk, d] and values [Lk, dv] of one kv group, as stored (S): column slices of the problem's k and v,
/// read in place. This is the key storage the mainloops read; rows_of() gives them in the compute type.
template <class S>
struct GroupKeys {
  storage_view<S> k;
  storage_view<S> v;
};

/// Every group's keys and values. Without keys nothing is read from them, and a column block of an empty matrix
/// would offset its null data pointer (undefined behaviour), so then each group gets the empty matrices whole.
template <class T, class S>
std::vector<GroupKeys<S>> group_keys(const Problem<T, S>& pb) {
  std::vector<GroupKeys<S>> slices;
  slices.reserve(static_cast<std::size_t>(pb.groups));
  for (Index g = 0; g < pb.groups; ++g)
    if (pb.keys == 0)
      slices.push_back({pb.k, pb.v});
    else
      slices.push_back({pb.k.middleCols(g * pb.d, pb.d), pb.v.middleCols(g * pb.dv, pb.dv)});
  return slices;
}

/// Rows [j0, j1) of `rows` (stored as S) in the compute type C: a view of the rows themselves when S is C,
/// else the rows converted into the first columns of `scratch` (which may be wider; rows j0.. land at scratch
/// row scratch_row..). The generic path for
/// 16-bit storage: tiles converted to float, then the float mainloops.
template <class C, class S>
const C* rows_of(const ConstRowsRef<S>& rows, Index j0, Index j1, Matrix<C>& scratch, Index scratch_row,
                 Index& stride) {
  if constexpr (std::is_same_v<C, S>) {
    (void)scratch, (void)scratch_row;
    stride = rows.outerStride();
    return rows.data() + j0 * rows.outerStride();
  } else {
    scratch.block(scratch_row, 0, j1 - j0, rows.cols()) = rows.middleRows(j0, j1 - j0).template cast<C>();
    stride = scratch.outerStride();
    return scratch.data() + scratch_row * scratch.outerStride();
  }
}

}  // namespace attend::detail
