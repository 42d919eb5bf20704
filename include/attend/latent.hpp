#pragma once
/// \file
/// Multi-head latent attention (MLA) as DeepSeek-V2 defines it, with Hugging Face weight names.
///
/// Keys and values are rebuilt from a per-token latent c (kv_lora_rank numbers) through kv_b_proj, plus one
/// small RoPE key shared by all heads. A decoder caches only [c, k_rope] per token. At decode time the
/// up-projection of the keys is absorbed into the queries (q_nope . (W_UK c) = (W_UK^T q_nope) . c) and that of
/// the values into the output (sum p W_UV c = W_UV sum p c), so attention runs in the latent space as
/// multi-query attention over the cache itself: every head shares the one latent kv head.
///
/// Longer than most headers (about 370 lines) on purpose: it is one layer, its weights and config checks, its
/// four entry points (forward, over a LatentCache, over a PagedLatentCache, backward) and the private steps they
/// share (queries, latent, RoPE, absorption); the machinery behind them lives in detail/ (layer_backward.hpp, the
/// kernel, paged_batch.hpp). Splitting the one struct across files would scatter the steps its forwards share.

#include <cmath>
#include <cstddef>
#include <limits>
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
#include "attend/rope.hpp"
#include "attend/shapes.hpp"

namespace attend {

/// DeepSeek-V2 multi-head latent attention.
///
/// Query: q_proj(x) when q_lora_rank == 0, else q_b_proj(q_a_layernorm(q_a_proj(x))); per head, its
/// qk_nope_head_dim "nope" features then qk_rope_head_dim features that get RoPE.
/// Keys/values: kv_a_proj_with_mqa(x) = [c_KV | k_rope]; c = kv_a_layernorm(c_KV); kv_b_proj(c) gives per head
/// k_nope then v. Head h's key is [k_nope_h, rope(k_rope)] (k_rope shared by all heads).
/// Scores are scaled by 1/sqrt(nope + rope) unless Options.scale is set. Positions start at 0.
template <class T>
struct MultiHeadLatentAttention {
  struct Config {
    int d_model = 0, heads = 0;
    int q_lora_rank = 0;  ///< 0: no query compression (q_proj)
    int kv_lora_rank = 0, qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
    double rope_theta = 10000;
    RopeLayout rope_layout = RopeLayout::interleaved;
  };

  /// Zero weights of the documented shapes, empty (identity) norms, no biases.
  /// \throws attend::shape_error for sizes < 1 (q_lora_rank, qk_nope_head_dim, qk_rope_head_dim may be 0, but not
  ///         both head dims), an odd qk_rope_head_dim, or a non-positive rope_theta.
  explicit MultiHeadLatentAttention(const Config& c) : config(c) {
    check_config("MultiHeadLatentAttention");
    const Index h = c.heads, qk = Index(c.qk_nope_head_dim) + c.qk_rope_head_dim;
    if (c.q_lora_rank == 0) {
      q_proj.weight = Matrix<T>::Zero(h * qk, c.d_model);
    } else {
      q_a_proj.weight = Matrix<T>::Zero(c.q_lora_rank, c.d_model);
      q_b_proj.weight = Matrix<T>::Zero(h * qk, c.q_lora_rank);
    }
    kv_a_proj_with_mqa.weight = Matrix<T>::Zero(Index(c.kv_lora_rank) + c.qk_rope_head_dim, c.d_model);
    kv_b_proj.weight = Matrix<T>::Zero(h * (Index(c.qk_nope_head_dim) + c.v_head_dim), c.kv_lora_rank);
    o_proj.weight = Matrix<T>::Zero(c.d_model, h * c.v_head_dim);
  }

  Config config;
  Linear<T> q_proj;              ///< q_lora_rank == 0: [heads*(nope+rope), d_model]
  Linear<T> q_a_proj;            ///< q_lora_rank > 0: [q_lora_rank, d_model]
  RMSNorm<T> q_a_layernorm;      ///< q_lora_rank > 0: empty or q_lora_rank
  Linear<T> q_b_proj;            ///< q_lora_rank > 0: [heads*(nope+rope), q_lora_rank]
  Linear<T> kv_a_proj_with_mqa;  ///< [kv_lora_rank + rope, d_model]: latent c_KV, then shared k_rope
  RMSNorm<T> kv_a_layernorm;     ///< on c_KV only: empty or kv_lora_rank
  Linear<T> kv_b_proj;           ///< [heads*(nope+v), kv_lora_rank], per head k_nope rows then v rows
  Linear<T> o_proj;              ///< [d_model, heads*v]

  /// The textbook form: keys and values decompressed for every head, then multi-head attention.
  ///
  /// **Shapes:** (L,d_model) => (L,d_model)
  /// \throws attend::shape_error for an x of other width, weights, biases or norms of other shapes, invalid
  ///         options.
  template <class Derived>
  Matrix<T> forward(const Eigen::MatrixBase<Derived>& x, const Options& options = {}) const {
    constexpr const char* fn = "MultiHeadLatentAttention::forward";
    detail::static_check_scalars<T, Derived>();
    check(fn, x, options);
    // Column blocks of empty matrices would offset their null data pointers (undefined behaviour).
    if (x.rows() == 0) return Matrix<T>(0, config.d_model);
    const Config& c = config;
    const Index h_count = c.heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim, dv = c.v_head_dim;
    const Index r = c.kv_lora_rank, qk = nope + rope;
    Matrix<T> copy;  // evaluated once; row-major inputs are not copied (see detail::bind_rows)
    const detail::ConstRowsRef<T> xe = detail::bind_rows(x, copy);
    const Matrix<T> q = queries(xe, 0);
    const Matrix<T> latent = latent_and_rope_key(xe, 0);
    const Matrix<T> kv = detail::linear(kv_b_proj.weight, kv_b_proj.bias, latent.leftCols(r));
    Matrix<T> k(xe.rows(), h_count * qk), v(xe.rows(), h_count * dv);
    for (Index h = 0; h < h_count; ++h) {
      k.middleCols(h * qk, nope) = kv.middleCols(h * (nope + dv), nope);
      k.middleCols(h * qk + nope, rope) = latent.rightCols(rope);
      v.middleCols(h * dv, dv) = kv.middleCols(h * (nope + dv) + nope, dv);
    }
    Matrix<T> heads_out(xe.rows(), h_count * dv);
    const detail::ConstRowsRef<T> qe(q), ke(k), ve(v);
    detail::attention(detail::make_problem(qe, ke, ve, nullptr, Heads{c.heads, c.heads}, scaled(options)), heads_out,
                      nullptr);
    return detail::linear(o_proj.weight, o_proj.bias, heads_out);
  }

  /// Decoding with the latent cache: appends the n new tokens' [c, k_rope] (positions continue from the cache
  /// length), then attends in the latent space: queries W_UK-absorbed, multi-query attention over the cache
  /// rows (keys [c, k_rope], values c), W_UV applied to each head's latent output. Per-head keys and values are
  /// never formed. Equals forward(x) over the whole sequence, up to rounding, with Mask::causal().
  ///
  /// **Shapes:** (n,d_model) => (n,d_model); the cache grows by n tokens of kv_lora_rank + qk_rope_head_dim.
  /// \throws attend::shape_error as forward(x), when the cache holds tokens of a layer of other sizes, and when
  ///         kv_b_proj has a nonzero key bias together with a softcap (that bias then no longer cancels in the
  ///         softmax and cannot be absorbed). The cache is unchanged when it throws.
  ///
  /// The cache may store its entries in 16 bits (LatentCache<float, Eigen::bfloat16> or <float, Eigen::half>): they
  /// are rounded as they are appended, and the absorbed attention reads them as stored.
  template <class Derived, class S>
  Matrix<T> forward(const Eigen::MatrixBase<Derived>& x, LatentCache<T, S>& cache, const Options& options = {}) const {
    constexpr const char* fn = "MultiHeadLatentAttention::forward";
    detail::static_check_scalars<T, Derived>();
    check(fn, x, options);
    const Config& c = config;
    const Index h_count = c.heads, rope = c.qk_rope_head_dim, r = c.kv_lora_rank;
    cache.check_widths(fn, r, rope);
    check_key_bias(fn, options);
    if (x.rows() == 0) return Matrix<T>(0, c.d_model);  // no token to append (see forward(x))

    Matrix<T> copy;  // evaluated once; row-major inputs are not copied (see detail::bind_rows)
    const detail::ConstRowsRef<T> xe = detail::bind_rows(x, copy);
    const Index start = cache.size();
    const Matrix<T> q = queries(xe, start);
    cache.append(latent_and_rope_key(xe, start), r);

    const Matrix<T> q_latent = absorbed_queries(q);
    Matrix<T> out_latent(xe.rows(), h_count * r);
    Matrix<T> lse(xe.rows(), h_count);
    const detail::ConstRowsRef<T> qe(q_latent);
    const auto ke = cache.entries();  // the cache's rows as the kernel reads them (rows of S, or q8 rows)
    const auto ve = cache.latent();
    detail::attention(detail::make_problem(qe, ke, ve, nullptr, Heads{c.heads, 1}, scaled(options)), out_latent, &lse);
    return absorbed_output(out_latent, lse);
  }

  /// Continuous batching with the latent cache: rows [x_offsets[b], x_offsets[b+1]) of x are new tokens of sequence
  /// seqs[b] of `cache` (positions continue from that sequence's length); their [c, k_rope] are appended to it,
  /// then every sequence of the batch attends in the latent space in one call, as forward(x, LatentCache) does for
  /// one. Each sequence gets the rows it would get fed alone through a LatentCache, up to rounding.
  ///
  /// **Shapes:** (N,d_model), B ids, B+1 offsets from 0 to N => (N,d_model); each sequence grows by its rows.
  /// \throws attend::shape_error as forward(x, LatentCache), and for an id the cache does not hold or named twice,
  ///         offsets that are not B+1 non-decreasing values from 0 to N, or a cache holding tokens of a layer of
  ///         other sizes; the cache is unchanged then.
  template <class Derived, class S>
  Matrix<T> forward(const Eigen::MatrixBase<Derived>& x, PagedLatentCache<T, S>& cache, const std::vector<int>& seqs,
                    const std::vector<Index>& x_offsets, const Options& options = {}) const {
    constexpr const char* fn = "MultiHeadLatentAttention::forward";
    detail::static_check_scalars<T, Derived>();
    check(fn, x, options);
    const Config& c = config;
    const Index r = c.kv_lora_rank, rope = c.qk_rope_head_dim;
    cache.check_batch(fn, seqs, x_offsets, x.rows(), x.cols());
    cache.check_widths(fn, r, rope);
    check_key_bias(fn, options);
    if (x.rows() == 0) return Matrix<T>(0, c.d_model);  // no token to append (see forward(x))

    Matrix<T> copy;  // evaluated once; row-major inputs are not copied (see detail::bind_rows)
    const detail::ConstRowsRef<T> xe = detail::bind_rows(x, copy);
    Matrix<T> q = projected_queries(xe);
    Matrix<T> latent = projected_latent(xe);
    for (std::size_t b = 0; b < seqs.size(); ++b) {  // RoPE at each sequence's own positions
      const Index row = x_offsets[b], n = x_offsets[b + 1] - row, start = cache.length(seqs[b]);
      if (n == 0) continue;
      rope_queries(q.middleRows(row, n), start);
      rope_latent(latent.middleRows(row, n), start);
    }
    cache.append(seqs, x_offsets, latent, r);

    const Matrix<T> q_latent = absorbed_queries(q);
    Matrix<T> out_latent(xe.rows(), Index(c.heads) * r);
    Matrix<T> lse(xe.rows(), c.heads);
    detail::paged_attention<T>(q_latent, cache, seqs, x_offsets, Heads{c.heads, 1}, r + rope, r, scaled(options),
                               out_latent, &lse);
    return absorbed_output(out_latent, lse);
  }

  /// What backward() returns: the gradient of a loss with respect to x and to every weight, bias and norm weight,
  /// shaped as the layer's (empty where the layer's is empty: q_proj or the q_a/q_b pair, absent biases, identity
  /// norms; a norm's eps is copied from the layer, it is not a gradient).
  struct Gradients {
    Matrix<T> dx;  ///< [L, d_model]
    Linear<T> q_proj, q_a_proj;
    RMSNorm<T> q_a_layernorm;
    Linear<T> q_b_proj, kv_a_proj_with_mqa;
    RMSNorm<T> kv_a_layernorm;
    Linear<T> kv_b_proj, o_proj;
  };

  /// The gradients of a loss through forward(x, options) (the decompressed form), given dy, the loss's gradient with
  /// respect to that output: recomputes the forward (queries, latent and its norm, RoPE, kv_b_proj, attention with
  /// its lse) and runs it backwards, attention through attend's backward kernel (attend/backward.hpp).
  ///
  /// **Shapes:** (L,d_model) x dy (L,d_model) => dx (L,d_model), the weights' shapes
  /// \throws attend::shape_error as forward(x), and for a dy of another shape.
  template <class Derived, class Dy>
  Gradients backward(const Eigen::MatrixBase<Derived>& x, const Eigen::MatrixBase<Dy>& dy,
                     const Options& options = {}) const {
    constexpr const char* fn = "MultiHeadLatentAttention::backward";
    detail::static_check_scalars<T, Derived, Dy>();
    check(fn, x, options);
    detail::check_output_gradient(fn, dy, x.rows(), config.d_model);
    Matrix<T> xc, dyc;  // see detail::bind_rows
    const detail::ConstRowsRef<T> xe = detail::bind_rows(x, xc), dye = detail::bind_rows(dy, dyc);
    return detail::mla_backward<T>(*this, xe, dye, options);
  }

  /// Numbers cached per token: the latent and the shared rope key.
  std::size_t kv_cache_elements_per_token() const {
    return std::size_t(config.kv_lora_rank) + std::size_t(config.qk_rope_head_dim);
  }

  /// Throws shape_error naming `fn` when the config is invalid or a weight, bias or norm disagrees with it.
  void check_weights(const char* fn) const {
    check_config(fn);
    const Config& c = config;
    const Index h = c.heads, qk = Index(c.qk_nope_head_dim) + c.qk_rope_head_dim;
    if (c.q_lora_rank == 0) {
      detail::check_linear(fn, "q_proj", q_proj, h * qk, c.d_model);
    } else {
      detail::check_linear(fn, "q_a_proj", q_a_proj, c.q_lora_rank, c.d_model);
      check_norm(fn, "q_a_layernorm", q_a_layernorm, c.q_lora_rank);
      detail::check_linear(fn, "q_b_proj", q_b_proj, h * qk, c.q_lora_rank);
    }
    detail::check_linear(fn, "kv_a_proj_with_mqa", kv_a_proj_with_mqa, Index(c.kv_lora_rank) + c.qk_rope_head_dim,
                         c.d_model);
    check_norm(fn, "kv_a_layernorm", kv_a_layernorm, c.kv_lora_rank);
    detail::check_linear(fn, "kv_b_proj", kv_b_proj, h * (Index(c.qk_nope_head_dim) + c.v_head_dim), c.kv_lora_rank);
    detail::check_linear(fn, "o_proj", o_proj, c.d_model, h * c.v_head_dim);
  }

 private:
  void check_config(const char* fn) const {
    const Config& c = config;
    if (c.d_model < 1) detail::fail(fn, "config.d_model is ", c.d_model, ", expected at least 1");
    if (c.heads < 1) detail::fail(fn, "config.heads is ", c.heads, ", expected at least 1");
    if (c.q_lora_rank < 0) detail::fail(fn, "config.q_lora_rank is ", c.q_lora_rank, ", expected >= 0");
    if (c.kv_lora_rank < 1) detail::fail(fn, "config.kv_lora_rank is ", c.kv_lora_rank, ", expected at least 1");
    if (c.qk_nope_head_dim < 0 || c.qk_rope_head_dim < 0 || Index(c.qk_nope_head_dim) + c.qk_rope_head_dim < 1)
      detail::fail(fn, "config.qk_nope_head_dim ", c.qk_nope_head_dim, " and qk_rope_head_dim ", c.qk_rope_head_dim,
                   " must be >= 0 with a positive sum");
    if (c.qk_rope_head_dim % 2 != 0)
      detail::fail(fn, "config.qk_rope_head_dim is ", c.qk_rope_head_dim,
                   ", expected an even number (RoPE rotates pairs of features)");
    if (c.v_head_dim < 1) detail::fail(fn, "config.v_head_dim is ", c.v_head_dim, ", expected at least 1");
    if (!(std::isfinite(c.rope_theta) && c.rope_theta > 0))
      detail::fail(fn, "config.rope_theta is ", c.rope_theta, ", expected a finite value > 0");
  }

  static void check_norm(const char* fn, const char* name, const RMSNorm<T>& norm, Index width) {
    if (norm.weight.size() != 0 && norm.weight.size() != width)
      detail::fail(fn, name, ".weight has ", norm.weight.size(), " entries, expected 0 (identity) or ", width);
    if (norm.weight.size() != 0) norm.check_eps(fn, name);
  }

  template <class Derived>
  void check(const char* fn, const Eigen::MatrixBase<Derived>& x, const Options& options) const {
    check_weights(fn);
    detail::check_input(fn, "x", x, config.d_model);
    detail::check_options<T>(fn, options, config.heads);
  }

  Options scaled(const Options& options) const {
    Options o = options;
    if (!o.scale) o.scale = 1.0 / std::sqrt(double(config.qk_nope_head_dim + config.qk_rope_head_dim));
    return o;
  }

  /// [L, heads*(nope+rope)] with RoPE applied to each head's rope features, row r at position start + r.
  Matrix<T> queries(const detail::ConstRowsRef<T>& x, Index start) const {
    Matrix<T> q = projected_queries(x);
    rope_queries(q, start);
    return q;
  }

  /// [L, heads*(nope+rope)] before RoPE.
  Matrix<T> projected_queries(const detail::ConstRowsRef<T>& x) const {
    const Config& c = config;
    return c.q_lora_rank == 0 ? detail::linear(q_proj.weight, q_proj.bias, x)
                              : detail::linear(q_b_proj.weight, q_b_proj.bias,
                                               q_a_layernorm(detail::linear(q_a_proj.weight, q_a_proj.bias, x)));
  }

  /// RoPE on each head's rope features of rows of queries, row r at position start + r.
  void rope_queries(detail::RowsRef<T> q, Index start) const {
    const Config& c = config;
    const Index qk = c.qk_nope_head_dim + c.qk_rope_head_dim;
    for (Index h = 0; h < c.heads; ++h)
      detail::rope_slice_in_place<T>(q, h * qk + c.qk_nope_head_dim, c.qk_rope_head_dim, start, c.rope_theta,
                                     c.rope_layout);
  }

  /// [L, kv_lora_rank + rope]: the normalized latent, then the roped shared key: what the cache holds.
  Matrix<T> latent_and_rope_key(const detail::ConstRowsRef<T>& x, Index start) const {
    Matrix<T> kv = projected_latent(x);
    rope_latent(kv, start);
    return kv;
  }

  /// [L, kv_lora_rank + rope]: the normalized latent, then the shared key before RoPE.
  Matrix<T> projected_latent(const detail::ConstRowsRef<T>& x) const {
    const Config& c = config;
    Matrix<T> kv = detail::linear(kv_a_proj_with_mqa.weight, kv_a_proj_with_mqa.bias, x);
    kv.leftCols(c.kv_lora_rank) = kv_a_layernorm(kv.leftCols(c.kv_lora_rank));
    return kv;
  }

  /// RoPE on the shared key of rows of projected_latent(), row r at position start + r.
  void rope_latent(detail::RowsRef<T> kv, Index start) const {
    const Config& c = config;
    detail::rope_slice_in_place<T>(kv, c.kv_lora_rank, c.qk_rope_head_dim, start, c.rope_theta, c.rope_layout);
  }

  /// Throws shape_error naming `fn` when kv_b_proj has nonzero key bias entries under a softcap: the absorbed
  /// (latent cache) paths cannot absorb a key bias then.
  void check_key_bias(const char* fn, const Options& options) const {
    const Config& c = config;
    const Index nope = c.qk_nope_head_dim, dv = c.v_head_dim;
    if (kv_b_proj.bias.size() != 0 && options.softcap > 0)
      for (Index h = 0; h < c.heads; ++h)
        if (!kv_b_proj.bias.segment(h * (nope + dv), nope).isZero(0))
          detail::fail(fn, "kv_b_proj.bias has nonzero key entries and options.softcap is ", options.softcap,
                       ": the latent cache path cannot absorb a key bias under a softcap (use forward(x))");
  }

  /// W_UK absorbed: head h's latent query is q_nope_h W_UK_h ([n, nope] x [nope, r]), then its rope features. A key
  /// bias b adds q_nope_h . b to every score of a row, which the softmax cancels (no softcap, check_key_bias()).
  Matrix<T> absorbed_queries(const Matrix<T>& q) const {
    const Config& c = config;
    const Index h_count = c.heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim, dv = c.v_head_dim;
    const Index r = c.kv_lora_rank, qk = nope + rope;
    Matrix<T> q_latent(q.rows(), h_count * (r + rope));
    for (Index h = 0; h < h_count; ++h) {
      detail::product(q_latent.middleCols(h * (r + rope), r), q.middleCols(h * qk, nope),
                      kv_b_proj.weight.middleRows(h * (nope + dv), nope));
      q_latent.middleCols(h * (r + rope) + r, rope) = q.middleCols(h * qk + nope, rope);
    }
    return q_latent;
  }

  /// W_UV absorbed into the output: o_h = W_UV_h (sum_j p_j c_j) [+ b_v when the row saw any key, since the
  /// weights then sum to 1], then o_proj.
  Matrix<T> absorbed_output(const Matrix<T>& out_latent, const Matrix<T>& lse) const {
    const Config& c = config;
    const Index h_count = c.heads, nope = c.qk_nope_head_dim, dv = c.v_head_dim, r = c.kv_lora_rank;
    Matrix<T> heads_out(out_latent.rows(), h_count * dv);
    for (Index h = 0; h < h_count; ++h) {
      const Index v_rows = h * (nope + dv) + nope;
      detail::product(heads_out.middleCols(h * dv, dv), out_latent.middleCols(h * r, r),
                      kv_b_proj.weight.middleRows(v_rows, dv).transpose());
      if (kv_b_proj.bias.size() != 0)
        for (Index i = 0; i < out_latent.rows(); ++i)
          if (lse(i, h) != -std::numeric_limits<T>::infinity())
            heads_out.row(i).segment(h * dv, dv) += kv_b_proj.bias.segment(v_rows, dv).transpose();
    }
    return detail::linear(o_proj.weight, o_proj.bias, heads_out);
  }
};

}  // namespace attend
