#pragma once
/// \file
/// Matrix types, head counts and shape formatting shared by every attend header.

#include <Eigen/Core>
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
/// exactly once into the Ref's own storage.
template <class T>
using ConstRowsRef = Eigen::Ref<const Matrix<T>, 0, Eigen::OuterStride<>>;

/// Writable view of a row-major matrix with any row stride.
template <class T>
using RowsRef = Eigen::Ref<Matrix<T>, 0, Eigen::OuterStride<>>;

/// Non-deduced alias: lets `T` come from the other arguments of a function template.
template <class T>
struct type_identity {
  using type = T;
};

}  // namespace detail
}  // namespace attend
