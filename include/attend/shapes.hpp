#pragma once
/// \file
/// Matrix types, head counts and shape formatting shared by every attend header.

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <ostream>
#include <type_traits>

namespace attend {

/// Row-major dynamic matrix: rows are tokens (positions), columns are features.
template <class T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Dynamic column vector (norm weights, biases, log-sum-exp values).
template <class T>
using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;

using Index = Eigen::Index;

/// The type scores, softmax statistics and accumulators are computed in for inputs of type T: float for the 16-bit
/// types (bfloat16, half), T itself for float and double. AttentionResult<T>::lse has this type.
template <class T>
struct accumulator {
  using type = T;
};
template <>
struct accumulator<Eigen::bfloat16> {
  using type = float;
};
template <>
struct accumulator<Eigen::half> {
  using type = float;
};
template <class T>
using accumulator_t = typename accumulator<T>::type;

/// Head counts of a multi-head call: `query` query heads share `kv` key/value heads in contiguous groups
/// (query head h reads kv head h / (query / kv)). kv == query is MHA, kv == 1 is MQA, anything between is GQA.
struct Heads {
  int query;
  int kv;
};

namespace detail {

/// A matrix shape, printed as `[rows, cols]` in error messages.
struct Shape {
  Index rows;
  Index cols;
};

inline std::ostream& operator<<(std::ostream& os, const Shape& s) {
  return os << '[' << s.rows << ", " << s.cols << ']';
}

/// The shape of anything with rows() and cols(): Eigen expressions, Q8Matrix.
template <class M>
Shape shape_of(const M& m) {
  return {m.rows(), m.cols()};
}

/// 16-bit storage types: values are stored in 16 bits and computed with in float.
template <class T>
inline constexpr bool is_16bit = std::is_same_v<T, Eigen::bfloat16> || std::is_same_v<T, Eigen::half>;

/// The scalars attend takes: float and double everywhere; bfloat16 and half in the kernels.
template <class T>
inline constexpr bool is_supported_scalar = std::is_same_v<T, float> || std::is_same_v<T, double> || is_16bit<T>;

/// float and double: the scalars of the layers, the reference and everything that is not a kernel.
template <class T>
inline constexpr bool is_compute_scalar = std::is_same_v<T, float> || std::is_same_v<T, double>;

/// Whether keys and values stored as S may go with queries of T: the same type, or a 16-bit cache under float
/// queries (mixed storage).
template <class T, class S>
inline constexpr bool is_storage_pair = std::is_same_v<T, S> || (std::is_same_v<T, float> && is_16bit<S>);

/// Read-only view of a row-major matrix with any row stride. Plain row-major matrices, their blocks and
/// column slices bind without a copy; any other expression (column-major, products, casts) is evaluated
/// exactly once into the Ref's own storage. Public functions bind their inputs through bind_rows().
template <class T>
using ConstRowsRef = Eigen::Ref<const Matrix<T>, 0, Eigen::OuterStride<>>;

/// Writable view of a row-major matrix with any row stride.
template <class T>
using RowsRef = Eigen::Ref<Matrix<T>, 0, Eigen::OuterStride<>>;

/// `x` as a ConstRowsRef that reads what Eigen reads. Eigen::Ref takes a runtime stride of 0 for "the default"
/// (contiguous rows), while a Map with OuterStride<>(0) repeats one row: bound in place it would be read as
/// rows that are not there (past the end of its memory). Such an `x` is copied into `copy` (Eigen's assignment
/// reads the zero stride right) and the view is over the copy, so `copy` must outlive the view. Every other layout
/// Eigen expresses is read by Ref as Eigen reads it: in place (nonzero outer strides, negative ones included,
/// overlapping rows), or evaluated into the Ref's own storage (column-major, inner strides other than 1).
template <class T, class Derived>
ConstRowsRef<T> bind_rows(const Eigen::MatrixBase<Derived>& x, Matrix<T>& copy) {
  if constexpr (bool(Derived::Flags & Eigen::DirectAccessBit)) {
    if (x.rows() > 1 && x.cols() > 0 && x.outerStride() == 0) {
      copy = x;
      return ConstRowsRef<T>(copy);
    }
  }
  return ConstRowsRef<T>(x.derived());
}

/// Whether two row-major views (inner stride 1, any outer stride) may share memory: whether the address ranges
/// their entries span intersect. Conservative (interleaved column slices of one matrix count as overlapping).
template <class A, class B>
bool may_overlap(const A& a, const B& b) {
  const auto span = [](const auto& m, std::intptr_t& lo, std::intptr_t& hi) {
    using S = typename std::decay_t<decltype(m)>::Scalar;
    const std::intptr_t base = reinterpret_cast<std::intptr_t>(m.data());
    const std::intptr_t last_row = std::intptr_t(m.rows() - 1) * std::intptr_t(m.outerStride());
    lo = base + std::intptr_t(sizeof(S)) * std::min<std::intptr_t>(0, last_row);
    hi = base + std::intptr_t(sizeof(S)) * (std::max<std::intptr_t>(0, last_row) + std::intptr_t(m.cols()));
  };
  if (a.size() == 0 || b.size() == 0) return false;
  std::intptr_t a_lo, a_hi, b_lo, b_hi;
  span(a, a_lo, a_hi);
  span(b, b_lo, b_hi);
  return a_lo < b_hi && b_lo < a_hi;
}

/// Non-deduced alias: lets `T` come from the other arguments of a function template.
template <class T>
struct type_identity {
  using type = T;
};

}  // namespace detail
}  // namespace attend
