// One test per argument rule of the contract: each throws attend::shape_error before any work, naming the
// function, the argument and the shapes.
#include <gtest/gtest.h>

#include <attend/attend.hpp>
#include <functional>
#include <limits>
#include <string>

#include "test_util.hpp"

using attend::Heads;
using attend::Mask;
using attend::Matrix;
using attend::Options;
using attend_test::expect_error;

namespace {

const Matrix<float> q44 = Matrix<float>::Ones(4, 4), k54 = Matrix<float>::Ones(5, 4), v52 = Matrix<float>::Ones(5, 2);

TEST(Errors, ShapeErrorIsAnInvalidArgument) {
  static_assert(std::is_base_of_v<std::invalid_argument, attend::shape_error>);
}

TEST(Errors, KeyWidthMustMatchQuery) {
  expect_error([] { attend::scaled_dot_product_attention(q44, Matrix<float>::Ones(5, 3), v52); },
               {"attend::scaled_dot_product_attention", "k has 3 columns", "q [4, 4]", "k [5, 3]"});
  expect_error([] { attend::attention_weights(q44, Matrix<float>::Ones(5, 3)); },
               {"attend::attention_weights", "k has 3 columns"});
}

TEST(Errors, ValueRowsMustMatchKeys) {
  expect_error([] { attend::scaled_dot_product_attention(q44, k54, Matrix<float>::Ones(6, 2)); },
               {"scaled_dot_product_attention", "v has 6 rows", "k [5, 4]", "v [6, 2]"});
}

TEST(Errors, HeadDimensionMustBePositive) {
  expect_error([] { attend::scaled_dot_product_attention(Matrix<float>(4, 0), Matrix<float>(5, 0), v52); },
               {"scaled_dot_product_attention", "q is [4, 0]"});
}

TEST(Errors, BiasMustBeLqByLk) {
  expect_error([] { attend::scaled_dot_product_attention(q44, k54, v52, Matrix<float>::Zero(4, 4)); },
               {"scaled_dot_product_attention", "bias is [4, 4]", "expected [Lq, Lk] = [4, 5]"});
  expect_error([] { attend::attention_weights(q44, k54, Matrix<float>::Zero(5, 5)); },
               {"attention_weights", "bias is [5, 5]"});
}

TEST(Errors, ScaleMustBeFinitePositive) {
  for (double s : {0.0, -1.0, std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN()}) {
    Options o;
    o.scale = s;
    expect_error([&] { attend::scaled_dot_product_attention(q44, k54, v52, o); }, {"options.scale"});
    expect_error(
        [&] {
          attend::multi_head_attention(q44, k54, v52, Heads{2, 2}, o);
        },
        {"multi_head_attention", "options.scale"});
  }
}

TEST(Errors, SoftcapMustBeNonNegative) {
  Options o;
  o.softcap = -1;
  expect_error([&] { attend::scaled_dot_product_attention(q44, k54, v52, o); }, {"options.softcap is -1"});
  o.softcap = std::numeric_limits<double>::quiet_NaN();
  expect_error([&] { attend::attention_weights(q44, k54, o); }, {"options.softcap"});
}

TEST(Errors, WindowMustBeAtLeastOne) {
  for (int w : {0, -3}) {
    Options o;
    o.mask = Mask::sliding_window(w);
    expect_error([&] { attend::scaled_dot_product_attention(q44, k54, v52, o); },
                 {"scaled_dot_product_attention", "sliding_window(" + std::to_string(w) + ")"});
    expect_error([&] { attend::grouped_query_attention(q44, Matrix<float>::Ones(5, 2), v52, 2, 1, o); },
                 {"grouped_query_attention", "window"});
  }
}

TEST(Errors, HeadCountsMustBePositiveAndDivide) {
  expect_error([] { attend::multi_head_attention(q44, k54, v52, Heads{0, 1}); }, {"heads.query is 0"});
  expect_error([] { attend::multi_head_attention(q44, k54, v52, Heads{2, 0}); }, {"heads.kv is 0"});
  expect_error([] { attend::multi_head_attention(q44, k54, v52, Heads{-2, 1}); }, {"heads.query is -2"});
  expect_error([] { attend::grouped_query_attention(q44, k54, v52, 4, 3); },
               {"grouped_query_attention", "query heads (4) are not a multiple of kv heads (3)"});
  expect_error([] { attend::multi_query_attention(q44, k54, v52, 3); },
               {"multi_query_attention", "q has 4 columns", "query heads (3)"});
  expect_error([] { attend::multi_head_attention(q44, k54, v52, Heads{8, 8}); }, {"q has 4 columns"});
}

TEST(Errors, KeyAndValueWidthsMustMatchKvHeads) {
  // The contract's own example.
  expect_error(
      [] {
        attend::multi_head_attention(Matrix<float>::Ones(3, 8 * 32), Matrix<float>::Ones(5, 48),
                                     Matrix<float>::Ones(5, 64), Heads{8, 2});
      },
      {"attend::multi_head_attention: k has 48 columns, expected kv heads (2) * head dim (32) = 64", "k [5, 48]"});
  expect_error(
      [] {
        attend::multi_head_attention(q44, k54, Matrix<float>::Ones(5, 3), Heads{2, 2});
      },
      {"v has 3 columns, expected a multiple of kv heads (2)", "v [5, 3]"});
  expect_error(
      [] {
        attend::multi_head_attention(q44, k54, Matrix<float>::Ones(4, 2), Heads{2, 2});
      },
      {"v has 4 rows", "k [5, 4]"});
}

TEST(Errors, IntoOutputMustHaveTheResultShape) {
  Matrix<float> out(4, 3);
  expect_error([&] { attend::scaled_dot_product_attention_into(q44, k54, v52, out); },
               {"scaled_dot_product_attention_into", "out is [4, 3], expected [4, 2]"});
  expect_error(
      [&] {
        attend::multi_head_attention_into(q44, k54, v52, Heads{2, 2}, out);
      },
      {"multi_head_attention_into", "out is [4, 3]"});
}

TEST(Errors, InputsAreUnchangedAfterAnError) {
  const Matrix<float> q = q44, k = k54, v = v52;
  Matrix<float> out = Matrix<float>::Constant(4, 2, 3.f);
  EXPECT_THROW(attend::scaled_dot_product_attention_into(q, k, Matrix<float>::Ones(6, 2), out), attend::shape_error);
  EXPECT_EQ(out, Matrix<float>::Constant(4, 2, 3.f));
  EXPECT_EQ(q, q44);
  EXPECT_EQ(k, k54);
}

}  // namespace
