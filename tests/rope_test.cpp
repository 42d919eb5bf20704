// RoPE: pair layouts, angles, start positions, and the property that makes it work: q . k after rotation
// depends only on the distance between the positions.
#include <gtest/gtest.h>

#include <attend/attend.hpp>
#include <cmath>
#include <random>

#include "test_util.hpp"

using attend::Matrix;
using attend::RopeLayout;

namespace {

TEST(Rope, RotatesThePairsOfEachLayout) {
  // d = 4, position 1, theta 100: pair 0 turns by 1 rad, pair 1 by 100^(-1/2) = 0.1 rad.
  Matrix<double> x(2, 4);
  x << 1, 2, 3, 4, 1, 2, 3, 4;
  const Matrix<double> y = attend::apply_rope(x, 4, 0, 100.0, RopeLayout::interleaved);
  EXPECT_EQ(Matrix<double>(y.row(0)), Matrix<double>(x.row(0)));  // position 0: no rotation
  EXPECT_NEAR(y(1, 0), 1 * std::cos(1.0) - 2 * std::sin(1.0), 1e-15);
  EXPECT_NEAR(y(1, 1), 1 * std::sin(1.0) + 2 * std::cos(1.0), 1e-15);
  EXPECT_NEAR(y(1, 2), 3 * std::cos(0.1) - 4 * std::sin(0.1), 1e-15);
  const Matrix<double> z = attend::apply_rope(x, 4, 0, 100.0, RopeLayout::half_split);  // pairs (0,2), (1,3)
  EXPECT_NEAR(z(1, 0), 1 * std::cos(1.0) - 3 * std::sin(1.0), 1e-15);
  EXPECT_NEAR(z(1, 2), 1 * std::sin(1.0) + 3 * std::cos(1.0), 1e-15);
  EXPECT_NEAR(z(1, 1), 2 * std::cos(0.1) - 4 * std::sin(0.1), 1e-15);
}

TEST(Rope, StartPositionShiftsRowsAndHeadsAreIndependent) {
  std::mt19937 rng(1);
  const Matrix<double> x = attend_test::random_matrix<double>(6, 3 * 8, rng);
  const Matrix<double> all = attend::apply_rope(x, 8, 0);
  EXPECT_LE(attend_test::max_abs_diff(attend::apply_rope(x.bottomRows(2), 8, 4), all.bottomRows(2)), 1e-15);
  EXPECT_LE(attend_test::max_abs_diff(attend::apply_rope(x.middleCols(8, 8), 8, 0), all.middleCols(8, 8)), 1e-15);
}

TEST(Rope, ScoresDependOnlyOnRelativePosition) {
  std::mt19937 rng(2);
  for (RopeLayout layout : {RopeLayout::interleaved, RopeLayout::half_split}) {
    const Matrix<double> q = attend_test::random_matrix<double>(1, 16, rng),
                         k = attend_test::random_matrix<double>(1, 16, rng);
    const double a =
        attend::apply_rope(q, 16, 7, 10000, layout).row(0).dot(attend::apply_rope(k, 16, 3, 10000, layout).row(0));
    const double b =
        attend::apply_rope(q, 16, 104, 10000, layout).row(0).dot(attend::apply_rope(k, 16, 100, 10000, layout).row(0));
    EXPECT_NEAR(a, b, 1e-12);
  }
}

TEST(Rope, RejectsOddDimensions) {
  EXPECT_THROW(attend::apply_rope(Matrix<float>::Ones(2, 6), 3), attend::shape_error);
  EXPECT_THROW(attend::apply_rope(Matrix<float>::Ones(2, 6), 4), attend::shape_error);  // 4 does not divide 6
  EXPECT_THROW(attend::apply_rope(Matrix<float>::Ones(2, 4), 4, 0, -1.0), attend::shape_error);
}

}  // namespace
