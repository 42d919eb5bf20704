// softmax of an integer matrix: attend computes in float or double only.
// Expected error: attend: unsupported scalar type
#include <attend/attend.hpp>

attend::Matrix<int> call(const Eigen::MatrixXi& scores) { return attend::softmax(scores); }
