// MLA decode benchmarks at DeepSeek-V2-Lite sizes (hidden 2048, 16 heads, kv_lora_rank 512, qk_nope 128,
// qk_rope 64, v 128, no query compression): one new token over a latent cache of S tokens.
//
//   mla_absorbed_layer/S:<S>/real_time      MultiHeadLatentAttention::forward(x [1, 2048], LatentCache of S tokens):
//                                           projections, W_UK/W_UV absorbed, MQA over the latent cache (the cache
//                                           is restored to S tokens outside the timing before every call)
//   mla_decompressed_layer/S:<S>/real_time  the textbook decode from the same latent cache: q_proj, new latent,
//                                           per-head K/V rebuilt for all S + 1 tokens through kv_b_proj, naive
//                                           per-head attention, o_proj (implemented here with Eigen)
//   mla_absorbed_core/S:<S>/real_time       the attention alone: attend::multi_head_attention over the latent
//                                           cache as MQA (q [1, 16*576], keys [S, 576], values [S, 512])
//   mha_full_kv_core/S:<S>/real_time        the alternative of caching decompressed K/V: attention alone over
//                                           K [S, 16*192], V [S, 16*128] (MHA, 16 heads)
//
// Counters: GBps (cache bytes read per token per second: latent cache S * (512 + 64) * 4 bytes for the MLA
// variants, S * 16 * (192 + 128) * 4 for the full K/V cache), cache_MiB (those bytes), tok_per_s, omp_threads;
// the two attention-only variants also GFLOPS (2 * S * heads * (key width + value width) per token: absorbed
// MLA is MQA with keys of 576 and values of 512 per head, far more arithmetic per cached byte than MHA);
// the decompressed layer also reports rel_diff, its largest difference from the absorbed layer's output
// relative to that output's largest entry (checked once, outside the timing).

#include <map>

#include "bench_common.hpp"

namespace {

using bench::Index;
using bench::Mat;
using Mla = attend::MultiHeadLatentAttention<float>;

Mla::Config lite_config() {
  Mla::Config c;
  c.d_model = 2048;
  c.heads = 16;
  c.q_lora_rank = 0;
  c.kv_lora_rank = 512;
  c.qk_nope_head_dim = 128;
  c.qk_rope_head_dim = 64;
  c.v_head_dim = 128;
  return c;
}

/// A layer with random weights (uniform, scaled by 1/sqrt(fan-in)), a latent cache prefilled with S tokens
/// (capacity S + 1, so one decode step never reallocates) and the next token's input.
struct MlaCase {
  Mla layer{lite_config()};
  attend::LatentCache<float> cache;
  Mat x;  // [1, d_model]
};

const MlaCase& mla_case(Index tokens) {
  static std::map<Index, std::unique_ptr<MlaCase>> cases;
  auto& slot = cases[tokens];
  if (!slot) {
    slot = std::make_unique<MlaCase>();
    MlaCase& m = *slot;
    const Mla::Config c = m.layer.config;
    const auto init = [](attend::Linear<float>& lin, std::uint32_t seed) {
      lin.weight =
          bench::random_matrix(lin.weight.rows(), lin.weight.cols(), seed, 1.0f / std::sqrt(float(lin.weight.cols())));
    };
    init(m.layer.q_proj, 21);
    init(m.layer.kv_a_proj_with_mqa, 22);
    init(m.layer.kv_b_proj, 23);
    init(m.layer.o_proj, 24);
    m.layer.kv_a_layernorm.weight = attend::Vector<float>::Ones(c.kv_lora_rank);
    // Prefill: the cache holds [normalized latent, roped key] whatever the attention does, so a window of 1
    // (each token sees itself) fills it without paying for a causal prefill.
    m.cache.reserve(tokens + 1, c.kv_lora_rank, c.qk_rope_head_dim);
    attend::Options fill;
    fill.mask = attend::Mask::sliding_window(1);
    const Mat prompt = bench::random_matrix(tokens, c.d_model, 25);
    m.layer.forward(prompt, m.cache, fill);
    m.x = bench::random_matrix(1, c.d_model, 26);
  }
  return *slot;
}

attend::Options decode_options() {
  attend::Options o;
  o.mask = attend::Mask::causal();
  return o;
}

void cache_counters(benchmark::State& state, double bytes) {
  bench::common_counters(state);
  state.counters["GBps"] = bench::rate(1e-9 * bytes);
  state.counters["cache_MiB"] = bytes / (1 << 20);
  state.counters["tok_per_s"] = bench::rate(1.0);
}

double latent_bytes(Index tokens) {
  const Mla::Config c = lite_config();
  return double(tokens) * (c.kv_lora_rank + c.qk_rope_head_dim) * sizeof(float);
}

void mla_absorbed_layer(benchmark::State& state) {
  const Index tokens = state.range(0);
  const MlaCase& m = mla_case(tokens);
  const attend::Options options = decode_options();
  attend::LatentCache<float> cache = m.cache;
  for (auto _ : state) {
    state.PauseTiming();
    cache = m.cache;  // back to S tokens: same storage size, so a plain copy, no allocation
    state.ResumeTiming();
    Mat y = m.layer.forward(m.x, cache, options);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  cache_counters(state, latent_bytes(tokens));
}

/// Workspace of the textbook decode, allocated once.
struct Decompressed {
  Mat latent;  // [S + 1, r + rope]: the latent cache plus the new token
  Mat kv;      // [S + 1, H * (nope + v)]: kv_b_proj of every cached latent
  Mat k, v;    // [S + 1, H * (nope + rope)], [S + 1, H * v]
  Mat scores, heads_out;
};

/// One decode step of token x at position S the way a direct implementation of the MLA equations does it:
/// every head's keys and values are rebuilt from the whole latent cache, then ordinary multi-head attention.
Mat decompressed_decode(const Mla& layer, const Mat& x, Index tokens, Decompressed& w) {
  const Mla::Config& c = layer.config;
  const Index h_count = c.heads, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim, dv = c.v_head_dim;
  const Index r = c.kv_lora_rank, qk = nope + rope, n = tokens + 1;

  // Query, with RoPE on each head's rope part at position S.
  Mat q = x * layer.q_proj.weight.transpose();
  Mat q_rope(1, h_count * rope);
  for (Index h = 0; h < h_count; ++h) q_rope.middleCols(h * rope, rope) = q.middleCols(h * qk + nope, rope);
  q_rope = attend::apply_rope(q_rope, rope, tokens, c.rope_theta, c.rope_layout);
  for (Index h = 0; h < h_count; ++h) q.middleCols(h * qk + nope, rope) = q_rope.middleCols(h * rope, rope);

  // The new token's latent and shared rope key, appended.
  Mat kv_a = x * layer.kv_a_proj_with_mqa.weight.transpose();
  w.latent.row(tokens).head(r) = layer.kv_a_layernorm(kv_a.leftCols(r));
  w.latent.row(tokens).tail(rope) = attend::apply_rope(kv_a.rightCols(rope), rope, tokens, c.rope_theta, c.rope_layout);

  // Decompress: per-head k_nope and v of every token, then the keys [k_nope_h, k_rope].
  w.kv.noalias() = w.latent.topRows(n).leftCols(r) * layer.kv_b_proj.weight.transpose();
  for (Index h = 0; h < h_count; ++h) {
    w.k.middleCols(h * qk, nope) = w.kv.middleCols(h * (nope + dv), nope);
    w.k.middleCols(h * qk + nope, rope) = w.latent.topRows(n).rightCols(rope);
    w.v.middleCols(h * dv, dv) = w.kv.middleCols(h * (nope + dv) + nope, dv);
  }
  // Scale 1/sqrt(nope + rope) = 1/sqrt(head dim of q and k), as the layer's default.
  bench::naive_attention(q, w.k, w.v, c.heads, c.heads, /*causal=*/true, w.scores, w.heads_out);
  return w.heads_out * layer.o_proj.weight.transpose();
}

void mla_decompressed_layer(benchmark::State& state) {
  const Index tokens = state.range(0);
  const MlaCase& m = mla_case(tokens);
  const Mla::Config& c = m.layer.config;
  const Index n = tokens + 1, h_count = c.heads;
  Decompressed w;
  w.latent.resize(n, c.kv_lora_rank + c.qk_rope_head_dim);
  w.latent.topRows(tokens) = m.cache.entries();
  w.kv.resize(n, h_count * (c.qk_nope_head_dim + c.v_head_dim));
  w.k.resize(n, h_count * (c.qk_nope_head_dim + c.qk_rope_head_dim));
  w.v.resize(n, h_count * c.v_head_dim);

  // The baseline must compute what the layer computes.
  attend::LatentCache<float> cache = m.cache;
  const Mat expected = m.layer.forward(m.x, cache, decode_options());
  const Mat got = decompressed_decode(m.layer, m.x, tokens, w);
  const double rel_diff = (got - expected).cwiseAbs().maxCoeff() / expected.cwiseAbs().maxCoeff();

  for (auto _ : state) {
    Mat y = decompressed_decode(m.layer, m.x, tokens, w);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  cache_counters(state, latent_bytes(tokens));
  state.counters["rel_diff"] = rel_diff;
}

void mla_absorbed_core(benchmark::State& state) {
  const Index tokens = state.range(0);
  const MlaCase& m = mla_case(tokens);
  const Mla::Config& c = m.layer.config;
  const Index width = c.kv_lora_rank + c.qk_rope_head_dim;
  const Mat q = bench::random_matrix(1, c.heads * width, 27);
  attend::Options options = decode_options();
  options.scale = 1.0 / std::sqrt(double(c.qk_nope_head_dim + c.qk_rope_head_dim));
  for (auto _ : state) {
    Mat out = attend::multi_head_attention(q, m.cache.entries(), m.cache.latent(), attend::Heads{c.heads, 1}, options);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  cache_counters(state, latent_bytes(tokens));
  state.counters["GFLOPS"] = bench::rate(2e-9 * double(tokens) * c.heads * double(width + c.kv_lora_rank));
}

void mha_full_kv_core(benchmark::State& state) {
  const Index tokens = state.range(0);
  const Mla::Config c = lite_config();
  const Index qk = c.qk_nope_head_dim + c.qk_rope_head_dim;
  const bench::Inputs& in = bench::inputs(1, tokens, c.heads * qk, c.heads * qk, c.heads * c.v_head_dim);
  const attend::Options options = decode_options();
  for (auto _ : state) {
    Mat out = attend::multi_head_attention(in.q, in.k, in.v, attend::Heads{c.heads, c.heads}, options);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  cache_counters(state, double(tokens) * c.heads * (qk + c.v_head_dim) * sizeof(float));
  state.counters["GFLOPS"] = bench::rate(2e-9 * double(tokens) * c.heads * double(qk + c.v_head_dim));
}

void cache_args(benchmark::internal::Benchmark* b) {
  b->ArgName("S")->Arg(1024)->Arg(4096)->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(mla_absorbed_layer)->Apply(cache_args);
BENCHMARK(mla_decompressed_layer)->Apply(cache_args);
BENCHMARK(mla_absorbed_core)->Apply(cache_args);
BENCHMARK(mha_full_kv_core)->Apply(cache_args);

void register_extra(int&, char**) {}

}  // namespace

ATTEND_BENCH_MAIN(register_extra)
