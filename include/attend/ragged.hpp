#pragma once
/// \file
/// Batches of independent sequences of different lengths (ragged batches), as an inference engine holds them
/// under continuous batching: their rows stacked in one q, one k and one v, each sequence attending only to its
/// own keys, all of them in one call of the kernel (detail/schedule_ragged.hpp).

#include <deque>
#include <type_traits>
#include <vector>

#include "attend/detail/checks.hpp"
#include "attend/detail/group_keys.hpp"
#include "attend/detail/problem.hpp"
#include "attend/detail/q8_rows.hpp"
#include "attend/detail/schedule_ragged.hpp"
#include "attend/detail/tiles.hpp"
#include "attend/errors.hpp"
#include "attend/options.hpp"
#include "attend/quantized.hpp"
#include "attend/quantized_attention.hpp"
#include "attend/result.hpp"
#include "attend/shapes.hpp"

namespace attend {

/// Where each sequence of a ragged batch lies: sequence b's queries (and output rows) are rows
/// [q_offsets[b], q_offsets[b+1]) of q, its keys and values rows [kv_offsets[b], kv_offsets[b+1]) of k and v.
/// Both hold B+1 non-decreasing offsets from 0 to the rows of q (Tq) and of k (Tk); {0} is an empty batch.
struct Ragged {
  std::vector<Index> q_offsets;   ///< B+1 row offsets into q and the output: 0 ... Tq
  std::vector<Index> kv_offsets;  ///< B+1 row offsets into k and v: 0 ... Tk
};

namespace detail {

/// Throws shape_error naming `fn` unless `offsets` (ragged.<name>) starts at 0, never decreases and ends at `rows`,
/// the rows of `matrix`.
inline void check_offsets(const char* fn, const char* name, const std::vector<Index>& offsets, Index rows,
                          const char* matrix) {
  if (offsets.empty()) fail(fn, "ragged.", name, " is empty, expected 0 ... ", matrix, "'s rows (", rows, ")");
  if (offsets.front() != 0) fail(fn, "ragged.", name, "[0] is ", offsets.front(), ", expected 0");
  for (std::size_t b = 1; b < offsets.size(); ++b)
    if (offsets[b] < offsets[b - 1])
      fail(fn, "ragged.", name, "[", b, "] is ", offsets[b], ", below ragged.", name, "[", b - 1,
           "] = ", offsets[b - 1], " (offsets must not decrease)");
  if (offsets.back() != rows)
    fail(fn, "ragged.", name, " ends at ", offsets.back(), ", expected ", matrix, "'s rows (", rows, ")");
}

/// Throws shape_error naming `fn` unless `ragged` describes a batch of q's Tq and k's Tk rows.
inline void check_ragged(const char* fn, const Ragged& ragged, Index tq, Index tk) {
  if (ragged.q_offsets.size() != ragged.kv_offsets.size())
    fail(fn, "ragged.q_offsets has ", ragged.q_offsets.size(), " entries and ragged.kv_offsets ",
         ragged.kv_offsets.size(), ", expected the same number (one more than the sequences)");
  check_offsets(fn, "q_offsets", ragged.q_offsets, tq, "q");
  check_offsets(fn, "kv_offsets", ragged.kv_offsets, tk, "k");
}

/// Ragged attention of validated arguments into `out` [Tq, H*dv] and, when not null, `lse` [Tq, H]: a Problem per
/// sequence whose views are its rows of q, k and v (k and v views of any storage the kernel reads: rows of S, or q8
/// rows), all of them through the ragged schedule.
template <class T, class View>
void ragged_attention(const ConstRowsRef<T>& q, const View& k, const View& v, const Ragged& batch, Heads heads,
                      const Options& options, RowsRef<typename type_identity<T>::type> out,
                      Matrix<accumulator_t<T>>* lse, const Tiles& tiles = Tiles()) {
  using S = typename storage_of<View>::type;
  const std::size_t count = batch.q_offsets.size() - 1;
  // The problems refer to their views: a deque keeps every view where it is as more are added.
  std::deque<ConstRowsRef<T>> qs;
  std::deque<View> ks, vs;
  std::vector<RaggedSequence<T, S>> seqs;
  seqs.reserve(count);
  for (std::size_t b = 0; b < count; ++b) {
    const Index q0 = batch.q_offsets[b], lq = batch.q_offsets[b + 1] - q0;
    const Index k0 = batch.kv_offsets[b], lk = batch.kv_offsets[b + 1] - k0;
    if (lq == 0) continue;
    // Rows of an empty matrix would offset its null data pointer (undefined behaviour): the matrix itself then.
    qs.emplace_back(q.middleRows(q0, lq));
    if (lk == 0 && k.rows() == 0) {
      ks.emplace_back(k);
      vs.emplace_back(v);
    } else {
      ks.emplace_back(k.middleRows(k0, lk));
      vs.emplace_back(v.middleRows(k0, lk));
    }
    Problem<T, S> pb = make_problem(qs.back(), ks.back(), vs.back(), nullptr, heads, options);
    std::vector<GroupKeys<S>> keys = group_keys(pb);
    seqs.push_back(RaggedSequence<T, S>{std::move(pb), std::move(keys), q0});
  }
  ragged(seqs, tiles, out, lse);
}

/// Ragged attention of validated arguments of any Eigen layout (detail::bind_rows reads them) into `out` and, when not
/// null, `lse`. When out shares memory with an input, the result is computed apart and then copied into out, as if
/// every input were read before out is written.
template <class T, class View>
void ragged_into(const ConstRowsRef<T>& q, const View& k, const View& v, bool aliased, const Ragged& ragged,
                 Heads heads, const Options& options, RowsRef<typename type_identity<T>::type> out,
                 Matrix<accumulator_t<T>>* lse) {
  if (aliased) {
    Matrix<T> result(out.rows(), out.cols());
    ragged_attention(q, k, v, ragged, heads, options, result, lse);
    out = result;
  } else {
    ragged_attention(q, k, v, ragged, heads, options, out, lse);
  }
}

/// The ragged call over dense q, k and v of validated arguments into `out` and, when not null, `lse`.
template <class DQ, class DK, class DV>
void ragged_dense(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k, const Eigen::MatrixBase<DV>& v,
                  const Ragged& ragged, Heads heads, const Options& options, RowsRef<typename DQ::Scalar> out,
                  Matrix<accumulator_t<typename DQ::Scalar>>* lse) {
  using T = typename DQ::Scalar;
  using S = typename DK::Scalar;
  Matrix<T> qc;
  Matrix<S> kc, vc;  // inputs that Eigen::Ref cannot read in place (see detail::bind_rows)
  const ConstRowsRef<T> qe = bind_rows(q, qc);
  const ConstRowsRef<S> ke = bind_rows(k, kc), ve = bind_rows(v, vc);
  const bool aliased = may_overlap(out, qe) || may_overlap(out, ke) || may_overlap(out, ve);
  ragged_into(qe, ke, ve, aliased, ragged, heads, options, out, lse);
}

/// Ragged attention of validated float q over Q8Matrix keys and values into `out` [Tq, H*dv] and, when not null,
/// `lse` [Tq, H].
template <class DQ>
void ragged_q8(const Eigen::MatrixBase<DQ>& q, const Q8Matrix& k, const Q8Matrix& v, const Ragged& ragged, Heads heads,
               const Options& options, RowsRef<float> out, Matrix<float>* lse) {
  static_assert(std::is_same_v<typename DQ::Scalar, float>, ATTEND_DETAIL_MIXED_SCALARS);
  Matrix<float> qc;  // see detail::bind_rows
  const ConstRowsRef<float> qe = bind_rows(q, qc);
  ragged_into(qe, q8_rows(k), q8_rows(v), may_overlap(out, qe), ragged, heads, options, out, lse);
}

/// Throws as the q8 ragged calls named `fn` do, before any work.
template <class DQ>
void check_ragged_q8(const char* fn, const Eigen::MatrixBase<DQ>& q, const Q8Matrix& k, const Q8Matrix& v,
                     const Ragged& ragged, Heads heads, const Options& options) {
  check_q8_heads(fn, q, k, v, heads, options);
  check_ragged(fn, ragged, q.rows(), k.rows());
}

}  // namespace detail

/// Multi-head (MHA, GQA, MQA) attention over a ragged batch: every sequence attends to its own keys only, as
/// multi_head_attention(q_b, k_b, v_b, heads, options) would on its rows alone, and all of them run in one
/// schedule. The mask, ALiBi and sinks apply inside each sequence with that sequence's Lq and Lk (causal() is
/// bottom-right per sequence); rows of a sequence without keys are zero.
///
/// **Shapes:** (Tq,H*d) x (Tk,G*d) x (Tk,G*dv), B+1 offsets into each => (Tq,H*dv)
///
/// Each sequence's result is bitwise the one of multi_head_attention on its rows (the same tiles, chunks and
/// mainloops), for any number of threads. q of float may go with k and v of Eigen::bfloat16 or Eigen::half, and
/// every scalar multi_head_attention takes is taken.
/// \throws attend::shape_error before any work for what multi_head_attention() refuses, and for offsets that are not
///         B+1 non-decreasing values from 0 to q's rows (q_offsets) and k's rows (kv_offsets), of one size.
template <class DQ, class DK, class DV>
Matrix<typename DQ::Scalar> multi_head_attention(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                                                 const Eigen::MatrixBase<DV>& v, const Ragged& ragged, Heads heads,
                                                 const Options& options = {}) {
  using T = typename DQ::Scalar;
  detail::static_check_kernel_scalars<DQ, DK, DV>();
  constexpr const char* fn = "multi_head_attention";
  detail::check_multi_head(fn, q, k, v, heads, options);
  detail::check_ragged(fn, ragged, q.rows(), k.rows());
  Matrix<T> out(q.rows(), v.cols() / heads.kv * heads.query);
  detail::ragged_dense(q, k, v, ragged, heads, options, out, nullptr);
  return out;
}

/// multi_head_attention() over a ragged batch into a preallocated `out` [Tq, H*dv] (no result allocation: a server
/// reuses one output buffer step after step). `out` may share memory with q, k or v, as for the
/// multi_head_attention_into() of one sequence.
///
/// **Shapes:** (Tq,H*d) x (Tk,G*d) x (Tk,G*dv), B+1 offsets into each => out (Tq,H*dv)
/// \throws attend::shape_error as the ragged multi_head_attention(), and when out has another shape or its rows
///         overlap in memory.
template <class DQ, class DK, class DV>
void multi_head_attention_into(const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
                               const Eigen::MatrixBase<DV>& v, const Ragged& ragged, Heads heads,
                               detail::RowsRef<typename detail::type_identity<typename DQ::Scalar>::type> out,
                               const Options& options = {}) {
  detail::static_check_kernel_scalars<DQ, DK, DV>();
  constexpr const char* fn = "multi_head_attention_into";
  detail::check_multi_head(fn, q, k, v, heads, options);
  detail::check_ragged(fn, ragged, q.rows(), k.rows());
  detail::check_output(fn, out, q.rows(), v.cols() / heads.kv * heads.query);
  detail::ragged_dense(q, k, v, ragged, heads, options, out, nullptr);
}

/// multi_head_attention() over a ragged batch that also returns each row's log-sum-exp per query head (-inf where
/// the row sees no key; with sinks, as multi_head_attention_with_lse() gives it).
///
/// **Shapes:** (Tq,H*d) x (Tk,G*d) x (Tk,G*dv), B+1 offsets into each => out (Tq,H*dv), lse (Tq,H)
/// \throws attend::shape_error as the ragged multi_head_attention().
template <class DQ, class DK, class DV>
AttentionResult<typename DQ::Scalar> multi_head_attention_with_lse(const Eigen::MatrixBase<DQ>& q,
                                                                   const Eigen::MatrixBase<DK>& k,
                                                                   const Eigen::MatrixBase<DV>& v, const Ragged& ragged,
                                                                   Heads heads, const Options& options = {}) {
  using T = typename DQ::Scalar;
  detail::static_check_kernel_scalars<DQ, DK, DV>();
  constexpr const char* fn = "multi_head_attention_with_lse";
  detail::check_multi_head(fn, q, k, v, heads, options);
  detail::check_ragged(fn, ragged, q.rows(), k.rows());
  AttentionResult<T> r{Matrix<T>(q.rows(), v.cols() / heads.kv * heads.query),
                       Matrix<accumulator_t<T>>(q.rows(), heads.query)};
  detail::ragged_dense(q, k, v, ragged, heads, options, r.out, &r.lse);
  return r;
}

/// multi_head_attention() over a ragged batch of 8-bit keys and values (Q8Matrix) under float queries: each
/// sequence's rows are bitwise those of the q8 multi_head_attention() on its rows alone.
///
/// **Shapes:** float (Tq,H*d) x q8 (Tk,G*d) x q8 (Tk,G*dv), B+1 offsets into each => (Tq,H*dv); d and dv multiples
/// of 32
/// \throws attend::shape_error as the q8 multi_head_attention(), and for offsets as the ragged one.
template <class DQ>
Matrix<float> multi_head_attention(const Eigen::MatrixBase<DQ>& q, const Q8Matrix& k, const Q8Matrix& v,
                                   const Ragged& ragged, Heads heads, const Options& options = {}) {
  constexpr const char* fn = "multi_head_attention";
  detail::check_ragged_q8(fn, q, k, v, ragged, heads, options);
  Matrix<float> out(q.rows(), v.cols() / heads.kv * heads.query);
  detail::ragged_q8(q, k, v, ragged, heads, options, out, nullptr);
  return out;
}

/// The q8 ragged multi_head_attention() into a preallocated `out` [Tq, H*dv].
/// \throws attend::shape_error as the q8 ragged multi_head_attention(), and when out has another shape.
template <class DQ>
void multi_head_attention_into(const Eigen::MatrixBase<DQ>& q, const Q8Matrix& k, const Q8Matrix& v,
                               const Ragged& ragged, Heads heads, detail::RowsRef<float> out,
                               const Options& options = {}) {
  constexpr const char* fn = "multi_head_attention_into";
  detail::check_ragged_q8(fn, q, k, v, ragged, heads, options);
  detail::check_output(fn, out, q.rows(), v.cols() / heads.kv * heads.query);
  detail::ragged_q8(q, k, v, ragged, heads, options, out, nullptr);
}

/// The q8 ragged multi_head_attention() with each row's log-sum-exp per query head.
/// \throws attend::shape_error as the q8 ragged multi_head_attention().
template <class DQ>
AttentionResult<float> multi_head_attention_with_lse(const Eigen::MatrixBase<DQ>& q, const Q8Matrix& k,
                                                     const Q8Matrix& v, const Ragged& ragged, Heads heads,
                                                     const Options& options = {}) {
  constexpr const char* fn = "multi_head_attention_with_lse";
  detail::check_ragged_q8(fn, q, k, v, ragged, heads, options);
  AttentionResult<float> r{Matrix<float>(q.rows(), v.cols() / heads.kv * heads.query),
                           Matrix<float>(q.rows(), heads.query)};
  detail::ragged_q8(q, k, v, ragged, heads, options, r.out, &r.lse);
  return r;
}

}  // namespace attend
