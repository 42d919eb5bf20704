#pragma once
/// \file
/// The score transform: what happens to a raw score between the product and the softmax, in the contract's order
///
///   s = scale * (q . k)    (the scale is folded into the queries before the product, see Problem::scale)
///   s = softcap * tanh(s / softcap)    when softcap > 0
///   s = s + bias(i, j)                 when there is a bias
///   hidden (i, j) never enter the softmax    (the mask: each row's visible keys are one range)
///
/// Both tile mainloops and the materializing attention_weights() path apply it through this type, each on its
/// own layout of a block of scores: a row-major block (rows mainloop, attention_weights()) or column-major panels
/// (packed mainloop). attend::reference writes the same order independently, on purpose.

#include "attend/detail/problem.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

template <class T>
class ScoreTransform {
 public:
  ScoreTransform(T softcap, const ConstRowsRef<T>* bias) : softcap_(softcap), bias_(bias) {}
  explicit ScoreTransform(const Problem<T>& pb) : ScoreTransform(pb.softcap, pb.bias) {}

  bool has_bias() const { return bias_ != nullptr; }

  /// s = softcap * tanh(s / softcap) on every entry of the array expression `s` (a block, a map of panels).
  template <class Block>
  void cap(Block&& s) const {
    if (softcap_ > 0) s = (s * (T(1) / softcap_)).tanh() * softcap_;
  }

  /// s_j += bias(position, kt + j) for j < tk, where s_j is s[j * key_stride] (1 in a row-major block, the
  /// panel height in a column-major panel).
  void add_bias(T* s, Index key_stride, Index position, Index kt, Index tk) const {
    if (!bias_) return;
    const T* b = bias_->row(position).data() + kt;
    if (key_stride == 1) {
      Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(s, tk) +=
          Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(b, tk);
    } else {
      for (Index j = 0; j < tk; ++j) s[j * key_stride] += b[j];
    }
  }

  /// cap() and add_bias() on a row-major block of scores (an Eigen block or matrix, rows x tk): row r is query
  /// position position_of(r), keys [kt, kt + tk). The cap runs over the block as one expression, so Eigen
  /// vectorizes it as it would any block.
  template <class Block, class PositionOf>
  void rows(Block&& s, Index kt, PositionOf&& position_of) const {
    if (softcap_ > 0) cap(s.array());
    if (bias_ && s.cols() > 0)
      for (Index r = 0; r < s.rows(); ++r) add_bias(&s(r, 0), 1, position_of(r), kt, s.cols());
  }

 private:
  T softcap_;
  const ConstRowsRef<T>* bias_;
};

}  // namespace attend::detail
