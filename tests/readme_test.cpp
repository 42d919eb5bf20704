// The README's code snippets, filled in with data, so they keep compiling and meaning what they say.
#include <gtest/gtest.h>

#include <attend/attend.hpp>
#include <random>
#include <vector>

#include "test_util.hpp"

using attend_test::max_abs_diff;
using attend_test::random_matrix;

TEST(Readme, KernelSnippets) {
  std::mt19937 rng(50);
  const int L = 40, n = 15;
  const attend::Matrix<float> q = random_matrix<float>(L, 32 * 4, rng), k = random_matrix<float>(L, 8 * 4, rng);
  const attend::Matrix<float> v = random_matrix<float>(L, 8 * 4, rng);

  attend::Options o;
  o.mask = attend::Mask::causal();
  o.scale = 0.125;
  o.softcap = 30;
  attend::Matrix<float> out = attend::multi_head_attention(q, k, v, attend::Heads{32, 8}, o);
  EXPECT_LE(max_abs_diff(out, attend::reference::multi_head_attention(q, k, v, attend::Heads{32, 8}, o)), 2e-5);

  const attend::Matrix<float> q8 = q.leftCols(8 * 4), k2 = k.leftCols(2 * 4), v2 = v.leftCols(2 * 4);
  auto a = attend::multi_head_attention_with_lse(q8, k2.topRows(n), v2.topRows(n), attend::Heads{8, 2});
  auto b = attend::multi_head_attention_with_lse(q8, k2.bottomRows(L - n), v2.bottomRows(L - n), attend::Heads{8, 2});
  attend::Matrix<float> merged = attend::merge_attention(a, b).out;
  EXPECT_LE(max_abs_diff(merged, attend::multi_head_attention(q8, k2, v2, {8, 2})), 2e-5);
}

TEST(Readme, LayerSnippets) {
  std::mt19937 rng(51);
  attend::MultiHeadAttention<float> mha(/*d_model*/ 512, /*heads*/ 8, /*kv_heads*/ 2, /*head_dim*/ 64);
  mha.q_proj.weight = random_matrix<float>(8 * 64, 512, rng, 0.05);
  mha.k_proj.weight = random_matrix<float>(2 * 64, 512, rng, 0.05);
  mha.v_proj.weight = random_matrix<float>(2 * 64, 512, rng, 0.05);
  mha.o_proj.weight = random_matrix<float>(512, 8 * 64, rng, 0.05);
  const attend::Matrix<float> x = random_matrix<float>(12, 512, rng), encoder_out = random_matrix<float>(20, 512, rng);
  attend::Matrix<float> y = mha.forward(x, {std::nullopt, attend::Mask::causal()});
  attend::Matrix<float> z = mha.forward(x, encoder_out);
  EXPECT_EQ(z.rows(), 12);

  const std::vector<attend::Matrix<float>> chunks = {x.topRows(5), x.middleRows(5, 1), x.bottomRows(6)};
  attend::KVCache<float> cache;
  attend::Matrix<float> last;
  for (const auto& chunk : chunks) last = mha.forward(chunk, cache, {std::nullopt, attend::Mask::causal()});
  EXPECT_LE(max_abs_diff(last, y.bottomRows(6)), 1e-4);
  EXPECT_EQ(mha.kv_cache_elements_per_token(), 256u);

  attend::MultiHeadAttention<float> gqa = attend::to_grouped(mha, 2);
  EXPECT_EQ(gqa.kv_heads, 2);
  Eigen::VectorXd s = attend::kv_singular_values(mha);
  EXPECT_EQ(s.size(), 512);  // min(8 heads * 2 * 64 rows, 512 columns)
  attend::MultiHeadLatentAttention<float> mla = attend::to_latent(mha, 128);
  EXPECT_EQ(mla.kv_cache_elements_per_token(), 128u);  // vs 256 for the GQA source: rank([W_k; W_v]) <= 256
  attend::MultiHeadLatentAttention<float> exact = attend::to_latent(mha, 256);
  EXPECT_LE(max_abs_diff(exact.forward(x, {std::nullopt, attend::Mask::causal()}), y), 1e-4);
}

TEST(Readme, LatentSnippet) {
  attend::MultiHeadLatentAttention<float>::Config c;
  c.d_model = 2048;
  c.heads = 16;
  c.q_lora_rank = 0;
  c.kv_lora_rank = 512;
  c.qk_nope_head_dim = 128;
  c.qk_rope_head_dim = 64;
  c.v_head_dim = 128;
  attend::MultiHeadLatentAttention<float> mla(c);
  std::mt19937 rng(52);
  const attend::Matrix<float> x = random_matrix<float>(3, 2048, rng);
  attend::Matrix<float> y = mla.forward(x, {std::nullopt, attend::Mask::causal()});
  attend::LatentCache<float> cache;
  y = mla.forward(x.topRows(1), cache, {std::nullopt, attend::Mask::causal()});
  EXPECT_EQ(mla.kv_cache_elements_per_token(), 512u + 64u);
  EXPECT_EQ(cache.size(), 1);
}

TEST(Readme, ServingSnippets) {
  std::mt19937 rng(53);
  const attend::Matrix<float> q = random_matrix<float>(130, 32 * 8, rng), k = random_matrix<float>(4481, 8 * 8, rng);
  const attend::Matrix<float> v = random_matrix<float>(4481, 8 * 8, rng);
  attend::Options o;
  o.mask = attend::Mask::causal();
  attend::Ragged batch{{0, 1, 2, 130}, {0, 4096, 4353, 4481}};  // two decodes, a 128-token prefill
  attend::Matrix<float> out = attend::multi_head_attention(q, k, v, batch, attend::Heads{32, 8}, o);
  auto r = attend::multi_head_attention_with_lse(q, k, v, batch, attend::Heads{32, 8}, o);
  attend::multi_head_attention_into(q, k, v, batch, attend::Heads{32, 8}, out, o);
  EXPECT_EQ(r.out, out);
  EXPECT_EQ(out.row(1), attend::multi_head_attention(q.row(1), k.middleRows(4096, 257), v.middleRows(4096, 257),
                                                     attend::Heads{32, 8}, o));

  attend::MultiHeadAttention<float> mha = attend_test::random_mha<float>(64, 4, 2, 16, rng);
  const attend::Matrix<float> x = random_matrix<float>(58, 64, rng);
  attend::PagedKVCache<float> cache;  // one per layer
  int a = cache.add_sequence(), b = cache.add_sequence();
  attend::Matrix<float> y = mha.forward(x, cache, {a, b}, {0, 57, 58}, {std::nullopt, attend::Mask::causal()});
  cache.release(a);  // a is done; its pages serve the next requests
  attend::KVCache<float> alone;
  EXPECT_LE(max_abs_diff(y.topRows(57), mha.forward(x.topRows(57), alone, {std::nullopt, attend::Mask::causal()})),
            1e-5);
  EXPECT_EQ(cache.length(b), 1);
  EXPECT_EQ(cache.pages_in_use(), 1);
}

TEST(Readme, GradientSnippets) {
  std::mt19937 rng(53);
  const int L = 24;
  const attend::Matrix<float> q = random_matrix<float>(L, 8 * 4, rng), k = random_matrix<float>(L, 2 * 4, rng);
  const attend::Matrix<float> v = random_matrix<float>(L, 2 * 4, rng), dout = random_matrix<float>(L, 8 * 4, rng);
  attend::Options o;
  o.mask = attend::Mask::causal();

  auto f = attend::multi_head_attention_with_lse(q, k, v, attend::Heads{8, 2}, o);  // keep out and lse
  attend::AttentionGradients<float> g =
      attend::multi_head_attention_backward(q, k, v, f.out, f.lse, dout, attend::Heads{8, 2}, o);
  EXPECT_EQ(g.dq.rows(), L);
  EXPECT_EQ(g.dq.cols(), 8 * 4);
  EXPECT_EQ(g.dk.cols(), 2 * 4);
  EXPECT_EQ(g.dv.cols(), 2 * 4);

  attend::MultiHeadAttention<float> mha = attend_test::random_mha<float>(16, 4, 2, 4, rng);
  const attend::Matrix<float> x = random_matrix<float>(5, 16, rng), ctx = random_matrix<float>(7, 16, rng);
  const attend::Matrix<float> dy = random_matrix<float>(5, 16, rng);
  auto lg = mha.backward(x, dy, o);
  auto cg = mha.backward(x, ctx, dy, o);
  EXPECT_EQ(lg.dx.rows(), 5);
  EXPECT_EQ(lg.q_proj.weight.rows(), 16);
  EXPECT_EQ(lg.q_proj.bias.size(), 16);
  EXPECT_EQ(cg.dcontext.rows(), 7);

  attend::MultiHeadLatentAttention<float> mla({16, 2, 0, 6, 4, 2, 4});
  mla.kv_a_layernorm.weight = attend::Vector<float>::Ones(6);
  auto mg = mla.backward(x, dy, o);
  EXPECT_EQ(mg.dx.rows(), 5);
  EXPECT_EQ(mg.kv_b_proj.weight.rows(), mla.kv_b_proj.weight.rows());
}
