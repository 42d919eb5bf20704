#pragma once
/// \file
/// The backward of the layers: MultiHeadAttention (self- and cross-attention) and MultiHeadLatentAttention's
/// decompressed forward, each recomputing the forward it needs (projections, norms, RoPE, attention with its lse)
/// and then running it backwards with the chain rule, the attention part through attend's backward kernel. The
/// layers' backward() members call these; the layer types are template parameters so that this header needs
/// neither class definition.
///
/// Per piece of a forward, with dy the gradient of the loss with respect to its output:
///
///   y = x W^T + b        dW = dy^T x,  db = sum of dy's rows,  dx = dy W
///   y = rmsnorm(x) o w   r = (mean(x^2) + eps)^(-1/2):  dw = sum of rows of dy o x r,
///                        dx = r (dy o w) - x (r^3 / n) ((dy o w) . x)
///   y = rope(x)          a rotation per pair of features: dx = the rotation back (by minus the angle) of dy
///   attention            attend::detail::attention_backward (dq, dk, dv from out, lse, dout)

#include <cmath>

#include "attend/backward.hpp"
#include "attend/detail/attention.hpp"
#include "attend/detail/backward.hpp"
#include "attend/detail/checks.hpp"
#include "attend/detail/problem.hpp"
#include "attend/errors.hpp"
#include "attend/linear.hpp"
#include "attend/options.hpp"
#include "attend/rope.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// Throws shape_error naming `fn` unless dy is [rows, cols] (the layer's output for its input).
template <class Dy>
void check_output_gradient(const char* fn, const Dy& dy, Index rows, Index cols) {
  if (dy.rows() != rows || dy.cols() != cols)
    fail(fn, "dy is ", shape_of(dy), ", expected the output's shape [L, d_model] = ", Shape{rows, cols});
}

/// a b, blocked by the shapes alone (detail::product), so that the layers' gradients are the same bits at any
/// thread count, as their forwards are.
template <class A, class B>
Matrix<typename A::Scalar> times(const A& a, const B& b) {
  Matrix<typename A::Scalar> r(a.rows(), b.cols());
  product(r, a, b);
  return r;
}

/// The gradients of a Linear's weight and bias (empty when the layer has none) for input x and output gradient dy.
template <class T, class X, class Dy>
Linear<T> linear_gradients(const Linear<T>& layer, const X& x, const Dy& dy) {
  Linear<T> g;
  if (dy.rows() == 0) {  // Eigen's reductions over no rows would offset a null data pointer (undefined behaviour)
    g.weight = Matrix<T>::Zero(dy.cols(), x.cols());
    g.bias = Vector<T>::Zero(layer.bias.size());
    return g;
  }
  g.weight = times(dy.transpose(), x);  // dW = dy^T x
  if (layer.bias.size() != 0) g.bias = dy.colwise().sum().transpose();
  return g;
}

/// The gradient of RMSNorm's input x for output gradient dy; adds its weight's gradient to `grad` (an empty weight,
/// the identity, has none). A row the forward leaves as it is (all zero with eps 0) passes no gradient.
template <class T>
Matrix<T> rms_norm_backward(const RMSNorm<T>& norm, const Matrix<T>& x, const Matrix<T>& dy, RMSNorm<T>& grad) {
  grad.eps = norm.eps;
  if (norm.weight.size() == 0) return dy;
  const Index n = x.cols();
  grad.weight = Vector<T>::Zero(n);
  Matrix<T> dx(x.rows(), n);
  for (Index i = 0; i < x.rows(); ++i) {
    const T mean_square = x.row(i).squaredNorm() / T(n) + static_cast<T>(norm.eps);
    if (mean_square == 0) {
      dx.row(i).setZero();
      continue;
    }
    const T r = T(1) / std::sqrt(mean_square);
    const auto g = (dy.row(i).array() * norm.weight.transpose().array()).matrix();  // dy o w
    grad.weight += (dy.row(i).array() * x.row(i).array() * r).matrix().transpose();
    dx.row(i) = r * g - x.row(i) * (r * r * r / T(n) * g.dot(x.row(i)));
  }
  return dx;
}

/// What both layers' attention needs: the forward (out and lse), then, given the output gradient through the
/// output projection, the backward.
template <class T>
struct AttentionStep {
  const Matrix<T>& q;
  const Matrix<T>& k;
  const Matrix<T>& v;
  Heads heads;
  const Options& options;
  Matrix<T> out, lse;

  AttentionStep(const Matrix<T>& q_, const Matrix<T>& k_, const Matrix<T>& v_, Heads h, const Options& o)
      : q(q_), k(k_), v(v_), heads(h), options(o) {
    out.resize(q.rows(), v.cols() / h.kv * h.query);
    lse.resize(q.rows(), h.query);
    const ConstRowsRef<T> qe(q), ke(k), ve(v);
    attention(make_problem(qe, ke, ve, nullptr, heads, options), out, &lse);
  }

  AttentionGradients<T> backward(const Matrix<T>& dout) const {
    const ConstRowsRef<T> qe(q), ke(k), ve(v), oe(out), le(lse), ge(dout);
    const Problem<T, T> pb = make_problem(qe, ke, ve, nullptr, heads, options);
    AttentionGradients<T> g{Matrix<T>(q.rows(), q.cols()), Matrix<T>(k.rows(), k.cols()),
                            Matrix<T>(v.rows(), v.cols())};
    attention_backward(BackwardProblem<T>{pb, oe, le, ge}, g.dq, g.dk, g.dv);
    return g;
  }
};

/// MultiHeadAttention::backward: self-attention when `context` is null, else cross-attention over it.
template <class T, class Layer>
typename Layer::Gradients mha_backward(const Layer& m, const ConstRowsRef<T>& x, const ConstRowsRef<T>* context,
                                       const ConstRowsRef<T>& dy, const Options& options) {
  const ConstRowsRef<T>& c = context ? *context : x;
  const Matrix<T> q = linear(m.q_proj.weight, m.q_proj.bias, x);
  const Matrix<T> k = linear(m.k_proj.weight, m.k_proj.bias, c);
  const Matrix<T> v = linear(m.v_proj.weight, m.v_proj.bias, c);
  const AttentionStep<T> step(q, k, v, Heads{m.heads, m.kv_heads}, options);
  typename Layer::Gradients g;
  g.o_proj = linear_gradients(m.o_proj, step.out, dy);
  const Matrix<T> dout = times(dy, m.o_proj.weight);  // d(heads out) = dy Wo
  const AttentionGradients<T> a = step.backward(dout);
  g.q_proj = linear_gradients(m.q_proj, x, a.dq);
  g.k_proj = linear_gradients(m.k_proj, c, a.dk);
  g.v_proj = linear_gradients(m.v_proj, c, a.dv);
  g.dx = times(a.dq, m.q_proj.weight);
  Matrix<T> dc = times(a.dk, m.k_proj.weight);
  dc += times(a.dv, m.v_proj.weight);
  if (context)
    g.dcontext = std::move(dc);
  else
    g.dx += dc;
  return g;
}

/// Zero gradients of the shape of `layer`'s weight and bias (empty stays empty).
template <class T>
Linear<T> zero_gradients(const Linear<T>& layer) {
  return {Matrix<T>::Zero(layer.weight.rows(), layer.weight.cols()), Vector<T>::Zero(layer.bias.size())};
}
template <class T>
RMSNorm<T> zero_gradients(const RMSNorm<T>& norm) {
  return {Vector<T>::Zero(norm.weight.size()), norm.eps};
}

/// MultiHeadLatentAttention::backward through the decompressed forward (forward(x, options)): the queries (q_proj,
/// or q_a_proj, its RMSNorm and q_b_proj), kv_a_proj_with_mqa, the latent's RMSNorm, RoPE of the query's rope
/// features and of the shared rope key, kv_b_proj, attention and o_proj. The shared rope key's gradient is the sum
/// over the heads that read it. `options` is the layer's (its default scale is 1 / sqrt(nope + rope)).
template <class T, class Layer>
typename Layer::Gradients mla_backward(const Layer& m, const ConstRowsRef<T>& x, const ConstRowsRef<T>& dy,
                                       Options options) {
  const auto& c = m.config;
  const Index L = x.rows(), heads = c.heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim;
  const Index dv = c.v_head_dim, r = c.kv_lora_rank, qk = nope + rope;
  typename Layer::Gradients g;
  if (L == 0) {  // column blocks of empty matrices would offset their null data pointers (undefined behaviour)
    g.dx = Matrix<T>(0, c.d_model);
    g.q_proj = zero_gradients(m.q_proj);
    g.q_a_proj = zero_gradients(m.q_a_proj);
    g.q_a_layernorm = zero_gradients(m.q_a_layernorm);
    g.q_b_proj = zero_gradients(m.q_b_proj);
    g.kv_a_proj_with_mqa = zero_gradients(m.kv_a_proj_with_mqa);
    g.kv_a_layernorm = zero_gradients(m.kv_a_layernorm);
    g.kv_b_proj = zero_gradients(m.kv_b_proj);
    g.o_proj = zero_gradients(m.o_proj);
    return g;
  }
  if (!options.scale) options.scale = 1.0 / std::sqrt(double(qk));
  // The forward, keeping what the backward needs: the queries before RoPE (and the compressed queries before and
  // after their norm), the latent before its norm, the normalized latent.
  Matrix<T> qa, qn, q;
  if (c.q_lora_rank == 0) {
    q = linear(m.q_proj.weight, m.q_proj.bias, x);
  } else {
    qa = linear(m.q_a_proj.weight, m.q_a_proj.bias, x);
    qn = m.q_a_layernorm(qa);
    q = linear(m.q_b_proj.weight, m.q_b_proj.bias, qn);
  }
  for (Index h = 0; h < heads; ++h) rope_slice_in_place<T>(q, h * qk + nope, rope, 0, c.rope_theta, c.rope_layout);
  const Matrix<T> kva = linear(m.kv_a_proj_with_mqa.weight, m.kv_a_proj_with_mqa.bias, x);
  const Matrix<T> latent = kva.leftCols(r);
  const Matrix<T> cn = m.kv_a_layernorm(latent);
  Matrix<T> k_rope = kva.rightCols(rope);
  rope_slice_in_place<T>(k_rope, 0, rope, 0, c.rope_theta, c.rope_layout);
  const Matrix<T> kv = linear(m.kv_b_proj.weight, m.kv_b_proj.bias, cn);
  Matrix<T> k(L, heads * qk), v(L, heads * dv);
  for (Index h = 0; h < heads; ++h) {
    k.middleCols(h * qk, nope) = kv.middleCols(h * (nope + dv), nope);
    k.middleCols(h * qk + nope, rope) = k_rope;
    v.middleCols(h * dv, dv) = kv.middleCols(h * (nope + dv) + nope, dv);
  }
  const AttentionStep<T> step(q, k, v, Heads{c.heads, c.heads}, options);

  // Backwards.
  g.o_proj = linear_gradients(m.o_proj, step.out, dy);
  const AttentionGradients<T> a = step.backward(times(dy, m.o_proj.weight));
  Matrix<T> dkv(L, heads * (nope + dv));
  Matrix<T> dk_rope = Matrix<T>::Zero(L, rope);
  for (Index h = 0; h < heads; ++h) {
    dkv.middleCols(h * (nope + dv), nope) = a.dk.middleCols(h * qk, nope);
    dkv.middleCols(h * (nope + dv) + nope, dv) = a.dv.middleCols(h * dv, dv);
    dk_rope += a.dk.middleCols(h * qk + nope, rope);  // every head reads the shared rope key
  }
  rope_slice_in_place<T>(dk_rope, 0, rope, 0, c.rope_theta, c.rope_layout, -1.0);  // R(-angle) dy
  g.kv_b_proj = linear_gradients(m.kv_b_proj, cn, dkv);
  Matrix<T> dkva(L, r + rope);
  dkva.leftCols(r) = rms_norm_backward(m.kv_a_layernorm, latent, times(dkv, m.kv_b_proj.weight), g.kv_a_layernorm);
  dkva.rightCols(rope) = dk_rope;
  g.kv_a_proj_with_mqa = linear_gradients(m.kv_a_proj_with_mqa, x, dkva);
  g.dx = times(dkva, m.kv_a_proj_with_mqa.weight);
  Matrix<T> dq = a.dq;
  for (Index h = 0; h < heads; ++h)
    rope_slice_in_place<T>(dq, h * qk + nope, rope, 0, c.rope_theta, c.rope_layout, -1.0);
  if (c.q_lora_rank == 0) {
    g.q_proj = linear_gradients(m.q_proj, x, dq);
    g.dx += times(dq, m.q_proj.weight);
    g.q_a_proj = zero_gradients(m.q_a_proj);
    g.q_a_layernorm = zero_gradients(m.q_a_layernorm);
    g.q_b_proj = zero_gradients(m.q_b_proj);
  } else {
    g.q_proj = zero_gradients(m.q_proj);
    g.q_b_proj = linear_gradients(m.q_b_proj, qn, dq);
    const Matrix<T> dqa = rms_norm_backward(m.q_a_layernorm, qa, times(dq, m.q_b_proj.weight), g.q_a_layernorm);
    g.q_a_proj = linear_gradients(m.q_a_proj, x, dqa);
    g.dx += times(dqa, m.q_a_proj.weight);
  }
  return g;
}

}  // namespace attend::detail
