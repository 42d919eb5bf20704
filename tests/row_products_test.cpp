// detail::RowProducts, the few-rows products of the decode path: against plain double products at every blocking
// edge (rows around the 4-row block, keys around both key blocks, depths and widths around the packet size), with
// row strides wider than the rows, so a wrong stride, a skipped remainder or a stray write shows.

#include <attend/detail/row_products.hpp>

#include "test_util.hpp"

namespace {

using attend::Index;
using attend::Matrix;

template <class T>
class RowProductsTest : public ::testing::Test {};
TYPED_TEST_SUITE(RowProductsTest, attend_test::Scalars);

// Sizes around the packet width w and the register blocks: 1, w-1, w, w+1, ... (duplicates are harmless).
template <class T>
std::vector<Index> widths() {
  using P = attend::detail::RowProducts<T>;
  const Index w = P::width, b = P::block;
  return {1, 2, std::max<Index>(1, w - 1), w, w + 1, b * w - 1, b * w, b * w + 1, 2 * b * w + 3, 128};
}

// Key counts around both key blocks (`block` keys for 4-row blocks, `wide` keys one row at a time).
template <class T>
std::vector<Index> key_counts() {
  using P = attend::detail::RowProducts<T>;
  std::vector<Index> keys;
  for (Index j = 0; j <= 2 * P::block + 1; ++j) keys.push_back(j);
  for (Index j : {P::wide - 1, P::wide, P::wide + 1, 2 * P::wide + 3}) keys.push_back(j);
  return keys;
}

// A rows x (cols + pad) matrix: random values, then `pad` columns of 1000, so that a row-stride mistake reads
// values far from the data.
template <class T>
Matrix<T> padded(Index rows, Index cols, Index pad, std::mt19937& rng) {
  Matrix<T> m = Matrix<T>::Constant(rows, cols + pad, T(1000));
  m.leftCols(cols) = attend_test::random_matrix<T>(rows, cols, rng);
  return m;
}

// Whether got = want up to the rounding of sums of n products in T: |got - want| <= 2 (n + 1) eps * sum |terms|,
// entry by entry (the classic bound is n eps; sum_abs holds the sums of the terms' magnitudes).
template <class T>
::testing::AssertionResult within_rounding(const Matrix<T>& got, const Matrix<double>& want,
                                           const Matrix<double>& sum_abs, Index n) {
  const double eps = std::numeric_limits<T>::epsilon();
  for (Index i = 0; i < got.rows(); ++i)
    for (Index j = 0; j < got.cols(); ++j)
      if (!(std::abs(double(got(i, j)) - want(i, j)) <= 2.0 * double(n + 1) * eps * sum_abs(i, j)))
        return ::testing::AssertionFailure()
               << "entry (" << i << ", " << j << "): " << got(i, j) << " vs " << want(i, j);
  return ::testing::AssertionSuccess();
}

TYPED_TEST(RowProductsTest, ScoresMatchPlainDotProducts) {
  using T = TypeParam;
  using P = attend::detail::RowProducts<T>;
  std::mt19937 rng(21);
  for (Index rows = 1; rows <= 2 * P::block_rows + 1; ++rows)
    for (Index keys : key_counts<T>())
      for (Index depth : widths<T>()) {
        const Matrix<T> q = padded<T>(rows, depth, 3, rng), k = padded<T>(keys, depth, 5, rng);
        Matrix<T> s = Matrix<T>::Constant(rows, keys + 2, T(-7));
        P::scores(s.data(), s.outerStride(), q.data(), q.outerStride(), rows, k.data(), k.outerStride(), keys, depth);
        const Matrix<double> qd = q.leftCols(depth).template cast<double>(),
                             kd = k.leftCols(depth).template cast<double>();
        const Matrix<T> got = s.leftCols(keys);
        ASSERT_TRUE(within_rounding(got, qd * kd.transpose(), qd.cwiseAbs() * kd.cwiseAbs().transpose(), depth))
            << "rows " << rows << ", keys " << keys << ", depth " << depth;
        ASSERT_TRUE((s.rightCols(2).array() == T(-7)).all()) << "wrote past the keys: rows " << rows;
      }
}

// The register blocking changes which loads are shared, never the sums: a block of rows gives each row's scores
// bit for bit as that row alone does (one row at a time, or rows_alone() of them, whichever the CPU takes).
TYPED_TEST(RowProductsTest, ScoresOfARowAreTheSameInEveryBlocking) {
  using T = TypeParam;
  using P = attend::detail::RowProducts<T>;
  std::mt19937 rng(23);
  for (Index rows : {P::block_rows, P::block_rows + 1, 2 * P::block_rows})
    for (Index keys : key_counts<T>())
      for (Index depth : widths<T>()) {
        const Matrix<T> q = padded<T>(rows, depth, 3, rng), k = padded<T>(keys, depth, 5, rng);
        Matrix<T> together(rows, keys), alone(1, keys);
        P::scores(together.data(), together.outerStride(), q.data(), q.outerStride(), rows, k.data(), k.outerStride(),
                  keys, depth);
        for (Index r = 0; r < rows; ++r) {
          P::scores(alone.data(), alone.outerStride(), q.row(r).data(), q.outerStride(), 1, k.data(), k.outerStride(),
                    keys, depth);
          ASSERT_TRUE((alone.row(0).array() == together.row(r).array()).all())
              << "row " << r << " of " << rows << ", keys " << keys << ", depth " << depth;
        }
      }
}

TYPED_TEST(RowProductsTest, AccumulateAddsWeightedValueRows) {
  using T = TypeParam;
  using P = attend::detail::RowProducts<T>;
  std::mt19937 rng(22);
  for (Index rows = 1; rows <= 2 * P::block_rows + 1; ++rows)
    for (Index keys : key_counts<T>())
      for (Index cols : widths<T>()) {
        const Matrix<T> p = padded<T>(rows, keys, 3, rng), v = padded<T>(keys, cols, 5, rng);
        Matrix<T> acc = Matrix<T>::Constant(rows, cols + 2, T(-7));
        acc.leftCols(cols) = attend_test::random_matrix<T>(rows, cols, rng);
        const Matrix<double> a0 = acc.leftCols(cols).template cast<double>(),
                             pd = p.leftCols(keys).template cast<double>(),
                             vd = v.leftCols(cols).template cast<double>();
        P::accumulate(acc.data(), acc.outerStride(), p.data(), p.outerStride(), rows, v.data(), v.outerStride(), keys,
                      cols);
        const Matrix<T> got = acc.leftCols(cols);
        ASSERT_TRUE(within_rounding(got, a0 + pd * vd, a0.cwiseAbs() + pd.cwiseAbs() * vd.cwiseAbs(), keys + 1))
            << "rows " << rows << ", keys " << keys << ", cols " << cols;
        ASSERT_TRUE((acc.rightCols(2).array() == T(-7)).all()) << "wrote past the columns: rows " << rows;
      }
}

}  // namespace
