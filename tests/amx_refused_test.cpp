// When Linux refuses the process the AMX tile state, the 16-bit kernels fall back to the next path instead of
// crashing. This program refuses it to itself: before main() (and so before any attend call) it installs a seccomp
// filter under which arch_prctl(ARCH_REQ_XCOMP_PERM, ...) fails with EPERM, as it does on a kernel or container
// that forbids AMX. A separate program, because the permission, once granted, is kept by the process and inherited
// by its children.
#include <gtest/gtest.h>

#include <attend/attend.hpp>
#include <random>
#include <string>

#include "test_util.hpp"

#if defined(__linux__) && defined(__x86_64__)
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>

namespace {

bool refuse_amx() {
  constexpr unsigned kArchReqXcompPerm = 0x1023;
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_arch_prctl, 0, 3),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, args[0])),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kArchReqXcompPerm, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog program{static_cast<unsigned short>(sizeof filter / sizeof filter[0]), filter};
  return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) == 0;
}

const bool g_refused = refuse_amx();

TEST(AmxRefused, TheRequestFailsAndBf16KernelsFallBackToTheNextPath) {
  ASSERT_TRUE(g_refused) << "could not install the seccomp filter";
  // The filter works: the request itself now fails.
  EXPECT_EQ(syscall(SYS_arch_prctl, 0x1023, 18), -1);
  EXPECT_FALSE(attend::detail::amx_permitted());
  const std::string path = attend::bf16_path();
  EXPECT_NE(path, "amx");
  EXPECT_EQ(path, attend::detail::cpu().avx512bf16 ? "avx512bf16" : "generic");

  // And a prefill that would take AMX runs, correctly, on that path.
  std::mt19937 rng(90);
  using bf16 = Eigen::bfloat16;
  const attend::Matrix<bf16> q = attend_test::random_matrix<float>(300, 4 * 64, rng).cast<bf16>();
  const attend::Matrix<bf16> k = attend_test::random_matrix<float>(300, 2 * 64, rng).cast<bf16>();
  const attend::Matrix<bf16> v = attend_test::random_matrix<float>(300, 2 * 64, rng).cast<bf16>();
  attend::Options o;
  o.mask = attend::Mask::causal();
  const attend::Matrix<bf16> out = attend::multi_head_attention(q, k, v, attend::Heads{4, 2}, o);
  const attend::Matrix<double> want = attend::reference::multi_head_attention(q, k, v, attend::Heads{4, 2}, o);
  const double nmse = (out.cast<double>() - want).squaredNorm() / want.squaredNorm();
  EXPECT_LE(nmse, 1e-4);
}

}  // namespace
#else
TEST(AmxRefused, NeedsLinuxOnX86) { GTEST_SKIP() << "AMX permission requests are a Linux x86-64 matter"; }
#endif
