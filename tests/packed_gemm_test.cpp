// detail::PackedGemm relies on Eigen's internal packed layouts; these tests pin them down on the Eigen in use, so
// an Eigen whose layouts differ fails here by name rather than as wrong attention outputs.

#include <attend/detail/packed_gemm.hpp>
#include <vector>

#include "test_util.hpp"

namespace {

using attend::Index;

template <class T>
class PackedGemmTest : public ::testing::Test {};
using Scalars = ::testing::Types<float, double>;
TYPED_TEST_SUITE(PackedGemmTest, Scalars);

template <class T>
using ColMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
template <class T>
using Buffer = Eigen::Matrix<T, Eigen::Dynamic, 1>;  // aligned as Eigen's packets need

// for_each_panel describes exactly the layout gemm_pack_lhs writes: panels cover the rows in order, and panel
// (i, h) holds rows [i, i + h) as a column-major h x depth block.
TYPED_TEST(PackedGemmTest, PanelsMatchEigensLeftPacking) {
  using T = TypeParam;
  using G = attend::detail::PackedGemm<T>;
  std::mt19937 rng(11);
  for (Index depth : {1, 3, 16}) {
    for (Index rows = 1; rows <= 3 * G::mr + 7; ++rows) {
      const attend::Matrix<T> a = attend_test::random_matrix<T>(rows, depth, rng);
      Buffer<T> packed(rows * depth);
      G::pack_lhs_rows(packed.data(), a.data(), depth, rows, depth);
      Index next = 0, mismatches = 0;
      G::for_each_panel(rows, [&](Index i, Index h) {
        EXPECT_EQ(i, next) << "rows " << rows;
        next = i + h;
        for (Index k = 0; k < depth; ++k)
          for (Index r = 0; r < h; ++r) mismatches += packed[i * depth + k * h + r] != a(i + r, k);
      });
      EXPECT_EQ(next, rows) << "rows " << rows;
      EXPECT_EQ(mismatches, 0) << "rows " << rows << ", depth " << depth;
    }
  }
}

// Products on packed operands equal Eigen's products, including column ranges of a packed right operand and row
// ranges (stride and offset) of a packed one, which is how the attention kernel reads key and value tiles.
TYPED_TEST(PackedGemmTest, ProductsOnPackedOperandsMatchEigen) {
  using T = TypeParam;
  using G = attend::detail::PackedGemm<T>;
  std::mt19937 rng(12);
  const Index total = 37;  // keys in the packed operands, not a multiple of nr
  for (Index rows : {Index(1), Index(5), G::mr - 1, G::mr, G::mr + 1, 3 * G::mr + 5}) {
    for (Index depth : {1, 7, 64}) {
      const attend::Matrix<T> q = attend_test::random_matrix<T>(rows, depth, rng);
      const attend::Matrix<T> k = attend_test::random_matrix<T>(total, depth, rng);
      const attend::Matrix<T> v = attend_test::random_matrix<T>(total, depth + 3, rng);
      Buffer<T> qp(rows * depth), kp(total * depth), vp(total * v.cols());
      G::pack_lhs_rows(qp.data(), q.data(), q.outerStride(), rows, depth);
      G::pack_rhs_transposed(kp.data(), k.data(), k.outerStride(), total, depth);
      G::pack_rhs_rows(vp.data(), v.data(), v.outerStride(), total, v.cols());
      // Key ranges that start on a panel boundary and either hold whole panels or end the operand.
      for (auto range : {std::pair<Index, Index>{0, total}, {0, 2 * G::nr}, {G::nr, total - G::nr}}) {
        const Index first = range.first, count = range.second;  // plain names: lambdas below use them
        ColMajor<T> s = ColMajor<T>::Zero(rows, count);
        G::multiply_add(s.data(), rows, qp.data(), kp.data() + first * depth, rows, depth, count);
        const ColMajor<T> s_expected = q * k.middleRows(first, count).transpose();
        EXPECT_LT(attend_test::max_abs_diff(s, s_expected), 1e3 * std::numeric_limits<T>::epsilon())
            << "scores, rows " << rows << ", depth " << depth << ", keys [" << first << ", +" << count << ")";

        // s as the left operand in the panel layout, times rows [first, first + count) of the packed values.
        Buffer<T> sp(rows * count);
        G::for_each_panel(rows, [&](Index i, Index h) {
          for (Index j = 0; j < count; ++j)
            for (Index r = 0; r < h; ++r) sp[i * count + j * h + r] = s(i + r, j);
        });
        ColMajor<T> o = ColMajor<T>::Constant(rows, v.cols(), T(1));  // multiply_add accumulates
        G::multiply_add(o.data(), rows, sp.data(), vp.data(), rows, count, v.cols(), total, first);
        const ColMajor<T> o_expected = (s_expected * v.middleRows(first, count)).array() + T(1);
        EXPECT_LT(attend_test::max_abs_diff(o, o_expected), 1e4 * std::numeric_limits<T>::epsilon())
            << "values, rows " << rows << ", depth " << depth << ", keys [" << first << ", +" << count << ")";
      }
    }
  }
}

// The register-blocked transpose copies every element, at sizes with and without whole packet squares.
TYPED_TEST(PackedGemmTest, TransposeCopiesEveryElement) {
  using T = TypeParam;
  std::mt19937 rng(13);
  for (Index rows : {1, 3, 8, 16, 17, 40})
    for (Index cols : {1, 5, 16, 33}) {
      const ColMajor<T> src = attend_test::random_matrix<T>(rows + 3, cols, rng);  // column stride rows + 3
      attend::Matrix<T> dst = attend::Matrix<T>::Zero(rows, cols + 2);             // row stride cols + 2
      attend::detail::PackedGemm<T>::transpose(dst.data(), dst.outerStride(), src.data(), src.outerStride(), rows,
                                               cols);
      EXPECT_EQ(attend::Matrix<T>(dst.leftCols(cols)), attend::Matrix<T>(src.topRows(rows))) << rows << " x " << cols;
      EXPECT_TRUE(dst.rightCols(2).isZero()) << rows << " x " << cols;
    }
}

}  // namespace
