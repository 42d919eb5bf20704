#pragma once
// The tests' one white-box seam into the kernel: attend::detail::attention() with explicit tiles, an optional bias
// and an optional log-sum-exp, as every public multi-head function calls it with the default tiles. Tests choose
// tile sizes with Tiles' named setters, e.g. tiles().with_queries(4).with_keys(8).with_decode_chunk(16).

#include <attend/attend.hpp>

namespace attend_test {

using Tiles = attend::detail::Tiles;

// Default tiles, to be changed through the named setters.
inline Tiles tiles() { return Tiles(); }

// Grouped-query attention through the kernel: q [Lq, H*d], k [Lk, G*d], v [Lk, G*dv] => [Lq, H*dv]; the arguments
// must be valid (the public functions check them). `bias` [Lq, Lk] when not null; `lse` [Lq, H] filled when not
// null.
template <class T>
attend::Matrix<T> kernel(const attend::Matrix<T>& q, const attend::Matrix<T>& k, const attend::Matrix<T>& v,
                         attend::Heads heads, const attend::Options& options, const Tiles& tiles = Tiles(),
                         const attend::Matrix<typename attend::detail::type_identity<T>::type>* bias = nullptr,
                         attend::Matrix<typename attend::detail::type_identity<T>::type>* lse = nullptr) {
  attend::Matrix<T> out(q.rows(), v.cols() / heads.kv * heads.query);
  if (lse) lse->resize(q.rows(), heads.query);
  const attend::detail::ConstRowsRef<T> qr(q), kr(k), vr(v);
  if (bias) {
    const attend::detail::ConstRowsRef<T> br(*bias);
    attend::detail::attention(attend::detail::make_problem(qr, kr, vr, &br, heads, options), out, lse, tiles);
  } else {
    attend::detail::attention(attend::detail::make_problem(qr, kr, vr, nullptr, heads, options), out, lse, tiles);
  }
  return out;
}

}  // namespace attend_test
