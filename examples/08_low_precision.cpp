// Low precision: what storing values in 16 or 8 bits costs in accuracy and buys in memory and speed.
//
// bfloat16 keeps float's 8-bit exponent (the same range) and 8 significant bits; half (fp16) keeps 11 significant
// bits but a 5-bit exponent (largest value 65504). attend computes scores, the softmax and the accumulators in
// float whatever the storage, and rounds only what is stored in 16 bits. The program shows
//   - one number rounded each way, and the relative error each format allows,
//   - decoding through a GQA layer's KV cache stored as float, bfloat16, half and q8 (8-bit values in blocks of 32
//     with a scale): bytes per token, time per token and how far the outputs move from the float cache (NMSE:
//     sum (a - b)^2 / sum b^2),
//   - causal prefill on bfloat16 and half inputs against float: time, and the NMSE against double precision on
//     the same rounded inputs, on the instructions this machine offers (attend::bf16_path()).
// It checks the contract's accuracy bounds (NMSE <= 1e-4 for every 16-bit result, 5e-4 for q8 against unquantized
// values), that the 16-bit caches take half the bytes and q8 at most 0.27, and that rows with no visible key stay
// exactly zero. Timings are medians and vary from run to run.
// Usage: 08_low_precision [--quick]. Exit status 1 when a check fails.
#include <attend/attend.hpp>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>

#include "util.hpp"

namespace {

using attend::Index;
using attend::Matrix;
using bf16 = Eigen::bfloat16;
using half = Eigen::half;

template <class A, class B>
double nmse(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b) {
  const Eigen::MatrixXd x = a.template cast<double>(), y = b.template cast<double>();
  return (x - y).squaredNorm() / y.squaredNorm();
}

struct Sizes {
  int d_model, heads, kv_heads, head_dim, cache, steps, prefill, reps;
};
constexpr Sizes kFull{1024, 16, 4, 64, 8192, 16, 2048, 3};
constexpr Sizes kQuick{256, 8, 2, 32, 1024, 8, 256, 2};

attend::MultiHeadAttention<float> random_layer(const Sizes& s, std::mt19937& rng) {
  attend::MultiHeadAttention<float> m(s.d_model, s.heads, s.kv_heads, s.head_dim);
  m.q_proj.weight = ex::random_weight(rng, Index(s.heads) * s.head_dim, s.d_model);
  m.k_proj.weight = ex::random_weight(rng, Index(s.kv_heads) * s.head_dim, s.d_model);
  m.v_proj.weight = ex::random_weight(rng, Index(s.kv_heads) * s.head_dim, s.d_model);
  m.o_proj.weight = ex::random_weight(rng, s.d_model, Index(s.heads) * s.head_dim);
  return m;
}

struct Decode {
  double bytes_per_token, ms_per_token, nmse_vs_float;
};

/// Fills a cache of S storage with `context`, then decodes `next` one token at a time; returns the outputs too.
template <class S>
Decode decode(const attend::MultiHeadAttention<float>& layer, const Matrix<float>& context, const Matrix<float>& next,
              Matrix<float>& outputs) {
  attend::Options causal;
  causal.mask = attend::Mask::causal();
  attend::KVCache<float, S> cache;
  layer.forward(context, cache, causal);
  std::vector<double> t;
  outputs.resize(next.rows(), next.cols());
  for (Index i = 0; i < next.rows(); ++i)
    t.push_back(ex::seconds([&] { outputs.row(i) = layer.forward(next.row(i), cache, causal); }));
  return {double(cache.bytes()) / double(cache.size()), ex::median(t) * 1e3, 0};
}

struct Prefill {
  double ms, nmse_vs_double;
  bool dead_rows_zero;
};

/// Causal prefill on inputs rounded to T (Lq = Lk + 8, so the first 8 rows see no key).
template <class T>
Prefill prefill(const Sizes& s, const Matrix<float>& q, const Matrix<float>& k, const Matrix<float>& v) {
  const Matrix<T> qt = q.cast<T>(), kt = k.cast<T>(), vt = v.cast<T>();
  attend::Options causal;
  causal.mask = attend::Mask::causal();
  const attend::Heads heads{s.heads, s.kv_heads};
  Matrix<T> out;
  const double sec = ex::median_seconds(s.reps, [&] { out = attend::multi_head_attention(qt, kt, vt, heads, causal); });
  // The double reference on the last 64 rows (bottom-right causal: those rows over all keys).
  const Index n = 64;
  const Matrix<T> q_last = qt.bottomRows(n);
  const Matrix<double> want = attend::reference::multi_head_attention(q_last, kt, vt, heads, causal);
  const bool dead_zero = (out.topRows(8).template cast<float>().array() == 0.f).all();
  return {sec * 1e3, nmse(out.bottomRows(n), want), dead_zero};
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const Sizes s = quick ? kQuick : kFull;
  std::mt19937 rng(8);
  bool ok = true;

  std::printf("1. One number, three storage formats (float has 24 significant bits):\n\n");
  const float x = 3.14159265f;
  std::printf(
      "   float %.9g   bfloat16 %.9g (8 bits, rel. error up to 2^-8 = %.1e)   half %.9g (11 bits, 2^-11 = %.1e)\n", x,
      float(bf16(x)), std::ldexp(1.0, -8), float(half(x)), std::ldexp(1.0, -11));
  std::printf("   range: bfloat16 up to %.3g (float's), half up to %.0f\n\n",
              double(float(Eigen::NumTraits<bf16>::highest())), double(float(Eigen::NumTraits<half>::highest())));

  std::printf(
      "2. Decoding with the KV cache in each format (GQA, %d query / %d kv heads of %d; cache of %d tokens; "
      "%s path)\n\n",
      s.heads, s.kv_heads, s.head_dim, s.cache, attend::bf16_path());
  const attend::MultiHeadAttention<float> layer = random_layer(s, rng);
  const Matrix<float> context = ex::random_matrix(rng, s.cache, s.d_model);
  const Matrix<float> next = ex::random_matrix(rng, s.steps, s.d_model);
  Matrix<float> y_float, y_bf16, y_half, y_q8;
  const Decode f = decode<float>(layer, context, next, y_float);
  Decode b = decode<bf16>(layer, context, next, y_bf16);
  Decode h = decode<half>(layer, context, next, y_half);
  Decode q8 = decode<attend::q8>(layer, context, next, y_q8);
  b.nmse_vs_float = nmse(y_bf16, y_float);
  h.nmse_vs_float = nmse(y_half, y_float);
  q8.nmse_vs_float = nmse(y_q8, y_float);
  std::printf("   %-10s %12s %14s %16s\n", "cache", "bytes/token", "decode ms/tok", "NMSE vs float");
  for (const auto& [name, r] : {std::pair<const char*, Decode>{"float", f}, {"bfloat16", b}, {"half", h}, {"q8", q8}})
    std::printf("   %-10s %12.0f %14.3f %16.2e\n", name, r.bytes_per_token, r.ms_per_token, r.nmse_vs_float);
  std::printf(
      "\n   (half keeps 3 more bits than bfloat16: its cache moves the outputs less; q8 keeps 8 bits per value and\n"
      "   one half-precision scale per 32, 34 bytes for what float stores in 128.)\n\n");
  ok &= ex::check(b.bytes_per_token * 2 == f.bytes_per_token && h.bytes_per_token * 2 == f.bytes_per_token,
                  "a 16-bit cache takes half the bytes per token of a float one");
  ok &= ex::check(q8.bytes_per_token <= 0.27 * f.bytes_per_token, "an 8-bit cache takes at most 0.27 of the bytes");
  ok &= ex::check(b.nmse_vs_float <= 1e-4 && h.nmse_vs_float <= 1e-4, "decoding over a 16-bit cache: NMSE <= 1e-4");
  ok &= ex::check(q8.nmse_vs_float <= 5e-4, "decoding over an 8-bit cache: NMSE <= 5e-4");

  std::printf("3. Causal prefill of %d tokens on 16-bit inputs (the first 8 query rows see no key)\n\n", s.prefill);
  const Matrix<float> q = ex::random_matrix(rng, s.prefill + 8, Index(s.heads) * s.head_dim);
  const Matrix<float> k = ex::random_matrix(rng, s.prefill, Index(s.kv_heads) * s.head_dim);
  const Matrix<float> v = ex::random_matrix(rng, s.prefill, Index(s.kv_heads) * s.head_dim);
  const Prefill pf = prefill<float>(s, q, k, v), pb = prefill<bf16>(s, q, k, v), ph = prefill<half>(s, q, k, v);
  std::printf("   %-10s %10s %10s %18s\n", "inputs", "ms", "speed-up", "NMSE vs double");
  for (const auto& [name, r] : {std::pair<const char*, Prefill>{"float", pf}, {"bfloat16", pb}, {"half", ph}})
    std::printf("   %-10s %10.2f %9.2fx %18.2e\n", name, r.ms, pf.ms / r.ms, r.nmse_vs_double);
  std::printf("\n   (the %s path; bfloat16 and half outputs are rounded to 16 bits, which dominates their error)\n\n",
              attend::bf16_path());
  ok &= ex::check(pb.nmse_vs_double <= 1e-4 && ph.nmse_vs_double <= 1e-4, "16-bit prefill: NMSE <= 1e-4 (contract)");
  ok &= ex::check(pf.dead_rows_zero && pb.dead_rows_zero && ph.dead_rows_zero,
                  "rows that see no key are exactly zero in every format");
  return ok ? 0 : 1;
}
