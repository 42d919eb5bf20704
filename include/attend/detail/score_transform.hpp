#pragma once
/// \file
/// The score transform: what happens to a raw score between the product and the softmax, in the contract's order
///
///   s = scale * (q . k)    (the scale is folded into the queries before the product, see Problem::scale)
///   s = softcap * tanh(s / softcap)    when softcap > 0
///   s = s + bias(i, j)                 when there is a bias
///   s = s - slope_h |i + D - j|        ALiBi, when there are slopes (D: Problem::alibi_diagonal)
///   hidden (i, j) never enter the softmax    (the mask: each row's visible keys are one range)
///
/// (The sink is not a score: it joins the softmax's denominator, see apply_sink() in online_softmax.hpp.)
///
/// Both tile mainloops and the materializing attention_weights() path apply it through this type, each on its
/// own layout of a block of scores: a row-major block (rows mainloop, attention_weights()) or column-major panels
/// (packed mainloop). attend::reference writes the same order independently, on purpose.

#include <cmath>

#include "attend/detail/assert.hpp"
#include "attend/detail/online_softmax.hpp"
#include "attend/detail/problem.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

template <class T, class S = T>
class ScoreTransform {
  using C = accumulator_t<T>;

 public:
  explicit ScoreTransform(const Problem<T, S>& pb)
      : softcap_(pb.softcap),
        bias_(pb.bias),
        alibi_(pb.alibi.empty() ? nullptr : pb.alibi.data()),
        alibi_diagonal_(pb.alibi_diagonal) {}

  /// Whether some scores may become -inf before the mask (a bias may hide keys).
  bool has_bias() const { return bias_ != nullptr; }
  /// Whether add_terms() adds anything.
  bool has_terms() const { return bias_ || alibi_; }
  /// What the transformed scores may hold, for the online softmax.
  online_softmax::ScoreKind score_kind() const { return {has_bias(), has_terms()}; }

  /// s = softcap * tanh(s / softcap) on every entry of the array expression `s` (a block, a map of panels).
  template <class Block>
  void cap(Block&& s) const {
    if (softcap_ > 0) s = (s * (C(1) / softcap_)).tanh() * softcap_;
  }

  /// The additive terms of query `position`, query head `head`, keys [kt, kt + tk): s_j += bias(position, kt + j),
  /// then s_j -= slope_head * |position + D - (kt + j)|, on tk contiguous scores s[0, tk) (a row of a row-major
  /// block; column-major panels take panel_terms()).
  void add_terms(C* s, Index position, Index head, Index kt, Index tk) const {
    if (bias_)
      Eigen::Map<Eigen::Array<C, Eigen::Dynamic, 1>>(s, tk) +=
          Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(bias_->row(position).data() + kt, tk).template cast<C>();
    alibi_terms(s, position, head, kt, tk);
  }

  /// Whether ALiBi is on.
  bool has_alibi() const { return alibi_ != nullptr; }

  /// ALiBi's per-row constants of a tile, computed once per query tile: slope[r] = m of row r's head and
  /// diagonal[r] = position + D (in double: see diagonal_key()), row r being query position position_of(r) of query
  /// head head_of(r). (Per key tile the rows' positions and heads would be recomputed, divisions included, for
  /// every panel.)
  template <class PositionOf, class HeadOf>
  void alibi_rows(Index rows, PositionOf&& position_of, HeadOf&& head_of, C* slope, double* diagonal) const {
    for (Index r = 0; r < rows; ++r) {
      slope[r] = alibi_[head_of(r)];
      diagonal[r] = double(position_of(r)) + double(alibi_diagonal_);
    }
  }

  /// Whether the additive terms may be a product's starting values: s = terms, then s += scale (q . k). With no
  /// softcap between the product and the terms that is the same sum (rounded once more: the terms are rounded
  /// before the product joins them), and it spares the panel a pass of its own: the same arithmetic as
  /// panel_terms() after the product, less one load and one store per score.
  bool terms_before_product() const { return has_terms() && !(softcap_ > 0); }

  /// The terms of a column-major panel as panel_terms() adds them (same arguments), written as the panel's starting
  /// values: s[j * h + r] = bias(i, kt + j) - m_h |i + D - (kt + j)| for row r at query position i = position_of(r).
  template <int kMaxRows, class PositionOf>
  void panel_start(C* s, Index h, Index kt, Index tk, PositionOf&& position_of, const C* slope,
                   const double* diagonal) const {
    ATTEND_DASSERT(terms_before_product(), "terms start a product only without a softcap");
    if (bias_) panel_bias</*kAssign=*/true>(s, h, kt, tk, position_of);
    if (!alibi_) return;
    // s = bias - m_h |i + D - j|, or 0 - m_h |i + D - j| (one negated multiply-add either way)
    if (bias_)
      alibi_panel<kMaxRows>(s, h, kt, tk, slope, diagonal, [](C& x, C penalty) { x -= penalty; });
    else
      alibi_panel<kMaxRows>(s, h, kt, tk, slope, diagonal, [](C& x, C penalty) { x = C(0) - penalty; });
  }

  /// add_terms() on a column-major panel of h rows by tk keys (s[j * h + r]) of keys [kt, kt + tk): the bias of
  /// row r at query position position_of(r), then ALiBi with the rows' constants from alibi_rows(). ALiBi runs
  /// across the panel's rows, which are contiguous in this layout: each key's column is one short vector
  /// operation. Panels have at most kMaxRows rows.
  template <int kMaxRows, class PositionOf>
  void panel_terms(C* s, Index h, Index kt, Index tk, PositionOf&& position_of, const C* slope,
                   const double* diagonal) const {
    if (bias_) panel_bias</*kAssign=*/false>(s, h, kt, tk, position_of);
    if (!alibi_) return;
    // s = s - m_h |i + D - j|. A zero slope subtracts 0 * distance = 0: the scores keep their values, as
    // add_terms() skipping that row.
    alibi_panel<kMaxRows>(s, h, kt, tk, slope, diagonal, [](C& x, C penalty) { x -= penalty; });
  }

  /// cap() and add_terms() on a row-major block of scores (an Eigen block or matrix, rows x tk): row r is query
  /// position position_of(r) of query head head_of(r), keys [kt, kt + tk). The cap runs over the block as one
  /// expression, so Eigen vectorizes it as it would any block.
  template <class Block, class PositionOf, class HeadOf>
  void rows(Block&& s, Index kt, PositionOf&& position_of, HeadOf&& head_of) const {
    if (softcap_ > 0) cap(s.array());
    if (has_terms() && s.cols() > 0)
      for (Index r = 0; r < s.rows(); ++r) add_terms(&s(r, 0), position_of(r), head_of(r), kt, s.cols());
  }

 private:
  // The key at distance 0 from query `position`, relative to kt: i + D - kt, summed in double because D may be any
  // Index (Mask::with_diagonal()), where the sum in Index could overflow. Below 2^digits of C (2^24 in float) it and
  // every distance |i + D - kt - j| are integers C holds exactly; beyond, rounding it to C errs by half an ulp of
  // the penalty, the size of the rounding s - m |i + D - j| already has at that magnitude.
  C diagonal_key(Index position, Index kt) const { return C(double(position) + double(alibi_diagonal_) - double(kt)); }

  // s[j * h + r] = bias(position_of(r), kt + j) (kAssign) or += it, over a column-major panel of h rows by tk keys.
  template <bool kAssign, class PositionOf>
  void panel_bias(C* s, Index h, Index kt, Index tk, PositionOf&& position_of) const {
    for (Index r = 0; r < h; ++r) {
      const T* b = bias_->row(position_of(r)).data() + kt;
      for (Index j = 0; j < tk; ++j) {
        if constexpr (kAssign)
          s[j * h + r] = static_cast<C>(b[j]);
        else
          s[j * h + r] += static_cast<C>(b[j]);
      }
    }
  }

  // apply(s[j * h + r], m_r |i_r + D - (kt + j)|) over a column-major panel of h <= kMaxRows rows by tk keys, with
  // the rows' constants from alibi_rows(). Each key's column is one short vector operation across the rows.
  template <int kMaxRows, class Apply>
  static void alibi_panel(C* s, Index h, Index kt, Index tk, const C* slope, const double* diagonal, Apply&& apply) {
    ATTEND_DASSERT(h <= kMaxRows, "a panel holds at most kMaxRows rows");
    C key0[kMaxRows];
    for (Index r = 0; r < h; ++r) key0[r] = C(diagonal[r] - double(kt));  // see diagonal_key()
    for (Index j = 0; j < tk; ++j) {
      C* column = s + j * h;
      const C cj = C(j);
      for (Index r = 0; r < h; ++r) apply(column[r], slope[r] * std::abs(key0[r] - cj));  // m_h |i + D - j|
    }
  }

  // s_j -= slope_head |position + D - (kt + j)| for j < tk: in C, so the loop vectorizes.
  void alibi_terms(C* s, Index position, Index head, Index kt, Index tk) const {
    if (!alibi_ || alibi_[head] == C(0)) return;
    const C slope = alibi_[head], key0 = diagonal_key(position, kt);
    for (Index j = 0; j < tk; ++j) s[j] -= slope * std::abs(key0 - C(j));  // -m_h |i + D - j|
  }

  C softcap_;
  const ConstRowsRef<T>* bias_;
  const C* alibi_;
  Index alibi_diagonal_;
};

}  // namespace attend::detail
