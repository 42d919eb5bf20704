// Thread safety: one MultiHeadAttention and one MultiHeadLatentAttention layer (const, shared) used from several
// std::threads at once, each thread with its own caches, give bit for bit the results of serial use. The kernels
// and conversions are exercised the same way. Run under ThreadSanitizer by the tsan preset
// (scripts/sanitize.sh --tsan), which builds without OpenMP so that only these threads run concurrently.
#include <gtest/gtest.h>

#include <atomic>
#include <attend/attend.hpp>
#include <random>
#include <thread>
#include <vector>

#include "test_util.hpp"

using attend::Index;
using attend::Mask;
using attend::Matrix;
using attend::Options;
using attend::Vector;
using attend_test::random_matrix;

namespace {

constexpr int kThreads = 4;
constexpr int kRounds = 3;  // each thread repeats its work, so the threads overlap however they are scheduled

using Mha = attend::MultiHeadAttention<float>;
using Mla = attend::MultiHeadLatentAttention<float>;

template <class T>
void randomize(attend::Linear<T>& lin, std::mt19937& rng) {
  lin.weight = random_matrix<T>(lin.weight.rows(), lin.weight.cols(), rng, 0.3);
  lin.bias = random_matrix<T>(lin.weight.rows(), 1, rng, 0.3);
}

Mha make_mha(std::mt19937& rng) {
  Mha m(32, 4, 2, 8);
  for (auto* lin : {&m.q_proj, &m.k_proj, &m.v_proj, &m.o_proj}) randomize(*lin, rng);
  return m;
}

Mla make_mla(std::mt19937& rng) {
  Mla m(Mla::Config{32, 4, 16, 12, 8, 4, 8});
  for (auto* lin : {&m.q_a_proj, &m.q_b_proj, &m.kv_a_proj_with_mqa, &m.o_proj}) randomize(*lin, rng);
  m.kv_b_proj.weight = random_matrix<float>(m.kv_b_proj.weight.rows(), m.kv_b_proj.weight.cols(), rng, 0.3);
  m.q_a_layernorm.weight = Vector<float>::Constant(16, 1.2f);
  m.kv_a_layernorm.weight = Vector<float>::Constant(12, 0.8f);
  return m;
}

// Everything one worker computes from its own inputs with the shared layers.
struct Results {
  std::vector<Matrix<float>> outputs;
  bool operator==(const Results& o) const { return outputs == o.outputs; }
};

Options causal() {
  Options o;
  o.mask = Mask::causal();
  return o;
}

// The work of one thread: every layer path with fresh caches of its own, and the weight-free kernels.
Results work(const Mha& mha, const Mla& mla, const Matrix<float>& x, const Matrix<float>& ctx) {
  Results r;
  r.outputs.push_back(mha.forward(x, causal()));
  r.outputs.push_back(mha.forward(x, ctx));
  attend::KVCache<float> cache;
  for (Index i = 0; i < x.rows(); i += 5)
    r.outputs.push_back(mha.forward(x.middleRows(i, std::min<Index>(5, x.rows() - i)), cache, causal()));
  r.outputs.push_back(mla.forward(x, causal()));
  attend::LatentCache<float> lcache;
  lcache.reserve(x.rows(), 12, 4);
  for (Index i = 0; i < x.rows(); i += 7)
    r.outputs.push_back(mla.forward(x.middleRows(i, std::min<Index>(7, x.rows() - i)), lcache, causal()));
  const Matrix<float> q = mha.q_proj(x), k = mha.k_proj(ctx), v = mha.v_proj(ctx);
  r.outputs.push_back(attend::multi_head_attention(q, k, v, attend::Heads{4, 2}));
  r.outputs.push_back(attend::scaled_dot_product_attention(q.leftCols(8), k.leftCols(8), v.leftCols(8), causal()));
  r.outputs.push_back(attend::to_grouped(mha, 1).forward(x));
  return r;
}

// Runs `body(t)` on kThreads threads released together.
template <class Body>
void run_together(Body body) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!go.load()) std::this_thread::yield();
      body(t);
    });
  while (ready.load() < kThreads) std::this_thread::yield();
  go.store(true);
  for (auto& th : threads) th.join();
}

TEST(ThreadSafety, SharedLayersWithSeparateCachesMatchSerialUse) {
  std::mt19937 rng(60);
  const Mha mha = make_mha(rng);
  const Mla mla = make_mla(rng);
  std::vector<Matrix<float>> xs, ctxs;
  for (int t = 0; t < kThreads; ++t) {
    xs.push_back(random_matrix<float>(24 + 3 * t, 32, rng));
    ctxs.push_back(random_matrix<float>(10 + t, 32, rng));
  }
  std::vector<Results> serial;
  for (int t = 0; t < kThreads; ++t) serial.push_back(work(mha, mla, xs[t], ctxs[t]));

  std::vector<std::vector<Results>> parallel(kThreads);
  run_together([&](int t) {
    for (int round = 0; round < kRounds; ++round) parallel[t].push_back(work(mha, mla, xs[t], ctxs[t]));
  });
  for (int t = 0; t < kThreads; ++t)
    for (int round = 0; round < kRounds; ++round)
      EXPECT_TRUE(parallel[t][round] == serial[t]) << "thread " << t << " round " << round;
}

// All threads on the very same input (same memory read at once): identical results.
TEST(ThreadSafety, SameInputFromEveryThread) {
  std::mt19937 rng(61);
  const Mha mha = make_mha(rng);
  const Mla mla = make_mla(rng);
  const Matrix<float> x = random_matrix<float>(30, 32, rng), ctx = random_matrix<float>(12, 32, rng);
  const Results serial = work(mha, mla, x, ctx);
  std::vector<Results> got(kThreads);
  run_together([&](int t) { got[t] = work(mha, mla, x, ctx); });
  for (int t = 0; t < kThreads; ++t) EXPECT_TRUE(got[t] == serial) << "thread " << t;
}

// Caches handed from thread to thread between steps (one decoding session moving across a pool) continue
// exactly as if one thread had done all the steps.
TEST(ThreadSafety, CachesMovedBetweenThreadsContinueExactly) {
  std::mt19937 rng(62);
  const Mha mha = make_mha(rng);
  const Mla mla = make_mla(rng);
  const Matrix<float> x = random_matrix<float>(12, 32, rng);
  attend::KVCache<float> serial_cache;
  attend::LatentCache<float> serial_lcache;
  std::vector<Matrix<float>> serial;
  for (Index i = 0; i < 12; ++i) {
    serial.push_back(mha.forward(x.row(i), serial_cache, causal()));
    serial.push_back(mla.forward(x.row(i), serial_lcache, causal()));
  }
  attend::KVCache<float> cache;
  attend::LatentCache<float> lcache;
  std::vector<Matrix<float>> moved;
  for (Index i = 0; i < 12; ++i) {
    std::thread th([&] {
      moved.push_back(mha.forward(x.row(i), cache, causal()));
      moved.push_back(mla.forward(x.row(i), lcache, causal()));
    });
    th.join();
  }
  EXPECT_EQ(moved, serial);
}

}  // namespace
