// A downstream program: includes the umbrella header and runs one attention call.
#include <attend/attend.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>

int main() {
  attend::Matrix<float> q(2, 2), k(2, 2), v(2, 2);
  q << 1, 0, 0, 1;
  k << 1, 0, 0, 1;
  v << 1, 2, 3, 4;
  const attend::Matrix<float> out = attend::scaled_dot_product_attention(q, k, v);

  std::printf("attend %s\n", attend::version_string);
  std::printf("output:\n");
  for (Eigen::Index i = 0; i < out.rows(); ++i) {
    std::printf("  %.6f %.6f\n", static_cast<double>(out(i, 0)), static_cast<double>(out(i, 1)));
  }

  // Scores are I / sqrt(2): each query weighs its own key by a = e^s / (e^s + 1), s = 1/sqrt(2).
  const double s = 1.0 / std::sqrt(2.0);
  const double a = std::exp(s) / (std::exp(s) + 1.0);
  const double expected[2][2] = {{a * 1 + (1 - a) * 3, a * 2 + (1 - a) * 4},
                                 {(1 - a) * 1 + a * 3, (1 - a) * 2 + a * 4}};
  if (out.rows() != 2 || out.cols() != 2) {
    std::printf("FAIL: output is %ldx%ld, expected 2x2\n", static_cast<long>(out.rows()),
                static_cast<long>(out.cols()));
    return 1;
  }
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      if (std::abs(static_cast<double>(out(i, j)) - expected[i][j]) > 1e-5) {
        std::printf("FAIL: out(%d,%d) = %.7f, expected %.7f\n", i, j, static_cast<double>(out(i, j)), expected[i][j]);
        return 1;
      }
    }
  }
  if (std::strcmp(attend::version_string, ATTEND_VERSION_STRING) != 0) {
    std::printf("FAIL: version_string mismatch\n");
    return 1;
  }
  std::printf("OK\n");
  return 0;
}
