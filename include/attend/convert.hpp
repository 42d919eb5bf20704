#pragma once
/// \file
/// Converting a trained attention layer to one with a smaller KV cache: MHA -> GQA/MQA by mean-pooling key and
/// value heads (Ainslie et al., GQA, 2023), and MHA -> MLA by a truncated SVD of the stacked key and value
/// projections, the K ~ U S V^T view of latent attention.

#include <Eigen/SVD>
#include <algorithm>
#include <cmath>
#include <utility>

#include "attend/detail/threads.hpp"
#include "attend/errors.hpp"
#include "attend/latent.hpp"
#include "attend/layers.hpp"
#include "attend/shapes.hpp"

namespace attend {

namespace detail {

/// Throws shape_error naming `fn`, the weight and the entry when a weight or bias of q_proj, k_proj, v_proj or o_proj
/// (with keys_and_values_only, a weight of k_proj or v_proj) is not finite: pooling and the SVD would spread it over
/// whole heads or every latent dimension, and a copied one would make outputs of the new layer NaN.
template <class T>
void check_finite_weights(const char* fn, const MultiHeadAttention<T>& mha, bool keys_and_values_only = false) {
  const std::pair<const char*, const Linear<T>*> layers[] = {
      {"k_proj", &mha.k_proj}, {"v_proj", &mha.v_proj}, {"q_proj", &mha.q_proj}, {"o_proj", &mha.o_proj}};
  for (const auto& [name, lin] : layers) {
    if (keys_and_values_only && lin != &mha.k_proj && lin != &mha.v_proj) continue;
    if (!lin->weight.allFinite())
      for (Index r = 0; r < lin->weight.rows(); ++r)
        for (Index c = 0; c < lin->weight.cols(); ++c)
          if (!std::isfinite(lin->weight(r, c)))
            fail(fn, name, ".weight[", r, ", ", c, "] is ", lin->weight(r, c), ", expected finite weights");
    if (!keys_and_values_only && !lin->bias.allFinite())
      for (Index i = 0; i < lin->bias.size(); ++i)
        if (!std::isfinite(lin->bias[i]))
          fail(fn, name, ".bias[", i, "] is ", lin->bias[i], ", expected finite biases");
  }
}

}  // namespace detail

/// A layer with `kv_heads` key/value heads whose weights (and biases) are the means of each group of the
/// source's kv heads; queries and output projection are copied. Query head h keeps reading the pooled head of
/// its own group, so with kv_heads == mha.kv_heads the result is the same layer.
///
/// \pre mha's weights match its sizes and are finite; 1 <= kv_heads and kv_heads divides mha.kv_heads.
/// \throws attend::shape_error when a precondition fails (naming the weight and the entry that is not finite).
template <class T>
MultiHeadAttention<T> to_grouped(const MultiHeadAttention<T>& mha, int kv_heads) {
  constexpr const char* fn = "to_grouped";
  mha.check_weights(fn);
  detail::check_finite_weights(fn, mha);
  if (kv_heads < 1 || mha.kv_heads % kv_heads != 0)
    detail::fail(fn, "kv_heads is ", kv_heads, ", expected a divisor of the source's kv heads (", mha.kv_heads, ")");
  MultiHeadAttention<T> out(mha.d_model, mha.heads, kv_heads, mha.head_dim);
  out.q_proj = mha.q_proj;
  out.o_proj = mha.o_proj;
  const Index d = mha.head_dim, pooled = mha.kv_heads / kv_heads;
  const auto pool = [&](const Linear<T>& src, Linear<T>& dst) {
    dst.weight.setZero();
    if (src.bias.size() != 0) dst.bias = Vector<T>::Zero(Index(kv_heads) * d);
    for (Index g = 0; g < kv_heads; ++g)
      for (Index j = 0; j < pooled; ++j) {
        const Index from = (g * pooled + j) * d;
        dst.weight.middleRows(g * d, d) += src.weight.middleRows(from, d) / T(pooled);
        if (src.bias.size() != 0) dst.bias.segment(g * d, d) += src.bias.segment(from, d) / T(pooled);
      }
  };
  pool(mha.k_proj, out.k_proj);
  pool(mha.v_proj, out.v_proj);
  return out;
}

namespace detail {

/// The per-head interleaved stack [W_k(head 0); W_v(head 0); W_k(head 1); ...] over the *query* heads (a GQA
/// source repeats each kv head for its group), in double: the matrix that MLA's kv_b_proj * kv_a_proj
/// reproduces.
template <class T>
Eigen::MatrixXd stacked_kv_weights(const MultiHeadAttention<T>& mha) {
  const Index d = mha.head_dim, group = mha.heads / mha.kv_heads;
  Eigen::MatrixXd w(Index(mha.heads) * 2 * d, mha.d_model);
  for (Index h = 0; h < mha.heads; ++h) {
    const Index g = h / group;
    w.middleRows(h * 2 * d, d) = mha.k_proj.weight.middleRows(g * d, d).template cast<double>();
    w.middleRows(h * 2 * d + d, d) = mha.v_proj.weight.middleRows(g * d, d).template cast<double>();
  }
  return w;
}

/// The SVD of stacked_kv_weights(mha) (`options`: which singular vectors), computed on one thread: Eigen's products
/// inside it would otherwise start threads of their own and cut their work by the thread count (see
/// detail::product()), so the result would depend on it.
template <class T>
Eigen::BDCSVD<Eigen::MatrixXd> kv_svd(const MultiHeadAttention<T>& mha, unsigned int options) {
  const Eigen::MatrixXd w = stacked_kv_weights(mha);
  Eigen::BDCSVD<Eigen::MatrixXd> svd;
#if defined(_OPENMP)
#pragma omp parallel num_threads(1)
#endif
  {
    keep_tile_products_serial();
    svd.compute(w, options);
  }
  return svd;
}

}  // namespace detail

/// Singular values, largest first, of the per-head interleaved [W_k; W_v] that to_latent() factorizes: how much
/// of the key/value projection each latent rank keeps. The error of a rank-r conversion (Frobenius norm of the
/// dropped part of the weights) is the root sum of squares of the values past r.
/// \throws attend::shape_error when mha's weights do not match its sizes, or k_proj's or v_proj's weights are not
///         all finite.
template <class T>
Eigen::VectorXd kv_singular_values(const MultiHeadAttention<T>& mha) {
  mha.check_weights("kv_singular_values");
  detail::check_finite_weights("kv_singular_values", mha, true);
  return detail::kv_svd(mha, 0).singularValues();
}

/// An MLA layer equivalent to `mha` up to a rank-`kv_lora_rank` approximation of its keys and values:
/// [W_k; W_v] (per head, interleaved) ~ U_r S_r V_r^T by truncated SVD, kv_a_proj_with_mqa = V_r^T,
/// kv_b_proj = U_r S_r (its bias the source's k/v biases), q_proj and o_proj copied; no RoPE part
/// (qk_rope_head_dim 0), identity norms, nope = v = head_dim, so the scale is the source's 1/sqrt(head_dim).
/// With kv_lora_rank >= rank([W_k; W_v]) forward() equals the source's up to rounding; a smaller rank gives the
/// best rank-r fit of the weights (Eckart-Young).
///
/// \pre mha's weights match its sizes and are finite; 1 <= kv_lora_rank <= min(2 * heads * head_dim, d_model).
/// \throws attend::shape_error when a precondition fails (naming the weight and the entry that is not finite).
template <class T>
MultiHeadLatentAttention<T> to_latent(const MultiHeadAttention<T>& mha, int kv_lora_rank) {
  constexpr const char* fn = "to_latent";
  mha.check_weights(fn);
  detail::check_finite_weights(fn, mha);
  const Index d = mha.head_dim, rows = Index(mha.heads) * 2 * d;
  const Index max_rank = std::min<Index>(rows, mha.d_model);
  if (kv_lora_rank < 1 || kv_lora_rank > max_rank)
    detail::fail(fn, "kv_lora_rank is ", kv_lora_rank, ", expected 1..", max_rank, " (the stacked [W_k; W_v] is ",
                 detail::Shape{rows, mha.d_model}, ")");
  typename MultiHeadLatentAttention<T>::Config c;
  c.d_model = mha.d_model;
  c.heads = mha.heads;
  c.q_lora_rank = 0;
  c.kv_lora_rank = kv_lora_rank;
  c.qk_nope_head_dim = mha.head_dim;
  c.qk_rope_head_dim = 0;
  c.v_head_dim = mha.head_dim;
  MultiHeadLatentAttention<T> mla(c);
  mla.q_proj = mha.q_proj;
  mla.o_proj = mha.o_proj;

  const Eigen::BDCSVD<Eigen::MatrixXd> svd = detail::kv_svd(mha, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const Index r = kv_lora_rank;
  mla.kv_a_proj_with_mqa.weight = svd.matrixV().leftCols(r).transpose().template cast<T>();
  mla.kv_b_proj.weight = (svd.matrixU().leftCols(r) * svd.singularValues().head(r).asDiagonal()).template cast<T>();

  const bool k_bias = mha.k_proj.bias.size() != 0, v_bias = mha.v_proj.bias.size() != 0;
  if (k_bias || v_bias) {
    const Index group = mha.heads / mha.kv_heads;
    mla.kv_b_proj.bias = Vector<T>::Zero(rows);
    for (Index h = 0; h < mha.heads; ++h) {
      const Index g = h / group;
      if (k_bias) mla.kv_b_proj.bias.segment(h * 2 * d, d) = mha.k_proj.bias.segment(g * d, d);
      if (v_bias) mla.kv_b_proj.bias.segment(h * 2 * d + d, d) = mha.v_proj.bias.segment(g * d, d);
    }
  }
  return mla;
}

}  // namespace attend
