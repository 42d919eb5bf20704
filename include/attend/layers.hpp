#pragma once
/// \file
/// The multi-head attention layer: MultiHeadAttention, one class for MHA, GQA and MQA, with projections in
/// torch.nn.Linear layout, self- and cross-attention, incremental decoding through a KVCache, and continuous batching
/// of many sequences through a PagedKVCache.

#include <cstddef>
#include <vector>

#include "attend/caches.hpp"
#include "attend/detail/attention.hpp"
#include "attend/detail/checks.hpp"
#include "attend/detail/layer_backward.hpp"
#include "attend/detail/problem.hpp"
#include "attend/errors.hpp"
#include "attend/linear.hpp"
#include "attend/options.hpp"
#include "attend/paged_cache.hpp"
#include "attend/shapes.hpp"

namespace attend {

/// Multi-head attention layer with projections, as ported from PyTorch models. One class covers MHA
/// (kv_heads == heads), GQA (1 < kv_heads < heads) and MQA (kv_heads == 1); head_dim need not be
/// d_model / heads.
///
/// forward() computes q = x Wq^T + bq, k and v from x (or from a context, or appended to a cache), attends with
/// attend::multi_head_attention, and returns o_proj of the concatenated heads.
template <class T>
struct MultiHeadAttention {
  /// Zero weights of the documented shapes, no biases.
  /// \throws attend::shape_error unless every size is >= 1 and kv_heads divides heads.
  MultiHeadAttention(int d_model, int heads, int kv_heads, int head_dim)
      : d_model(d_model), heads(heads), kv_heads(kv_heads), head_dim(head_dim) {
    constexpr const char* fn = "MultiHeadAttention";
    if (d_model < 1) detail::fail(fn, "d_model is ", d_model, ", expected at least 1");
    if (heads < 1) detail::fail(fn, "heads is ", heads, ", expected at least 1");
    if (kv_heads < 1) detail::fail(fn, "kv_heads is ", kv_heads, ", expected at least 1");
    if (head_dim < 1) detail::fail(fn, "head_dim is ", head_dim, ", expected at least 1");
    if (heads % kv_heads != 0) detail::fail(fn, "heads (", heads, ") is not a multiple of kv_heads (", kv_heads, ")");
    q_proj.weight = Matrix<T>::Zero(Index(heads) * head_dim, d_model);
    k_proj.weight = Matrix<T>::Zero(Index(kv_heads) * head_dim, d_model);
    v_proj.weight = Matrix<T>::Zero(Index(kv_heads) * head_dim, d_model);
    o_proj.weight = Matrix<T>::Zero(d_model, Index(heads) * head_dim);
  }

  int d_model, heads, kv_heads, head_dim;
  Linear<T> q_proj;  ///< [heads*head_dim, d_model]
  Linear<T> k_proj;  ///< [kv_heads*head_dim, d_model]
  Linear<T> v_proj;  ///< [kv_heads*head_dim, d_model]
  Linear<T> o_proj;  ///< [d_model, heads*head_dim]

  /// Self-attention over the rows of x.
  ///
  /// **Shapes:** (L,d_model) => (L,d_model)
  /// \throws attend::shape_error for an x of other width, weights or biases of other shapes, invalid options.
  template <class Derived>
  Matrix<T> forward(const Eigen::MatrixBase<Derived>& x, const Options& options = {}) const {
    constexpr const char* fn = "MultiHeadAttention::forward";
    detail::static_check_scalars<T, Derived>();
    check(fn, x, options);
    Matrix<T> copy;  // evaluated once; row-major inputs are not copied (see detail::bind_rows)
    const detail::ConstRowsRef<T> xe = detail::bind_rows(x, copy);
    return attend_heads(project(q_proj, xe), rows(project(k_proj, xe)), rows(project(v_proj, xe)), options);
  }

  /// Cross-attention: queries from x, keys and values from `context` (another sequence, S rows).
  ///
  /// **Shapes:** (L,d_model) x (S,d_model) => (L,d_model)
  /// \throws attend::shape_error as forward(x), and for a context of other width.
  template <class Derived, class Context>
  Matrix<T> forward(const Eigen::MatrixBase<Derived>& x, const Eigen::MatrixBase<Context>& context,
                    const Options& options = {}) const {
    constexpr const char* fn = "MultiHeadAttention::forward";
    detail::static_check_scalars<T, Derived, Context>();
    check(fn, x, options);
    detail::check_input(fn, "context", context, d_model);
    Matrix<T> copy;  // see detail::bind_rows
    const detail::ConstRowsRef<T> ce = detail::bind_rows(context, copy);
    return attend_heads(project(q_proj, x), rows(project(k_proj, ce)), rows(project(v_proj, ce)), options);
  }

  /// Incremental decoding: appends the n new tokens' keys and values to `cache`, then attends the new queries
  /// over every cached token. With Mask::causal() (bottom-right aligned), feeding a sequence in chunks of any
  /// sizes gives the rows of one causal forward(x), up to rounding.
  ///
  /// **Shapes:** (n,d_model) => (n,d_model); the cache grows by n tokens of 2*kv_heads*head_dim numbers.
  /// \throws attend::shape_error as forward(x), and when the cache holds tokens of a layer of other sizes (other
  ///         widths, or the same widths in other kv heads and head dims); the cache is unchanged then.
  ///
  /// The cache may store its keys and values in 16 or 8 bits (KVCache<float, Eigen::bfloat16>, <float, Eigen::half>,
  /// <float, attend::q8>): they are rounded as they are appended, and the kernel reads them as stored.
  template <class Derived, class S>
  Matrix<T> forward(const Eigen::MatrixBase<Derived>& x, KVCache<T, S>& cache, const Options& options = {}) const {
    constexpr const char* fn = "MultiHeadAttention::forward";
    detail::static_check_scalars<T, Derived>();
    check(fn, x, options);
    cache.check_layout(fn, kv_heads, head_dim);
    Matrix<T> copy;  // evaluated once; row-major inputs are not copied (see detail::bind_rows)
    const detail::ConstRowsRef<T> xe = detail::bind_rows(x, copy);
    cache.append(project(k_proj, xe), project(v_proj, xe), kv_heads, head_dim);
    return attend_heads(project(q_proj, xe), cache.keys(), cache.values(), options);
  }

  /// Continuous batching: rows [x_offsets[b], x_offsets[b+1]) of x are new tokens of sequence seqs[b] of `cache`;
  /// their keys and values are appended to that sequence, then they attend over all of it, every sequence of the
  /// batch in one call (prefill chunks and one-token decodes alike). Each sequence gets the rows it would get fed
  /// alone through a KVCache, up to rounding (the batch is projected as one matrix).
  ///
  /// **Shapes:** (N,d_model), B ids, B+1 offsets from 0 to N => (N,d_model); each sequence grows by its rows.
  /// \throws attend::shape_error as forward(x), and for an id the cache does not hold or named twice, offsets that
  ///         are not B+1 non-decreasing values from 0 to N, or a cache holding tokens of a layer of other sizes
  ///         (widths, or kv heads and head dims); the cache is unchanged then.
  ///
  /// The cache may store its keys and values in 16 or 8 bits (PagedKVCache<float, Eigen::bfloat16>, <float,
  /// Eigen::half>, <float, attend::q8>), as KVCache does.
  template <class Derived, class S>
  Matrix<T> forward(const Eigen::MatrixBase<Derived>& x, PagedKVCache<T, S>& cache, const std::vector<int>& seqs,
                    const std::vector<Index>& x_offsets, const Options& options = {}) const {
    constexpr const char* fn = "MultiHeadAttention::forward";
    detail::static_check_scalars<T, Derived>();
    check(fn, x, options);
    cache.check_batch(fn, seqs, x_offsets, x.rows(), x.cols());
    cache.check_layout(fn, kv_heads, head_dim);
    Matrix<T> copy;  // evaluated once; row-major inputs are not copied (see detail::bind_rows)
    const detail::ConstRowsRef<T> xe = detail::bind_rows(x, copy);
    cache.append(seqs, x_offsets, project(k_proj, xe), project(v_proj, xe), kv_heads, head_dim);
    const Matrix<T> q = project(q_proj, xe);
    Matrix<T> heads_out(xe.rows(), Index(heads) * head_dim);
    const Index kv_width = Index(kv_heads) * head_dim;
    detail::paged_attention<T>(q, cache, seqs, x_offsets, Heads{heads, kv_heads}, kv_width, kv_width, options,
                               heads_out, nullptr);
    return detail::linear(o_proj.weight, o_proj.bias, heads_out);
  }

  /// What backward() returns: the gradients of a loss with respect to the layer's input(s) and to every weight and
  /// bias, shaped as the layer's Linears (a bias gradient exactly where the layer has a bias).
  struct Gradients {
    Matrix<T> dx;                              ///< [L, d_model]
    Matrix<T> dcontext;                        ///< [S, d_model] for cross-attention; empty for self-attention
    Linear<T> q_proj, k_proj, v_proj, o_proj;  ///< dL/dW and dL/db of each projection
  };

  /// The gradients of a loss through forward(x, options), given dy, the loss's gradient with respect to that
  /// output: recomputes the forward it needs (projections, attention with its lse) and runs it backwards through
  /// attend's backward kernel (attend/backward.hpp).
  ///
  /// **Shapes:** (L,d_model) x dy (L,d_model) => dx (L,d_model), the weights' and biases' shapes
  /// \throws attend::shape_error as forward(x), and for a dy of another shape.
  template <class Derived, class Dy>
  Gradients backward(const Eigen::MatrixBase<Derived>& x, const Eigen::MatrixBase<Dy>& dy,
                     const Options& options = {}) const {
    constexpr const char* fn = "MultiHeadAttention::backward";
    detail::static_check_scalars<T, Derived, Dy>();
    check(fn, x, options);
    detail::check_output_gradient(fn, dy, x.rows(), d_model);
    Matrix<T> xc, dyc;  // see detail::bind_rows
    const detail::ConstRowsRef<T> xe = detail::bind_rows(x, xc), dye = detail::bind_rows(dy, dyc);
    return detail::mha_backward<T>(*this, xe, nullptr, dye, options);
  }

  /// The gradients of a loss through forward(x, context, options) (cross-attention): dx, dcontext and the weights'.
  ///
  /// **Shapes:** (L,d_model) x (S,d_model) x dy (L,d_model) => dx (L,d_model), dcontext (S,d_model), the weights'
  /// \throws attend::shape_error as forward(x, context), and for a dy of another shape.
  template <class Derived, class Context, class Dy>
  Gradients backward(const Eigen::MatrixBase<Derived>& x, const Eigen::MatrixBase<Context>& context,
                     const Eigen::MatrixBase<Dy>& dy, const Options& options = {}) const {
    constexpr const char* fn = "MultiHeadAttention::backward";
    detail::static_check_scalars<T, Derived, Context, Dy>();
    check(fn, x, options);
    detail::check_input(fn, "context", context, d_model);
    detail::check_output_gradient(fn, dy, x.rows(), d_model);
    Matrix<T> xc, cc, dyc;  // see detail::bind_rows
    const detail::ConstRowsRef<T> xe = detail::bind_rows(x, xc), ce = detail::bind_rows(context, cc),
                                  dye = detail::bind_rows(dy, dyc);
    return detail::mha_backward<T>(*this, xe, &ce, dye, options);
  }

  /// Numbers cached per token: a key and a value of head_dim for each kv head.
  std::size_t kv_cache_elements_per_token() const { return 2 * std::size_t(kv_heads) * std::size_t(head_dim); }

  /// Throws shape_error naming `fn` when a weight or bias disagrees with the layer's sizes.
  void check_weights(const char* fn) const {
    const Index q_width = Index(heads) * head_dim, kv_width = Index(kv_heads) * head_dim;
    if (d_model < 1 || heads < 1 || kv_heads < 1 || head_dim < 1 || heads % kv_heads != 0)
      detail::fail(fn, "layer sizes d_model ", d_model, ", heads ", heads, ", kv_heads ", kv_heads, ", head_dim ",
                   head_dim, " are invalid (all >= 1, kv_heads dividing heads)");
    detail::check_linear(fn, "q_proj", q_proj, q_width, d_model);
    detail::check_linear(fn, "k_proj", k_proj, kv_width, d_model);
    detail::check_linear(fn, "v_proj", v_proj, kv_width, d_model);
    detail::check_linear(fn, "o_proj", o_proj, d_model, q_width);
  }

 private:
  template <class Derived>
  void check(const char* fn, const Eigen::MatrixBase<Derived>& x, const Options& options) const {
    check_weights(fn);
    detail::check_input(fn, "x", x, d_model);
    detail::check_options<T>(fn, options, heads);
  }

  /// A projection's rows as the kernel's view (the temporary lives to the end of the full expression).
  static detail::ConstRowsRef<T> rows(const Matrix<T>& m) { return detail::ConstRowsRef<T>(m); }

  template <class Derived>
  static Matrix<T> project(const Linear<T>& lin, const Eigen::MatrixBase<Derived>& x) {
    return detail::linear(lin.weight, lin.bias, x);
  }

  /// The kernel on the heads: k and v views of any storage the kernel reads (rows of T or S, q8 rows).
  template <class View>
  Matrix<T> attend_heads(const detail::ConstRowsRef<T>& q, const View& k, const View& v, const Options& options) const {
    Matrix<T> heads_out(q.rows(), Index(heads) * head_dim);
    detail::attention(detail::make_problem(q, k, v, nullptr, Heads{heads, kv_heads}, options), heads_out, nullptr);
    return detail::linear(o_proj.weight, o_proj.bias, heads_out);
  }
};

}  // namespace attend
