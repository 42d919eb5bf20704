// scaled_dot_product_attention with a float q and double k, v: the scalar types of all arguments must agree.
// Expected error: attend: all matrix arguments must have the same scalar type
#include <attend/attend.hpp>

attend::Matrix<float> call(const attend::Matrix<float>& q, const attend::Matrix<double>& k,
                           const attend::Matrix<double>& v) {
  return attend::scaled_dot_product_attention(q, k, v);
}
