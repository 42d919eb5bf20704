#pragma once
/// \file
/// One grouped-query attention problem as the kernel sees it, built once from a public call's validated
/// arguments: the inputs as row views, the options resolved into the kernel's scalar type, and the sizes every
/// schedule and mainloop derives its tiles from.

#include <optional>
#include <vector>

#include "attend/masks.hpp"
#include "attend/options.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// q [Lq, H*d], k [Lk, G*d], v [Lk, G*dv] and an optional bias [Lq, Lk] shared by all heads. The views are the
/// caller's: a Problem lives no longer than the call that built it.
template <class T>
struct Problem {
  const ConstRowsRef<T>& q;
  const ConstRowsRef<T>& k;
  const ConstRowsRef<T>& v;
  const ConstRowsRef<T>* bias;
  Mask mask;
  T scale;          ///< folded into the queries: s = (scale * q) . k, one multiply per query instead of per score
  T softcap;        ///< 0: none
  Index positions;  ///< Lq
  Index keys;       ///< Lk
  Index d, dv;
  Index groups;          ///< G, the kv heads
  Index stack;           ///< H / G, the query heads that share one kv head
  std::vector<T> sinks;  ///< empty, or one logit per query head
  std::vector<T> alibi;  ///< empty, or one slope per query head
  Index alibi_diagonal;  ///< ALiBi's distance of query i and key j is |i + alibi_diagonal - j|
};

/// The Problem of a call with validated arguments (check_multi_head() or check_attention() passed). ALiBi measures
/// distances from the mask's diagonal: Lk - Lq, or the one Mask::with_diagonal() fixed, or `alibi_diagonal` when
/// given (blocks of a longer sequence under a mask that has no diagonal, as ring attention's none()).
template <class T>
Problem<T> make_problem(const ConstRowsRef<T>& q, const ConstRowsRef<T>& k, const ConstRowsRef<T>& v,
                        const ConstRowsRef<typename type_identity<T>::type>* bias, Heads heads, const Options& options,
                        std::optional<Index> alibi_diagonal = std::nullopt) {
  const Index d = q.cols() / heads.query;
  const auto in_t = [](const std::vector<double>& x) { return std::vector<T>(x.begin(), x.end()); };
  return Problem<T>{q,
                    k,
                    v,
                    bias,
                    options.mask,
                    static_cast<T>(scale_for(options, d)),
                    static_cast<T>(options.softcap),
                    q.rows(),
                    k.rows(),
                    d,
                    v.cols() / heads.kv,
                    heads.kv,
                    heads.query / heads.kv,
                    in_t(options.sinks),
                    in_t(options.alibi_slopes),
                    alibi_diagonal.value_or(options.mask.diagonal().value_or(k.rows() - q.rows()))};
}

/// The keys [Lk, d] and values [Lk, dv] of one kv group: column slices of the problem's k and v, read in place.
template <class T>
struct GroupKeys {
  ConstRowsRef<T> k;
  ConstRowsRef<T> v;
};

/// Every group's keys and values. Without keys nothing is read from them, and a column block of an empty matrix
/// would offset its null data pointer (undefined behaviour), so then each group gets the empty matrices whole.
template <class T>
std::vector<GroupKeys<T>> group_keys(const Problem<T>& pb) {
  std::vector<GroupKeys<T>> slices;
  slices.reserve(static_cast<std::size_t>(pb.groups));
  for (Index g = 0; g < pb.groups; ++g)
    if (pb.keys == 0)
      slices.push_back({pb.k, pb.v});
    else
      slices.push_back({pb.k.middleCols(g * pb.d, pb.d), pb.v.middleCols(g * pb.dv, pb.dv)});
  return slices;
}

}  // namespace attend::detail
