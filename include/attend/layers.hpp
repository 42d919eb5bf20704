#pragma once
/// \file
/// Layers with weights, in torch.nn.Linear layout: Linear, RMSNorm, and MultiHeadAttention (one class for MHA,
/// GQA and MQA) with its KVCache for incremental decoding.

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "attend/detail/blocked_attention.hpp"
#include "attend/detail/checks.hpp"
#include "attend/errors.hpp"
#include "attend/masks.hpp"
#include "attend/shapes.hpp"

namespace attend {

namespace detail {

/// Checks that `lin` maps `in` features to `out` features (bias empty or of size out).
template <class L>
void check_linear(const char* fn, const char* name, const L& lin, Index out, Index in) {
  if (lin.weight.rows() != out || lin.weight.cols() != in)
    fail(fn, name, ".weight is ", shape_of(lin.weight), ", expected ", Shape{out, in}, " [out_features, in_features]");
  if (lin.bias.size() != 0 && lin.bias.size() != out)
    fail(fn, name, ".bias has ", lin.bias.size(), " entries, expected 0 (no bias) or ", out);
}

template <class X>
void check_input(const char* fn, const char* name, const X& x, Index cols) {
  if (x.cols() != cols) fail(fn, name, " is ", shape_of(x), ", expected ", cols, " columns (d_model)");
}

template <class T, class Derived>
Matrix<T> linear(const Matrix<T>& weight, const Vector<T>& bias, const Eigen::MatrixBase<Derived>& x) {
  Matrix<T> y(x.rows(), weight.rows());
  y.noalias() = x * weight.transpose();
  if (bias.size() != 0) y.rowwise() += bias.transpose();
  return y;
}

/// Rows [0, size) of a growing row buffer, bound without a copy.
template <class T>
ConstRowsRef<T> first_rows(const Matrix<T>& m, Index size) {
  return ConstRowsRef<T>(m.topRows(size));
}

/// Grows `m` to hold at least `rows` rows, doubling so that n appends copy O(n) rows in total.
template <class T>
void grow_rows(Matrix<T>& m, Index used, Index rows) {
  if (rows <= m.rows()) return;
  Matrix<T> bigger(std::max({rows, 2 * m.rows(), Index(16)}), m.cols());
  bigger.topRows(used) = m.topRows(used);
  m.swap(bigger);
}

}  // namespace detail

/// A fully connected layer as torch.nn.Linear: y = x W^T + b, W is [out_features, in_features], an empty bias
/// means none.
template <class T>
struct Linear {
  Matrix<T> weight;
  Vector<T> bias;

  /// **Shapes:** (L,in) => (L,out)
  /// \throws attend::shape_error when x's columns differ from in_features or the bias size is wrong.
  template <class Derived>
  Matrix<T> operator()(const Eigen::MatrixBase<Derived>& x) const {
    detail::static_check_scalars<T, Derived>();
    if (x.cols() != weight.cols())
      detail::fail("Linear", "x is ", detail::shape_of(x), ", expected ", weight.cols(), " columns (weight is ",
                   detail::shape_of(weight), ")");
    if (bias.size() != 0 && bias.size() != weight.rows())
      detail::fail("Linear", "bias has ", bias.size(), " entries, expected 0 (no bias) or ", weight.rows());
    return detail::linear(weight, bias, x);
  }
};

/// Root-mean-square normalization: y = x / sqrt(mean(x^2) + eps) * weight, per row. An empty weight makes the
/// layer the identity (no normalization at all), which is how converted layers that had no norm say so.
template <class T>
struct RMSNorm {
  Vector<T> weight;
  double eps = 1e-6;

  /// **Shapes:** (L,n) => (L,n)
  /// An all-zero row stays zero, also with eps = 0 (where the formula would give 0/0).
  /// \throws attend::shape_error when weight is neither empty nor of size n, or when eps is negative or not
  ///         finite.
  template <class Derived>
  Matrix<T> operator()(const Eigen::MatrixBase<Derived>& x) const {
    detail::static_check_scalars<T, Derived>();
    if (weight.size() != 0 && weight.size() != x.cols())
      detail::fail("RMSNorm", "weight has ", weight.size(), " entries, expected 0 (identity) or ", x.cols(), " for x ",
                   detail::shape_of(x));
    check_eps("RMSNorm");
    Matrix<T> y = x;
    if (weight.size() == 0) return y;
    for (Index r = 0; r < y.rows(); ++r) {
      const T mean_square = y.row(r).squaredNorm() / T(y.cols()) + static_cast<T>(eps);
      if (mean_square == 0) continue;  // an all-zero row with eps 0
      const T inv_rms = T(1) / std::sqrt(mean_square);
      y.row(r) = (y.row(r).array() * inv_rms * weight.transpose().array()).matrix();
    }
    return y;
  }

  /// Throws shape_error naming `fn` (and `owner`, the norm's name in a layer) unless eps is finite and >= 0.
  void check_eps(const char* fn, const char* owner = "") const {
    if (!(std::isfinite(eps) && eps >= 0))
      detail::fail(fn, owner, *owner ? "." : "", "eps is ", eps, ", expected a finite value >= 0");
  }
};

/// Keys and values of the tokens seen so far, for decoding with MultiHeadAttention::forward(x, cache).
/// Storage grows by doubling, so appending n tokens one at a time copies O(n) rows in total.
template <class T>
class KVCache {
 public:
  KVCache() = default;

  /// Tokens held.
  Index size() const { return size_; }
  /// Tokens that fit before the storage grows.
  Index capacity() const { return keys_.rows(); }
  /// Forgets every token (keeps the storage); the cache can then serve a layer of any size.
  void clear() { size_ = 0; }
  /// Makes room for `tokens` tokens of `key_width` / `value_width` features, so decoding up to that length
  /// never reallocates. Throws shape_error for a negative argument or if the cache holds tokens of other widths.
  void reserve(Index tokens, Index key_width, Index value_width) {
    constexpr const char* fn = "KVCache::reserve";
    if (tokens < 0 || key_width < 0 || value_width < 0)
      detail::fail(fn, "tokens ", tokens, ", key_width ", key_width, " and value_width ", value_width,
                   " must not be negative");
    check_widths(fn, key_width, value_width);
    if (keys_.cols() != key_width || values_.cols() != value_width) {
      keys_.resize(0, key_width);
      values_.resize(0, value_width);
    }
    detail::grow_rows(keys_, size_, tokens);
    detail::grow_rows(values_, size_, tokens);
  }

  /// Keys of the held tokens, [size, kv_heads * head_dim] (a view, valid until the next append).
  detail::ConstRowsRef<T> keys() const { return detail::first_rows(keys_, size_); }
  /// Values of the held tokens, [size, kv_heads * head_dim].
  detail::ConstRowsRef<T> values() const { return detail::first_rows(values_, size_); }

  /// Throws shape_error naming `fn` when tokens already held have other widths than a layer's.
  void check_widths(const char* fn, Index key_width, Index value_width) const {
    if (size_ > 0 && (keys_.cols() != key_width || values_.cols() != value_width))
      detail::fail(fn, "cache holds keys of ", keys_.cols(), " and values of ", values_.cols(),
                   " features per token, expected ", key_width, " and ", value_width,
                   " (it was filled by a layer of other sizes)");
  }

  /// Appends the keys and values of new tokens (the widths were checked by the caller).
  void append(const Matrix<T>& k, const Matrix<T>& v) {
    if (size_ == 0 && (keys_.cols() != k.cols() || values_.cols() != v.cols())) {
      keys_.resize(0, k.cols());
      values_.resize(0, v.cols());
    }
    detail::grow_rows(keys_, size_, size_ + k.rows());
    detail::grow_rows(values_, size_, size_ + v.rows());
    keys_.middleRows(size_, k.rows()) = k;
    values_.middleRows(size_, v.rows()) = v;
    size_ += k.rows();
  }

 private:
  Matrix<T> keys_;
  Matrix<T> values_;
  Index size_ = 0;
};

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
    const detail::ConstRowsRef<T> xe(x.derived());  // evaluated once; row-major inputs are not copied
    return attend_heads(project(q_proj, xe), project(k_proj, xe), project(v_proj, xe), options);
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
    const detail::ConstRowsRef<T> ce(context.derived());
    return attend_heads(project(q_proj, x), project(k_proj, ce), project(v_proj, ce), options);
  }

  /// Incremental decoding: appends the n new tokens' keys and values to `cache`, then attends the new queries
  /// over every cached token. With Mask::causal() (bottom-right aligned), feeding a sequence in chunks of any
  /// sizes gives the rows of one causal forward(x), up to rounding.
  ///
  /// **Shapes:** (n,d_model) => (n,d_model); the cache grows by n tokens of 2*kv_heads*head_dim numbers.
  /// \throws attend::shape_error as forward(x), and when the cache holds tokens of a layer of other sizes; the
  ///         cache is unchanged then.
  template <class Derived>
  Matrix<T> forward(const Eigen::MatrixBase<Derived>& x, KVCache<T>& cache, const Options& options = {}) const {
    constexpr const char* fn = "MultiHeadAttention::forward";
    detail::static_check_scalars<T, Derived>();
    check(fn, x, options);
    const Index kv_width = Index(kv_heads) * head_dim;
    cache.check_widths(fn, kv_width, kv_width);
    const detail::ConstRowsRef<T> xe(x.derived());  // evaluated once; row-major inputs are not copied
    cache.append(project(k_proj, xe), project(v_proj, xe));
    return attend_heads(project(q_proj, xe), cache.keys(), cache.values(), options);
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
    detail::check_options<T>(fn, options);
  }

  template <class Derived>
  static Matrix<T> project(const Linear<T>& lin, const Eigen::MatrixBase<Derived>& x) {
    return detail::linear(lin.weight, lin.bias, x);
  }

  Matrix<T> attend_heads(const detail::ConstRowsRef<T>& q, const detail::ConstRowsRef<T>& k,
                         const detail::ConstRowsRef<T>& v, const Options& options) const {
    Matrix<T> heads_out(q.rows(), Index(heads) * head_dim);
    detail::grouped_attention<T>(q, k, v, nullptr, Heads{heads, kv_heads}, options, heads_out, nullptr);
    return detail::linear(o_proj.weight, o_proj.bias, heads_out);
  }
};

}  // namespace attend
