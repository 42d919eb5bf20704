// The tour: every attention variant of attend at one model size, side by side, on this machine.
//
//   MHA  multi-head attention            every query head has its own key/value head
//   GQA  grouped-query attention         groups of query heads share a key/value head
//   MQA  multi-query attention           all query heads share one key/value head
//   MLA  multi-head latent attention     DeepSeek-V2: the cache holds one small latent per token, and decoding
//                                        attends in the latent space (W_UK, W_UV absorbed), via LatentCache
//   GQA bf16 / fp16                      GQA with 16-bit storage: the kernel on bfloat16 (half) q, k, v, the
//                                        layer decoding through a KVCache<float, bfloat16 (half)>
//   GQA q8                               GQA over 8-bit keys and values (q8: int8 in blocks of 32 with a scale):
//                                        the kernel on quantize_q8(k, v), the layer through KVCache<float, q8>
//
// For each variant it measures
//   - the KV cache cost per token (what a decoder keeps for every past token, in float),
//   - prefill: the attention kernel alone (attend::multi_head_attention, causal) and the whole layer
//     (projections + attention + output projection), over `prefill` tokens,
//   - decode: the time for one new token through the layer with its cache holding `cache` tokens,
//   - the largest deviation from double precision: the kernel against attend::reference::multi_head_attention
//     (the textbook double-precision oracle) on the same inputs, the float layer against the same layer in
//     double (built from the same weights).
//
// Usage: tour [--quick]      (--quick: much smaller sizes, a few seconds; used by the ctest smoke test)
// Exit status 1 when a deviation exceeds its tolerance. Timings are medians of a few runs and vary.
#include <attend/attend.hpp>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "util.hpp"

namespace {

using attend::Index;
using attend::Matrix;

struct Sizes {
  int d_model, heads, head_dim, gqa_kv_heads;
  int prefill, cache, decode_steps, reps;
  int reference_rows;  // how many (last) query rows the slow double-precision reference recomputes
  // MLA, in DeepSeek-V2-Lite's proportions (its d_model 2048 with 16 heads: kv_lora_rank 512, rope 64, nope
  // 128, v 128), scaled to this width.
  int mla_rank, mla_rope, mla_nope, mla_v;
};

constexpr Sizes kFull{1024, 16, 64, 4, 2048, 4096, 16, 3, 256, 256, 32, 64, 64};
constexpr Sizes kQuick{256, 8, 32, 2, 256, 512, 8, 2, 64, 64, 16, 32, 32};

struct Row {
  std::string name, detail;
  std::size_t cache_elements = 0, bytes_per_element = sizeof(float);
  double cache_bytes = 0;  ///< bytes per token when not elements x bytes_per_element (q8: blocks with scales)
  double kernel_prefill_s = 0, kernel_gflops = 0, layer_prefill_s = 0, decode_s = 0;
  double kernel_dev = 0, layer_dev = 0, layer_ref_max = 0;
};

void progress(const char* fmt, const std::string& a, double t) {
  std::printf(fmt, a.c_str(), t);
  std::fflush(stdout);
}

template <class T>
attend::Linear<T> cast_linear(const attend::Linear<float>& l) {
  return {l.weight.cast<T>(), l.bias.cast<T>()};
}

template <class T>
attend::MultiHeadAttention<T> cast_layer(const attend::MultiHeadAttention<float>& f) {
  attend::MultiHeadAttention<T> d(f.d_model, f.heads, f.kv_heads, f.head_dim);
  d.q_proj = cast_linear<T>(f.q_proj);
  d.k_proj = cast_linear<T>(f.k_proj);
  d.v_proj = cast_linear<T>(f.v_proj);
  d.o_proj = cast_linear<T>(f.o_proj);
  return d;
}

template <class T>
attend::MultiHeadLatentAttention<T> cast_layer(const attend::MultiHeadLatentAttention<float>& f) {
  typename attend::MultiHeadLatentAttention<T>::Config c;
  c.d_model = f.config.d_model;
  c.heads = f.config.heads;
  c.q_lora_rank = f.config.q_lora_rank;
  c.kv_lora_rank = f.config.kv_lora_rank;
  c.qk_nope_head_dim = f.config.qk_nope_head_dim;
  c.qk_rope_head_dim = f.config.qk_rope_head_dim;
  c.v_head_dim = f.config.v_head_dim;
  c.rope_theta = f.config.rope_theta;
  c.rope_layout = f.config.rope_layout;
  attend::MultiHeadLatentAttention<T> d(c);
  d.q_proj = cast_linear<T>(f.q_proj);
  d.kv_a_proj_with_mqa = cast_linear<T>(f.kv_a_proj_with_mqa);
  d.kv_a_layernorm.weight = f.kv_a_layernorm.weight.cast<T>();
  d.kv_a_layernorm.eps = f.kv_a_layernorm.eps;
  d.kv_b_proj = cast_linear<T>(f.kv_b_proj);
  d.o_proj = cast_linear<T>(f.o_proj);
  return d;
}

/// The kernel part of a row: causal multi_head_attention over `prefill` tokens, its speed, and its deviation
/// from the double-precision reference on the last `reference_rows` query rows (with the bottom-right aligned
/// causal mask, those rows over all keys are exactly the last rows of the full call).
/// T: float, or a 16-bit type (the inputs rounded to it, the error then against double on the rounded inputs).
/// The kernel over 8-bit keys and values: float queries, k and v quantized (quantize_q8); the error against double
/// on the unquantized values, so it includes the quantization.
void measure_kernel_q8(Row& row, const Sizes& s, int kv_heads, std::mt19937& rng) {
  const Index L = s.prefill;
  const Matrix<float> q = ex::random_matrix(rng, L, Index(s.heads) * s.head_dim);
  const Matrix<float> k = ex::random_matrix(rng, L, Index(kv_heads) * s.head_dim);
  const Matrix<float> v = ex::random_matrix(rng, L, Index(kv_heads) * s.head_dim);
  const attend::Q8Matrix kq = attend::quantize_q8(k), vq = attend::quantize_q8(v);
  attend::Options causal;
  causal.mask = attend::Mask::causal();
  const attend::Heads heads{s.heads, kv_heads};
  Matrix<float> out;
  row.kernel_prefill_s =
      ex::median_seconds(s.reps, [&] { out = attend::multi_head_attention(q, kq, vq, heads, causal); });
  row.kernel_gflops = 0.5 * 4.0 * double(L) * double(L) * s.head_dim * s.heads / row.kernel_prefill_s * 1e-9;
  progress(" %-4s kernel prefill %.3f s", row.name, row.kernel_prefill_s);
  const Index n = std::min<Index>(s.reference_rows, L);
  const Matrix<double> ref = attend::reference::multi_head_attention(q.bottomRows(n), k, v, heads, causal);
  row.kernel_dev = ex::max_abs_diff(out.bottomRows(n), ref);
}

template <class T = float>
void measure_kernel(Row& row, const Sizes& s, int kv_heads, int d_qk, int d_v, std::mt19937& rng) {
  const Index L = s.prefill;
  const Matrix<T> q = ex::random_matrix(rng, L, Index(s.heads) * d_qk).cast<T>();
  const Matrix<T> k = ex::random_matrix(rng, L, Index(kv_heads) * d_qk).cast<T>();
  const Matrix<T> v = ex::random_matrix(rng, L, Index(kv_heads) * d_v).cast<T>();
  attend::Options causal;
  causal.mask = attend::Mask::causal();
  const attend::Heads heads{s.heads, kv_heads};

  Matrix<T> out;
  row.kernel_prefill_s =
      ex::median_seconds(s.reps, [&] { out = attend::multi_head_attention(q, k, v, heads, causal); });
  // Useful attention FLOPs: per head, q k^T is 2*L*L*d_qk and p v is 2*L*L*d_v (4*L*L*d when d_qk == d_v);
  // the causal mask halves them (the kernel skips the hidden half).
  const double flops = 0.5 * 2.0 * double(L) * double(L) * double(d_qk + d_v) * s.heads;
  row.kernel_gflops = flops / row.kernel_prefill_s * 1e-9;
  progress(" %-4s kernel prefill %.3f s", row.name, row.kernel_prefill_s);

  const Index n = std::min<Index>(s.reference_rows, L);
  const Matrix<T> q_last = q.bottomRows(n);
  const Matrix<double> ref = attend::reference::multi_head_attention(q_last, k, v, heads, causal);
  row.kernel_dev = ex::max_abs_diff(out.bottomRows(n).template cast<float>(), ref);
}

/// The layer part of a row: prefill time, deviation from the double layer, decode time per token over a cache
/// of `cache` tokens. Layer is MultiHeadAttention<float> or MultiHeadLatentAttention<float>; Cache its cache.
template <class Layer, class LayerD, class Cache>
void measure_layer(Row& row, const Sizes& s, const Layer& layer, const LayerD& layer_d, std::mt19937& rng) {
  attend::Options causal;
  causal.mask = attend::Mask::causal();
  const Matrix<float> x = ex::random_matrix(rng, s.prefill, s.d_model);

  Matrix<float> y;
  row.layer_prefill_s = ex::median_seconds(s.reps, [&] { y = layer.forward(x, causal); });
  progress(", layer prefill %.3f s", "", row.layer_prefill_s);
  const Matrix<double> y_d = layer_d.forward(x.cast<double>(), causal);
  row.layer_dev = ex::max_abs_diff(y, y_d);
  row.layer_ref_max = ex::max_abs(y_d);

  // Decode: fill the cache with `cache` tokens (one forward through the cache), then time single new tokens.
  const Matrix<float> context = ex::random_matrix(rng, s.cache, s.d_model);
  const Matrix<float> next = ex::random_matrix(rng, s.decode_steps, s.d_model);
  Cache cache;
  const double fill_s = ex::seconds([&] { layer.forward(context, cache, causal); });
  std::vector<double> per_token;
  for (int t = 0; t < s.decode_steps; ++t)
    per_token.push_back(ex::seconds([&] { layer.forward(next.row(t), cache, causal); }));
  row.decode_s = ex::median(per_token);
  progress(", cache fill %.3f s", "", fill_s);
  progress(", decode %.2f ms/token\n", "", row.decode_s * 1e3);
}

attend::MultiHeadAttention<float> random_mha(const Sizes& s, int kv_heads, std::mt19937& rng) {
  attend::MultiHeadAttention<float> m(s.d_model, s.heads, kv_heads, s.head_dim);
  m.q_proj.weight = ex::random_weight(rng, Index(s.heads) * s.head_dim, s.d_model);
  m.k_proj.weight = ex::random_weight(rng, Index(kv_heads) * s.head_dim, s.d_model);
  m.v_proj.weight = ex::random_weight(rng, Index(kv_heads) * s.head_dim, s.d_model);
  m.o_proj.weight = ex::random_weight(rng, s.d_model, Index(s.heads) * s.head_dim);
  return m;
}

attend::MultiHeadLatentAttention<float> random_mla(const Sizes& s, std::mt19937& rng) {
  attend::MultiHeadLatentAttention<float>::Config c;
  c.d_model = s.d_model;
  c.heads = s.heads;
  c.q_lora_rank = 0;  // as DeepSeek-V2-Lite: queries are not compressed
  c.kv_lora_rank = s.mla_rank;
  c.qk_nope_head_dim = s.mla_nope;
  c.qk_rope_head_dim = s.mla_rope;
  c.v_head_dim = s.mla_v;
  attend::MultiHeadLatentAttention<float> m(c);
  const Index h = s.heads;
  m.q_proj.weight = ex::random_weight(rng, h * (s.mla_nope + s.mla_rope), s.d_model);
  m.kv_a_proj_with_mqa.weight = ex::random_weight(rng, s.mla_rank + s.mla_rope, s.d_model);
  m.kv_a_layernorm.weight = attend::Vector<float>::Ones(s.mla_rank);
  m.kv_b_proj.weight = ex::random_weight(rng, h * (s.mla_nope + s.mla_v), s.mla_rank);
  m.o_proj.weight = ex::random_weight(rng, s.d_model, h * s.mla_v);
  return m;
}

std::string human_bytes(double b) {
  char buf[32];
  if (b >= 1 << 20)
    std::snprintf(buf, sizeof buf, "%.1f MiB", b / (1 << 20));
  else
    std::snprintf(buf, sizeof buf, "%.0f KiB", b / (1 << 10));
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      quick = true;
    } else {
      std::fprintf(stderr, "usage: %s [--quick]\n", argv[0]);
      return 2;
    }
  }
  const Sizes s = quick ? kQuick : kFull;
  const auto t_start = std::chrono::steady_clock::now();

  std::printf(
      "attend %s tour%s: d_model %d, %d query heads of %d; prefill %d tokens (causal), decode over a "
      "%d-token cache; float, %d thread%s\n\n",
      attend::version_string, quick ? " (--quick)" : "", s.d_model, s.heads, s.head_dim, s.prefill, s.cache,
      Eigen::nbThreads(), Eigen::nbThreads() == 1 ? "" : "s");

  std::mt19937 rng(2024);
  std::vector<Row> rows;
  const struct {
    const char* name;
    int kv;
  } grouped[] = {{"MHA", s.heads}, {"GQA", s.gqa_kv_heads}, {"MQA", 1}};

  for (const auto& g : grouped) {
    Row row;
    row.name = g.name;
    row.detail = std::to_string(s.heads) + " q / " + std::to_string(g.kv) + " kv heads";
    std::printf("  [%zu/7]", rows.size() + 1);
    const attend::MultiHeadAttention<float> layer = random_mha(s, g.kv, rng);
    row.cache_elements = layer.kv_cache_elements_per_token();
    measure_kernel(row, s, g.kv, s.head_dim, s.head_dim, rng);
    measure_layer<attend::MultiHeadAttention<float>, attend::MultiHeadAttention<double>, attend::KVCache<float>>(
        row, s, layer, cast_layer<double>(layer), rng);
    rows.push_back(row);
  }
  {
    Row row;
    row.name = "MLA";
    row.detail = "latent " + std::to_string(s.mla_rank) + " + rope " + std::to_string(s.mla_rope);
    std::printf("  [4/7]");
    const attend::MultiHeadLatentAttention<float> layer = random_mla(s, rng);
    row.cache_elements = layer.kv_cache_elements_per_token();
    // MLA's prefill runs the decompressed form: multi-head attention with d_qk = nope + rope, d_v = v.
    measure_kernel(row, s, s.heads, s.mla_nope + s.mla_rope, s.mla_v, rng);
    measure_layer<attend::MultiHeadLatentAttention<float>, attend::MultiHeadLatentAttention<double>,
                  attend::LatentCache<float>>(row, s, layer, cast_layer<double>(layer), rng);
    rows.push_back(row);
  }

  // GQA with 16-bit storage: the kernel on 16-bit inputs, the float layer over a 16-bit KV cache.
  const auto sixteen = [&](auto tag, const char* name) {
    using S = decltype(tag);
    Row row;
    row.name = name;
    row.detail = std::to_string(s.heads) + " q / " + std::to_string(s.gqa_kv_heads) + " kv, " + attend::bf16_path();
    std::printf("  [%zu/7]", rows.size() + 1);
    const attend::MultiHeadAttention<float> layer = random_mha(s, s.gqa_kv_heads, rng);
    row.cache_elements = layer.kv_cache_elements_per_token();
    row.bytes_per_element = sizeof(S);
    measure_kernel<S>(row, s, s.gqa_kv_heads, s.head_dim, s.head_dim, rng);
    measure_layer<attend::MultiHeadAttention<float>, attend::MultiHeadAttention<double>, attend::KVCache<float, S>>(
        row, s, layer, cast_layer<double>(layer), rng);
    rows.push_back(row);
  };
  sixteen(Eigen::bfloat16(), "bf16");
  sixteen(Eigen::half(), "fp16");
  {
    Row row;
    row.name = "q8";
    row.detail = std::to_string(s.heads) + " q / " + std::to_string(s.gqa_kv_heads) + " kv, 8-bit";
    std::printf("  [7/7]");
    const attend::MultiHeadAttention<float> layer = random_mha(s, s.gqa_kv_heads, rng);
    measure_kernel_q8(row, s, s.gqa_kv_heads, rng);
    measure_layer<attend::MultiHeadAttention<float>, attend::MultiHeadAttention<double>,
                  attend::KVCache<float, attend::q8>>(row, s, layer, cast_layer<double>(layer), rng);
    // 32 int8 and a half scale per 32 numbers.
    row.cache_elements = layer.kv_cache_elements_per_token();
    row.bytes_per_element = 0;
    row.cache_bytes = double(row.cache_elements) * 34.0 / 32.0;
    rows.push_back(row);
  }

  std::printf("\n%-4s %-22s %10s | %-28s %10s | %-20s\n", "", "", "KV cache", "prefill (causal)", "decode",
              "max |error| vs double");
  std::printf("%-4s %-22s %10s | %9s %9s %10s %10s | %9s %10s\n", "", "heads", "B/token", "kernel ms", "GFLOP/s",
              "layer ms", "ms/token", "kernel", "layer");
  for (const Row& r : rows) {
    const double bytes = r.bytes_per_element ? double(r.cache_elements * r.bytes_per_element) : r.cache_bytes;
    std::printf("%-4s %-22s %10.0f | %9.1f %9.1f %10.1f %10.3f | %9.1e %10.1e\n", r.name.c_str(), r.detail.c_str(),
                bytes, r.kernel_prefill_s * 1e3, r.kernel_gflops, r.layer_prefill_s * 1e3, r.decode_s * 1e3,
                r.kernel_dev, r.layer_dev);
  }
  std::printf(
      "\nKV cache: bytes a decoder keeps per past token (a %d-token context: MHA %s, MLA %s). bf16 and fp16 rows\n"
      "  store GQA's cache in 16 bits (KVCache<float, bfloat16 | half>) and run the kernel on 16-bit inputs, on the\n"
      "  path named (bf16_path(): amx, avx512bf16 or generic); their errors are against double on the rounded\n"
      "  inputs and include the 16-bit rounding of the output (kernel) and of the cache (layer). q8: keys and\n"
      "  values in 8 bits (blocks of 32 with a half scale), errors against double on the unquantized values.\n"
      "kernel: attend::multi_head_attention alone, causal; GFLOP/s counts useful attention FLOPs, 4*L*L*d per head\n"
      "  (2*L*L*(d_qk + d_v)), halved for the causal mask. layer: the whole layer (projections too); MLA's\n"
      "  prefill is its decompressed forward (d_qk = %d, d_v = %d), its decode the absorbed one over LatentCache.\n"
      "error: kernel vs attend::reference::multi_head_attention (double) on its last %d query rows; layer vs the\n"
      "  same weights in double, every row. Times are medians and vary from run to run.\n",
      s.cache, human_bytes(double(rows[0].cache_elements) * sizeof(float) * s.cache).c_str(),
      human_bytes(double(rows[3].cache_elements) * sizeof(float) * s.cache).c_str(), s.mla_nope + s.mla_rope, s.mla_v,
      std::min(s.reference_rows, s.prefill));

  const Row &mha = rows[0], &gqa = rows[1], &mqa = rows[2], &mla = rows[3], &bf = rows[4], &fp = rows[5], &q8 = rows[6];
  double worst_kernel = 0, worst_layer = 0, worst_layer_rel = 0;
  for (std::size_t i = 0; i < 4; ++i) {
    const Row& r = rows[i];
    worst_kernel = std::max(worst_kernel, r.kernel_dev);
    worst_layer = std::max(worst_layer, r.layer_dev);
    worst_layer_rel = std::max(worst_layer_rel, r.layer_dev / std::max(1e-30, r.layer_ref_max));
  }
  const auto less = [&](const Row& r) { return double(mha.cache_elements) / double(r.cache_elements); };
  std::printf(
      "\nSummary: per token GQA caches %.0fx, MLA %.1fx and MQA %.0fx less than MHA; one decode step takes %.2f / "
      "%.2f / %.2f / %.2f ms (MHA / GQA / MQA / MLA); all float results within %.1e of double.\n",
      less(gqa), less(mla), less(mqa), mha.decode_s * 1e3, gqa.decode_s * 1e3, mqa.decode_s * 1e3, mla.decode_s * 1e3,
      std::max(worst_kernel, worst_layer));
  std::printf(
      "16-bit (%s path): GQA's cache in bf16 takes half the bytes and decodes in %.2f ms (%.2fx float's); bf16 "
      "prefill %.1f ms (%.1fx float's).\n",
      attend::bf16_path(), bf.decode_s * 1e3, bf.decode_s / gqa.decode_s, bf.kernel_prefill_s * 1e3,
      gqa.kernel_prefill_s / bf.kernel_prefill_s);
  std::printf("8-bit: GQA's cache in q8 takes %.2f of the float bytes and decodes in %.2f ms (%.2fx float's).\n",
              q8.cache_bytes / double(gqa.cache_elements * sizeof(float)), q8.decode_s * 1e3,
              q8.decode_s / gqa.decode_s);

  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  std::printf("(tour took %.1f s)\n\n", wall);

  // Only correctness is checked (timings vary): float kernels and layers agree with double precision.
  bool ok = true;
  ok &= ex::check(worst_kernel <= 1e-4, "every kernel within 1e-4 of the double-precision reference");
  ok &= ex::check(worst_layer_rel <= 1e-4, "every float layer within 1e-4 (relative) of the same layer in double");
  // bfloat16 keeps 8 significant bits: outputs of magnitude ~1 are rounded by up to 2^-8.
  // q8 keeps 8 bits per value and a scale per 32: outputs move by up to a few 1e-3 of their scale.
  ok &= ex::check(q8.kernel_dev <= 5e-2 && q8.layer_dev <= 5e-2 * std::max(1.0, q8.layer_ref_max),
                  "8-bit keys and values within 5e-2 (relative) of double");
  ok &= ex::check(bf.kernel_dev <= 2e-2 && fp.kernel_dev <= 2e-2, "16-bit kernels within 2e-2 of double");
  ok &= ex::check(
      bf.layer_dev <= 2e-2 * std::max(1.0, bf.layer_ref_max) && fp.layer_dev <= 2e-2 * std::max(1.0, fp.layer_ref_max),
      "layers over 16-bit caches within 2e-2 (relative) of double");
  return ok ? 0 : 1;
}
