// multi_head_attention of int matrices: attend computes in float or double only.
// Expected error: attend: unsupported scalar type
#include <attend/attend.hpp>

attend::Matrix<int> call(const attend::Matrix<int>& q, const attend::Matrix<int>& k, const attend::Matrix<int>& v) {
  return attend::multi_head_attention(q, k, v, attend::Heads{2, 2});
}
