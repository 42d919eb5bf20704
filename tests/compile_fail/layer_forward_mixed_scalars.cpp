// MultiHeadAttention<float>::forward of a double input: the input's scalar type must be the layer's.
// Expected error: attend: all matrix arguments must have the same scalar type
#include <attend/attend.hpp>

attend::Matrix<float> call(const attend::MultiHeadAttention<float>& layer, const attend::Matrix<double>& x) {
  return layer.forward(x);
}
