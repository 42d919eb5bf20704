// The bad-input catalogue: one test per way to call each public function wrongly. Every case must throw
// attend::shape_error whose message starts with "attend::<function>: " and names the argument and the shapes
// (or values) involved, and must leave every input, layer and cache exactly as it was.
//
// Each case runs against a fresh World: valid kernel inputs, deliberately bad matrices, layers with random
// weights and caches already holding tokens. The whole World is copied before the call and compared bit for
// bit afterwards, so "unchanged" covers the arguments of the call and everything else a bug could touch.
// errors_test.cpp keeps the one-rule-per-test examples of the contract; this file is the exhaustive list.
#include <gtest/gtest.h>

#include <attend/attend.hpp>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "test_util.hpp"

using attend::Heads;
using attend::Index;
using attend::Mask;
using attend::Options;

namespace {

using M = attend::Matrix<float>;
using MD = attend::Matrix<double>;
using Vec = attend::Vector<float>;
using Mha = attend::MultiHeadAttention<float>;
using Mla = attend::MultiHeadLatentAttention<float>;
using MlaConfig = Mla::Config;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---------------------------------------------------------------------------------------------------------------
// The world every case runs in.

struct World {
  // Single-head kernel inputs: q [4,8], k [5,8], v [5,6], bias [4,5], out [4,6].
  M q, k, v, bias, out;
  MD bias_d;
  // Bad single-head matrices.
  M k_narrow;    // [5,7]
  M k_empty;     // [0,8]
  M v_long;      // [6,6]
  M v_one;       // [1,6]: rows for Lk = 0
  M q_no_cols;   // [4,0]
  M k_no_cols;   // [5,0]
  M bias_rows;   // [3,5]
  M bias_cols;   // [4,6]
  M bias_t;      // [5,4]
  M bias_empty;  // [0,0]
  MD bias_rows_d;
  M out_rows;   // [3,6]
  M out_cols;   // [4,5]
  M out_empty;  // [0,0]
  // Multi-head inputs, Heads{4,2}, d = 4, dv = 3: qh [4,16], kh [5,8], vh [5,6], outh [4,12]; kq [5,4], vq [5,3]
  // are one kv head (MQA).
  M qh, kh, vh, outh, kq, vq;
  M kh_wide;   // [5,12]
  M vh_odd;    // [5,5]
  M vh_long;   // [6,6]
  M outh_bad;  // [4,11]
  // merge_attention parts: two results of [4,12] with lse [4,4].
  std::vector<attend::AttentionResult<float>> parts;
  // Layers: d_model 16.
  M x, ctx, x_narrow, ctx_narrow, x_no_cols;  // [3,16], [5,16], [3,15], [5,17], [3,0]
  Mha mha{16, 4, 2, 4};
  Mla mla{MlaConfig{16, 2, 0, 6, 4, 2, 4}};
  Mla mla_q{MlaConfig{16, 2, 8, 6, 4, 2, 4}};  // with query compression
  attend::KVCache<float> cache;                // 3 tokens of mha
  attend::LatentCache<float> lcache;           // 3 tokens of mla
  // Serving: paged caches of pages of 2 tokens; sequence 0 holds 3 tokens of mha (of mla), 1 was released, 2 is
  // empty. A ragged batch of qh/kh/vh: sequences of (1, 2) and (3, 3) rows.
  attend::PagedKVCache<float> pcache{2};
  attend::PagedLatentCache<float> plcache{2};
  attend::Ragged ragged{{0, 1, 4}, {0, 2, 5}};
  // 8 bits: q8q [4,128] over k8, v8 [5,64] (Heads{4,2}, d = 32); q8q16 [4,64] over k8n, v8n [5,32] (d = 16, not
  // whole blocks). Paged 8-bit caches of pages of 2 tokens filled as pcache and plcache, by mha8 and mla8.
  M q8q, q8q16;
  attend::Q8Matrix k8, v8, k8n, v8n;
  Mha mha8{16, 4, 2, 32};
  Mla mla8{MlaConfig{16, 2, 0, 32, 4, 32, 4}};
  attend::PagedKVCache<float, attend::q8> pcache8{2};
  attend::PagedLatentCache<float, attend::q8> plcache8{2};
  attend::Linear<float> lin;    // [4,8] with a bias
  attend::RMSNorm<float> norm;  // weight of 8
  M xl;                         // [2,8]
  // Backward inputs: the single-head lse [4,1] (out and dout are out [4,6]; multi-head: outh and parts[0].lse).
  M lse_one;
};

World make_world() {
  std::mt19937 rng(20240606);
  const auto rnd = [&](Index r, Index c) { return attend_test::random_matrix<float>(r, c, rng); };
  World w;
  w.q = rnd(4, 8), w.k = rnd(5, 8), w.v = rnd(5, 6), w.bias = rnd(4, 5), w.out = M::Constant(4, 6, 7.f);
  w.bias_d = w.bias.cast<double>();
  w.k_narrow = rnd(5, 7), w.k_empty = M(0, 8), w.v_long = rnd(6, 6), w.v_one = rnd(1, 6);
  w.q_no_cols = M(4, 0), w.k_no_cols = M(5, 0);
  w.bias_rows = rnd(3, 5), w.bias_cols = rnd(4, 6), w.bias_t = rnd(5, 4), w.bias_empty = M(0, 0);
  w.bias_rows_d = w.bias_rows.cast<double>();
  w.out_rows = M::Constant(3, 6, 7.f), w.out_cols = M::Constant(4, 5, 7.f), w.out_empty = M(0, 0);
  w.qh = rnd(4, 16), w.kh = rnd(5, 8), w.vh = rnd(5, 6), w.outh = M::Constant(4, 12, 7.f);
  w.kq = rnd(5, 4), w.vq = rnd(5, 3);
  w.kh_wide = rnd(5, 12), w.vh_odd = rnd(5, 5), w.vh_long = rnd(6, 6), w.outh_bad = M::Constant(4, 11, 7.f);
  for (int i = 0; i < 2; ++i) w.parts.push_back({rnd(4, 12), rnd(4, 4)});
  w.x = rnd(3, 16), w.ctx = rnd(5, 16), w.x_narrow = rnd(3, 15), w.ctx_narrow = rnd(5, 17), w.x_no_cols = M(3, 0);
  for (auto* lin : {&w.mha.q_proj, &w.mha.k_proj, &w.mha.v_proj, &w.mha.o_proj}) attend_test::randomize(*lin, rng);
  for (Mla* m : {&w.mla, &w.mla_q}) {
    for (auto* lin : {&m->q_proj, &m->q_a_proj, &m->q_b_proj, &m->kv_a_proj_with_mqa, &m->kv_b_proj, &m->o_proj})
      if (lin->weight.size() != 0) attend_test::randomize(*lin, rng);
    m->kv_a_layernorm.weight = Vec::Ones(6);
  }
  w.mla_q.q_a_layernorm.weight = Vec::Ones(8);
  w.mha.forward(w.x, w.cache);
  w.mla.forward(w.x, w.lcache);
  for (int i = 0; i < 3; ++i) w.pcache.add_sequence(), w.plcache.add_sequence();
  w.pcache.release(1), w.plcache.release(1);
  w.mha.forward(w.x, w.pcache, {0, 2}, {0, 3, 3});
  w.mla.forward(w.x, w.plcache, {0, 2}, {0, 3, 3});
  w.q8q = rnd(4, 128), w.q8q16 = rnd(4, 64);
  w.k8 = attend::quantize_q8(rnd(5, 64)), w.v8 = attend::quantize_q8(rnd(5, 64));
  w.k8n = attend::quantize_q8(rnd(5, 32)), w.v8n = attend::quantize_q8(rnd(5, 32));
  for (auto* lin : {&w.mha8.q_proj, &w.mha8.k_proj, &w.mha8.v_proj, &w.mha8.o_proj}) attend_test::randomize(*lin, rng);
  for (auto* lin : {&w.mla8.q_proj, &w.mla8.kv_a_proj_with_mqa, &w.mla8.kv_b_proj, &w.mla8.o_proj})
    attend_test::randomize(*lin, rng);
  w.mla8.kv_a_layernorm.weight = Vec::Ones(32);
  for (int i = 0; i < 3; ++i) w.pcache8.add_sequence(), w.plcache8.add_sequence();
  w.pcache8.release(1), w.plcache8.release(1);
  w.mha8.forward(w.x, w.pcache8, {0, 2}, {0, 3, 3});
  w.mla8.forward(w.x, w.plcache8, {0, 2}, {0, 3, 3});
  w.lin.weight = rnd(4, 8), w.lin.bias = Vec::Ones(4);
  w.norm.weight = Vec::Ones(8);
  w.xl = rnd(2, 8);
  w.lse_one = rnd(4, 1);
  return w;
}

// ---------------------------------------------------------------------------------------------------------------
// Bitwise comparison of two worlds; names the first field that differs.

bool same(const M& a, const M& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::equal(a.data(), a.data() + a.size(), b.data(),
                    [](float x, float y) { return x == y || (std::isnan(x) && std::isnan(y)); });
}
bool same(const MD& a, const MD& b) { return a.rows() == b.rows() && a.cols() == b.cols() && a == b; }
bool same(const Vec& a, const Vec& b) {
  return a.size() == b.size() && (a.array() == b.array() || (a.array().isNaN() && b.array().isNaN())).all();
}
bool same(const attend::Linear<float>& a, const attend::Linear<float>& b) {
  return same(a.weight, b.weight) && same(a.bias, b.bias);
}
bool same(const attend::RMSNorm<float>& a, const attend::RMSNorm<float>& b) {
  return same(a.weight, b.weight) && a.eps == b.eps;
}
bool same(const Mha& a, const Mha& b) {
  return a.d_model == b.d_model && a.heads == b.heads && a.kv_heads == b.kv_heads && a.head_dim == b.head_dim &&
         same(a.q_proj, b.q_proj) && same(a.k_proj, b.k_proj) && same(a.v_proj, b.v_proj) && same(a.o_proj, b.o_proj);
}
bool same(const Mla& a, const Mla& b) {
  const MlaConfig &x = a.config, &y = b.config;
  return x.d_model == y.d_model && x.heads == y.heads && x.q_lora_rank == y.q_lora_rank &&
         x.kv_lora_rank == y.kv_lora_rank && x.qk_nope_head_dim == y.qk_nope_head_dim &&
         x.qk_rope_head_dim == y.qk_rope_head_dim && x.v_head_dim == y.v_head_dim && x.rope_theta == y.rope_theta &&
         x.rope_layout == y.rope_layout && same(a.q_proj, b.q_proj) && same(a.q_a_proj, b.q_a_proj) &&
         same(a.q_a_layernorm, b.q_a_layernorm) && same(a.q_b_proj, b.q_b_proj) &&
         same(a.kv_a_proj_with_mqa, b.kv_a_proj_with_mqa) && same(a.kv_a_layernorm, b.kv_a_layernorm) &&
         same(a.kv_b_proj, b.kv_b_proj) && same(a.o_proj, b.o_proj);
}
bool same(const attend::KVCache<float>& a, const attend::KVCache<float>& b) {
  return a.size() == b.size() && a.capacity() == b.capacity() && same(M(a.keys()), M(b.keys())) &&
         same(M(a.values()), M(b.values()));
}
bool same(const attend::LatentCache<float>& a, const attend::LatentCache<float>& b) {
  return a.size() == b.size() && a.capacity() == b.capacity() && same(M(a.entries()), M(b.entries())) &&
         same(M(a.latent()), M(b.latent())) && same(M(a.rope_keys()), M(b.rope_keys()));
}

bool same(const attend::PagedKVCache<float>& a, const attend::PagedKVCache<float>& b) {
  if (a.sequences() != b.sequences() || a.pages_in_use() != b.pages_in_use() || a.free_pages() != b.free_pages() ||
      a.key_width() != b.key_width() || a.value_width() != b.value_width())
    return false;
  for (const int s : a.sequences())
    if (!same(a.keys(s), b.keys(s)) || !same(a.values(s), b.values(s))) return false;
  return true;
}
bool same(const attend::PagedLatentCache<float>& a, const attend::PagedLatentCache<float>& b) {
  if (a.sequences() != b.sequences() || a.pages_in_use() != b.pages_in_use() || a.free_pages() != b.free_pages() ||
      a.latent_width() != b.latent_width() || a.rope_width() != b.rope_width())
    return false;
  for (const int s : a.sequences())
    if (!same(a.entries(s), b.entries(s))) return false;
  return true;
}

bool same(const attend::Q8Matrix& a, const attend::Q8Matrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::equal(a.data(), a.data() + a.rows() * a.cols(), b.data()) &&
         std::equal(a.scales(), a.scales() + a.rows() * a.blocks(), b.scales());
}
bool same(const attend::PagedKVCache<float, attend::q8>& a, const attend::PagedKVCache<float, attend::q8>& b) {
  if (a.sequences() != b.sequences() || a.pages_in_use() != b.pages_in_use() || a.free_pages() != b.free_pages() ||
      a.key_width() != b.key_width() || a.value_width() != b.value_width() || a.kv_heads() != b.kv_heads())
    return false;
  for (const int s : a.sequences())
    if (!same(a.keys_dequantized(s), b.keys_dequantized(s)) || !same(a.values_dequantized(s), b.values_dequantized(s)))
      return false;
  return true;
}
bool same(const attend::PagedLatentCache<float, attend::q8>& a, const attend::PagedLatentCache<float, attend::q8>& b) {
  if (a.sequences() != b.sequences() || a.pages_in_use() != b.pages_in_use() || a.free_pages() != b.free_pages() ||
      a.latent_width() != b.latent_width() || a.rope_width() != b.rope_width())
    return false;
  for (const int s : a.sequences())
    if (!same(a.entries_dequantized(s), b.entries_dequantized(s))) return false;
  return true;
}

std::string first_difference(const World& a, const World& b) {
  const auto differs = [](const auto& x, const auto& y) { return !same(x, y); };
  // clang-format off
  if (differs(a.q, b.q)) return "q";
  if (differs(a.k, b.k)) return "k";
  if (differs(a.v, b.v)) return "v";
  if (differs(a.bias, b.bias)) return "bias";
  if (differs(a.out, b.out)) return "out";
  if (differs(a.bias_d, b.bias_d)) return "bias_d";
  if (differs(a.k_narrow, b.k_narrow)) return "k_narrow";
  if (differs(a.k_empty, b.k_empty)) return "k_empty";
  if (differs(a.v_long, b.v_long)) return "v_long";
  if (differs(a.v_one, b.v_one)) return "v_one";
  if (differs(a.q_no_cols, b.q_no_cols)) return "q_no_cols";
  if (differs(a.k_no_cols, b.k_no_cols)) return "k_no_cols";
  if (differs(a.bias_rows, b.bias_rows)) return "bias_rows";
  if (differs(a.bias_cols, b.bias_cols)) return "bias_cols";
  if (differs(a.bias_t, b.bias_t)) return "bias_t";
  if (differs(a.bias_empty, b.bias_empty)) return "bias_empty";
  if (differs(a.bias_rows_d, b.bias_rows_d)) return "bias_rows_d";
  if (differs(a.out_rows, b.out_rows)) return "out_rows";
  if (differs(a.out_cols, b.out_cols)) return "out_cols";
  if (differs(a.out_empty, b.out_empty)) return "out_empty";
  if (differs(a.qh, b.qh)) return "qh";
  if (differs(a.kh, b.kh)) return "kh";
  if (differs(a.vh, b.vh)) return "vh";
  if (differs(a.outh, b.outh)) return "outh";
  if (differs(a.kq, b.kq)) return "kq";
  if (differs(a.vq, b.vq)) return "vq";
  if (differs(a.kh_wide, b.kh_wide)) return "kh_wide";
  if (differs(a.vh_odd, b.vh_odd)) return "vh_odd";
  if (differs(a.vh_long, b.vh_long)) return "vh_long";
  if (differs(a.outh_bad, b.outh_bad)) return "outh_bad";
  if (differs(a.x, b.x)) return "x";
  if (differs(a.ctx, b.ctx)) return "ctx";
  if (differs(a.x_narrow, b.x_narrow)) return "x_narrow";
  if (differs(a.ctx_narrow, b.ctx_narrow)) return "ctx_narrow";
  if (differs(a.x_no_cols, b.x_no_cols)) return "x_no_cols";
  if (differs(a.mha, b.mha)) return "mha";
  if (differs(a.mla, b.mla)) return "mla";
  if (differs(a.mla_q, b.mla_q)) return "mla_q";
  if (differs(a.cache, b.cache)) return "cache";
  if (differs(a.lcache, b.lcache)) return "lcache";
  if (differs(a.pcache, b.pcache)) return "pcache";
  if (differs(a.plcache, b.plcache)) return "plcache";
  if (a.ragged.q_offsets != b.ragged.q_offsets || a.ragged.kv_offsets != b.ragged.kv_offsets) return "ragged";
  if (differs(a.q8q, b.q8q)) return "q8q";
  if (differs(a.q8q16, b.q8q16)) return "q8q16";
  if (differs(a.k8, b.k8)) return "k8";
  if (differs(a.v8, b.v8)) return "v8";
  if (differs(a.k8n, b.k8n)) return "k8n";
  if (differs(a.v8n, b.v8n)) return "v8n";
  if (differs(a.mha8, b.mha8)) return "mha8";
  if (differs(a.mla8, b.mla8)) return "mla8";
  if (differs(a.pcache8, b.pcache8)) return "pcache8";
  if (differs(a.plcache8, b.plcache8)) return "plcache8";
  if (differs(a.lin, b.lin)) return "lin";
  if (differs(a.norm, b.norm)) return "norm";
  if (differs(a.xl, b.xl)) return "xl";
  if (differs(a.lse_one, b.lse_one)) return "lse_one";
  // clang-format on
  if (a.parts.size() != b.parts.size()) return "parts";
  for (std::size_t i = 0; i < a.parts.size(); ++i)
    if (!same(a.parts[i].out, b.parts[i].out) || !same(a.parts[i].lse, b.parts[i].lse))
      return "parts[" + std::to_string(i) + "]";
  return "";
}

// ---------------------------------------------------------------------------------------------------------------
// The catalogue.

struct Case {
  std::string name;                    // gtest name: letters, digits, '_'
  std::function<void(World&)> setup;   // makes the world wrong before the snapshot (may be empty)
  std::function<void(World&)> call;    // the wrong call
  std::vector<std::string> fragments;  // all must appear in what(); the first is "attend::<function>: "
};

std::ostream& operator<<(std::ostream& os, const Case& c) { return os << c.name; }

Options scale(double s) {
  Options o;
  o.scale = s;
  return o;
}
Options softcap(double c) {
  Options o;
  o.softcap = c;
  return o;
}
Options window(Index w) {
  Options o;
  o.mask = Mask::sliding_window(w);
  return o;
}

// The invalid options every function that takes Options must refuse, with the fragment naming them. Those
// marked float_only are fine in double: the reference (which computes in double) accepts them.
struct BadOption {
  std::string name;
  Options options;
  std::string fragment;
  bool float_only = false;
};
// `heads`: the query heads of the call, which sinks and ALiBi slopes must match one for one.
std::vector<BadOption> bad_options(int heads = 1) {
  std::vector<BadOption> all = {
      {"Scale0", scale(0), "options.scale is 0, expected a finite value > 0"},
      {"ScaleNegative", scale(-0.5), "options.scale is -0.5"},
      {"ScaleInf", scale(kInf), "options.scale is inf"},
      {"ScaleNaN", scale(kNaN), "options.scale is nan"},
      {"SoftcapNegative", softcap(-2), "options.softcap is -2, expected a finite value >= 0"},
      {"SoftcapNaN", softcap(kNaN), "options.softcap is nan"},
      {"SoftcapInf", softcap(kInf), "options.softcap is inf"},
      {"Window0", window(0), "options.mask is sliding_window(0), expected a window >= 1"},
      {"WindowNegative", window(-4), "options.mask is sliding_window(-4)"},
      {"ScaleBeyondFloat", scale(1e300), "options.scale is 1e+300, which float cannot represent (it becomes inf)",
       true},
      {"ScaleBelowFloat", scale(1e-300), "options.scale is 1e-300, which float cannot represent (it becomes 0)", true},
      {"SoftcapBeyondFloat", softcap(1e300), "options.softcap is 1e+300, which float cannot represent", true},
      {"SoftcapReciprocalBeyondFloat", softcap(1e-40),
       "options.softcap is 1e-40, which float cannot represent together with its reciprocal", true},
  };
  const std::string per_head = "expected 0 or one per query head (" + std::to_string(heads) + ")";
  const auto with = [](std::vector<double> sinks, std::vector<double> slopes) {
    Options o;
    o.sinks = std::move(sinks);
    o.alibi_slopes = std::move(slopes);
    return o;
  };
  const std::vector<double> ok(static_cast<std::size_t>(heads), 0.5);
  const auto one_bad = [&](double x) {
    std::vector<double> v = ok;
    v.back() = x;
    return v;
  };
  const std::string last = "[" + std::to_string(heads - 1) + "] is ";
  all.push_back({"SinksOneTooMany", with(std::vector<double>(heads + 1, 0.0), {}),
                 "options.sinks has " + std::to_string(heads + 1) + " entries, " + per_head});
  if (heads > 1)
    all.push_back({"SinksTooFew", with(std::vector<double>(heads - 1, 0.0), {}),
                   "options.sinks has " + std::to_string(heads - 1) + " entries, " + per_head});
  all.push_back({"SinkNaN", with(one_bad(kNaN), {}), "options.sinks" + last + "nan, expected a value finite in"});
  all.push_back({"SinkInf", with(one_bad(-kInf), {}), "options.sinks" + last + "-inf"});
  all.push_back({"SinkBeyondFloat", with(one_bad(1e300), {}),
                 "options.sinks" + last + "1e+300, expected a value finite in float", true});
  all.push_back({"AlibiOneTooMany", with({}, std::vector<double>(heads + 1, 0.0)),
                 "options.alibi_slopes has " + std::to_string(heads + 1) + " entries, " + per_head});
  all.push_back(
      {"AlibiSlopeNegative", with({}, one_bad(-0.25)), "options.alibi_slopes" + last + "-0.25, expected a slope >= 0"});
  all.push_back({"AlibiSlopeNaN", with({}, one_bad(kNaN)), "options.alibi_slopes" + last + "nan"});
  all.push_back({"AlibiSlopeInf", with({}, one_bad(kInf)), "options.alibi_slopes" + last + "inf"});
  return all;
}

// A single-head kernel: the public function, how to call it with (q, k, v, bias, options), and which of the
// arguments it has.
struct Kernel {
  std::string name, fn;
  bool has_v, has_bias, has_out;
  std::function<void(World&, const M& q, const M& k, const M& v, const M& bias, M& out, const Options&)> call;
};

std::vector<Kernel> single_head_kernels() {
  return {
      {"Sdpa", "scaled_dot_product_attention", true, false, false,
       [](World&, const M& q, const M& k, const M& v, const M&, M&, const Options& o) {
         attend::scaled_dot_product_attention(q, k, v, o);
       }},
      {"SdpaBias", "scaled_dot_product_attention", true, true, false,
       [](World&, const M& q, const M& k, const M& v, const M& b, M&, const Options& o) {
         attend::scaled_dot_product_attention(q, k, v, b, o);
       }},
      {"SdpaLse", "scaled_dot_product_attention_with_lse", true, false, false,
       [](World&, const M& q, const M& k, const M& v, const M&, M&, const Options& o) {
         attend::scaled_dot_product_attention_with_lse(q, k, v, o);
       }},
      {"SdpaInto", "scaled_dot_product_attention_into", true, false, true,
       [](World&, const M& q, const M& k, const M& v, const M&, M& out, const Options& o) {
         attend::scaled_dot_product_attention_into(q, k, v, out, o);
       }},
      {"Weights", "attention_weights", false, false, false,
       [](World&, const M& q, const M& k, const M&, const M&, M&, const Options& o) {
         attend::attention_weights(q, k, o);
       }},
      {"WeightsBias", "attention_weights", false, true, false,
       [](World&, const M& q, const M& k, const M&, const M& b, M&, const Options& o) {
         attend::attention_weights(q, k, b, o);
       }},
      {"SdpaBackward", "scaled_dot_product_attention_backward", true, false, false,
       [](World& w, const M& q, const M& k, const M& v, const M&, M&, const Options& o) {
         attend::scaled_dot_product_attention_backward(q, k, v, w.out, w.lse_one, w.out, o);
       }},
      {"SdpaBackwardBias", "scaled_dot_product_attention_backward", true, true, false,
       [](World& w, const M& q, const M& k, const M& v, const M& b, M&, const Options& o) {
         attend::scaled_dot_product_attention_backward(q, k, v, b, w.out, w.lse_one, w.out, o);
       }},
      {"SdpaLseBias", "scaled_dot_product_attention_with_lse", true, true, false,
       [](World&, const M& q, const M& k, const M& v, const M& b, M&, const Options& o) {
         attend::scaled_dot_product_attention_with_lse(q, k, v, b, o);
       }},
      {"RefSdpa", "reference::scaled_dot_product_attention", true, false, false,
       [](World&, const M& q, const M& k, const M& v, const M&, M&, const Options& o) {
         attend::reference::scaled_dot_product_attention(q, k, v, o);
       }},
      {"RefWeights", "reference::attention_weights", false, false, false,
       [](World&, const M& q, const M& k, const M&, const M&, M&, const Options& o) {
         attend::reference::attention_weights(q, k, o);
       }},
  };
}

// A multi-head kernel called with explicit Heads.
struct MultiKernel {
  std::string name, fn;
  bool has_out;
  std::function<void(World&, const M& q, const M& k, const M& v, Heads, M& out, const Options&)> call;
};

std::vector<MultiKernel> multi_head_kernels() {
  return {
      {"Mha", "multi_head_attention", false,
       [](World&, const M& q, const M& k, const M& v, Heads h, M&, const Options& o) {
         attend::multi_head_attention(q, k, v, h, o);
       }},
      {"MhaLse", "multi_head_attention_with_lse", false,
       [](World&, const M& q, const M& k, const M& v, Heads h, M&, const Options& o) {
         attend::multi_head_attention_with_lse(q, k, v, h, o);
       }},
      {"MhaInto", "multi_head_attention_into", true,
       [](World&, const M& q, const M& k, const M& v, Heads h, M& out, const Options& o) {
         attend::multi_head_attention_into(q, k, v, h, out, o);
       }},
      {"Gqa", "grouped_query_attention", false,
       [](World&, const M& q, const M& k, const M& v, Heads h, M&, const Options& o) {
         attend::grouped_query_attention(q, k, v, h.query, h.kv, o);
       }},
      {"MhaBackward", "multi_head_attention_backward", false,
       [](World& w, const M& q, const M& k, const M& v, Heads h, M&, const Options& o) {
         attend::multi_head_attention_backward(q, k, v, w.outh, w.parts[0].lse, w.outh, h, o);
       }},
      {"RefMha", "reference::multi_head_attention", false,
       [](World&, const M& q, const M& k, const M& v, Heads h, M&, const Options& o) {
         attend::reference::multi_head_attention(q, k, v, h, o);
       }},
  };
}

class Catalogue {
 public:
  std::vector<Case> cases;

  void add(std::string name, std::function<void(World&)> call, std::vector<std::string> fragments) {
    cases.push_back({std::move(name), nullptr, std::move(call), std::move(fragments)});
  }
  void add(std::string name, std::function<void(World&)> setup, std::function<void(World&)> call,
           std::vector<std::string> fragments) {
    cases.push_back({std::move(name), std::move(setup), std::move(call), std::move(fragments)});
  }
};

std::string prefix(const std::string& fn) { return "attend::" + fn + ": "; }

void add_single_head(Catalogue& c) {
  for (const Kernel& kn : single_head_kernels()) {
    const std::string p = prefix(kn.fn);
    const auto call = kn.call;
    // Each rule names the arguments it replaces; the others are the valid ones of the World.
    const auto with = [call](auto pick) {
      return [call, pick](World& w) {
        const M *q = &w.q, *k = &w.k, *v = &w.v, *b = &w.bias;
        M* out = &w.out;
        Options o;
        pick(w, q, k, v, b, out, o);
        call(w, *q, *k, *v, *b, *out, o);
      };
    };
    c.add(kn.name + "_KeyWidth", with([](World& w, auto&, auto& k, auto&, auto&, auto&, auto&) { k = &w.k_narrow; }),
          {p, "k has 7 columns, expected q's 8", "q [4, 8]", "k [5, 7]"});
    c.add(kn.name + "_NoHeadDim",
          with([](World& w, auto& q, auto& k, auto&, auto&, auto&, auto&) { q = &w.q_no_cols, k = &w.k_no_cols; }),
          {p, "q is [4, 0], expected at least one column"});
    if (kn.has_v) {
      c.add(kn.name + "_ValueRows", with([](World& w, auto&, auto&, auto& v, auto&, auto&, auto&) { v = &w.v_long; }),
            {p, "v has 6 rows, expected k's 5", "k [5, 8]", "v [6, 6]"});
      c.add(kn.name + "_ValueRowsWithoutKeys",
            with([](World& w, auto&, auto& k, auto& v, auto&, auto&, auto&) { k = &w.k_empty, v = &w.v_one; }),
            {p, "v has 1 rows, expected k's 0", "k [0, 8]", "v [1, 6]"});
    }
    if (kn.has_bias) {
      c.add(kn.name + "_BiasRows", with([](World& w, auto&, auto&, auto&, auto& b, auto&, auto&) { b = &w.bias_rows; }),
            {p, "bias is [3, 5], expected [Lq, Lk] = [4, 5]", "q [4, 8]", "k [5, 8]"});
      c.add(kn.name + "_BiasCols", with([](World& w, auto&, auto&, auto&, auto& b, auto&, auto&) { b = &w.bias_cols; }),
            {p, "bias is [4, 6], expected [Lq, Lk] = [4, 5]"});
      c.add(kn.name + "_BiasTransposed",
            with([](World& w, auto&, auto&, auto&, auto& b, auto&, auto&) { b = &w.bias_t; }),
            {p, "bias is [5, 4], expected [Lq, Lk] = [4, 5]"});
      c.add(kn.name + "_BiasEmpty",
            with([](World& w, auto&, auto&, auto&, auto& b, auto&, auto&) { b = &w.bias_empty; }),
            {p, "bias is [0, 0], expected [Lq, Lk] = [4, 5]"});
    }
    if (kn.has_out) {
      c.add(kn.name + "_OutRows",
            with([](World& w, auto&, auto&, auto&, auto&, auto& out, auto&) { out = &w.out_rows; }),
            {p, "out is [3, 6], expected [4, 6]"});
      c.add(kn.name + "_OutCols",
            with([](World& w, auto&, auto&, auto&, auto&, auto& out, auto&) { out = &w.out_cols; }),
            {p, "out is [4, 5], expected [4, 6]"});
      c.add(kn.name + "_OutEmpty",
            with([](World& w, auto&, auto&, auto&, auto&, auto& out, auto&) { out = &w.out_empty; }),
            {p, "out is [0, 0], expected [4, 6]"});
    }
    for (const BadOption& bo : bad_options(1)) {
      if (bo.float_only && kn.fn.rfind("reference::", 0) == 0) continue;
      const Options opt = bo.options;
      c.add(kn.name + "_" + bo.name, with([opt](World&, auto&, auto&, auto&, auto&, auto&, auto& o) { o = opt; }),
            {p, bo.fragment});
    }
  }
  // An out whose rows overlap in memory (outer stride below the row length): rows written over each other.
  c.add("SdpaInto_OutRowsOverlap",
        [](World& w) {
          Eigen::Map<M, 0, Eigen::OuterStride<>> out(w.out.data(), 4, 6, Eigen::OuterStride<>(2));
          attend::scaled_dot_product_attention_into(w.q, w.k, w.v, out);
        },
        {prefix("scaled_dot_product_attention_into"), "out has rows of 6 values 2 apart (out [4, 6])",
         "its rows overlap in memory, expected an outer stride of at least 6"});
  c.add("SdpaInto_OutRowsOverlapBackwards",
        [](World& w) {
          Eigen::Map<M, 0, Eigen::OuterStride<>> out(w.out.data() + 9, 4, 6, Eigen::OuterStride<>(-3));
          attend::scaled_dot_product_attention_into(w.q, w.k, w.v, out);
        },
        {prefix("scaled_dot_product_attention_into"), "out has rows of 6 values -3 apart"});
  // The reference takes its bias as a double matrix by pointer.
  c.add("RefSdpa_BiasRows",
        [](World& w) { attend::reference::scaled_dot_product_attention(w.q, w.k, w.v, Options{}, &w.bias_rows_d); },
        {"attend::reference::", "bias is [3, 5], expected [Lq, Lk] = [4, 5]", "q [4, 8]", "k [5, 8]"});
  c.add("RefWeights_BiasRows",
        [](World& w) { attend::reference::attention_weights(w.q, w.k, Options{}, &w.bias_rows_d); },
        {prefix("reference::attention_weights"), "bias is [3, 5], expected [Lq, Lk] = [4, 5]"});
}

void add_multi_head(Catalogue& c) {
  for (const MultiKernel& kn : multi_head_kernels()) {
    const std::string p = prefix(kn.fn);
    const auto call = kn.call;
    const auto with = [call](auto pick) {
      return [call, pick](World& w) {
        const M *q = &w.qh, *k = &w.kh, *v = &w.vh;
        M* out = &w.outh;
        Heads h{4, 2};
        Options o;
        pick(w, q, k, v, h, out, o);
        call(w, *q, *k, *v, h, *out, o);
      };
    };
    const auto heads = [&](Heads h) {
      return with([h](World&, auto&, auto&, auto&, Heads& hh, auto&, auto&) { hh = h; });
    };
    // grouped_query_attention forwards to the same checks, which name the Heads fields.
    c.add(kn.name + "_QueryHeads0", heads({0, 1}), {p, "heads.query is 0, expected at least 1"});
    c.add(kn.name + "_QueryHeadsNegative", heads({-4, 2}), {p, "heads.query is -4"});
    c.add(kn.name + "_KvHeads0", heads({4, 0}), {p, "heads.kv is 0, expected at least 1"});
    c.add(kn.name + "_KvHeadsNegative", heads({4, -2}), {p, "heads.kv is -2"});
    c.add(kn.name + "_KvHeadsDoNotDivide", heads({4, 3}), {p, "query heads (4) are not a multiple of kv heads (3)"});
    c.add(kn.name + "_KvHeadsAboveQueryHeads", heads({2, 4}),
          {p, "query heads (2) are not a multiple of kv heads (4)"});
    c.add(kn.name + "_QueryWidthNotAMultiple", heads({3, 1}),
          {p, "q has 16 columns, expected a positive multiple of query heads (3)", "q [4, 16]"});
    c.add(kn.name + "_MoreHeadsThanQueryColumns", heads({32, 2}),
          {p, "q has 16 columns, expected a positive multiple of query heads (32)"});
    c.add(kn.name + "_KeyWidth", with([](World& w, auto&, auto& k, auto&, auto&, auto&, auto&) { k = &w.kh_wide; }),
          {p, "k has 12 columns, expected kv heads (2) * head dim (4) = 8", "q [4, 16]", "k [5, 12]"});
    c.add(kn.name + "_ValueWidthNotAMultiple",
          with([](World& w, auto&, auto&, auto& v, auto&, auto&, auto&) { v = &w.vh_odd; }),
          {p, "v has 5 columns, expected a multiple of kv heads (2)", "v [5, 5]"});
    c.add(kn.name + "_ValueRows", with([](World& w, auto&, auto&, auto& v, auto&, auto&, auto&) { v = &w.vh_long; }),
          {p, "v has 6 rows, expected k's 5", "k [5, 8]", "v [6, 6]"});
    c.add(kn.name + "_NoHeadDim", with([](World& w, auto& q, auto& k, auto&, auto& h, auto&, auto&) {
            q = &w.q_no_cols, k = &w.k_no_cols, h = {1, 1};
          }),
          {p, "q has 0 columns, expected a positive multiple of query heads (1)", "q [4, 0]"});
    if (kn.has_out)
      c.add(kn.name + "_OutShape",
            with([](World& w, auto&, auto&, auto&, auto&, auto& out, auto&) { out = &w.outh_bad; }),
            {p, "out is [4, 11], expected [4, 12]"});
    for (const BadOption& bo : bad_options(4)) {
      if (bo.float_only && kn.fn.rfind("reference::", 0) == 0) continue;
      const Options opt = bo.options;
      c.add(kn.name + "_" + bo.name, with([opt](World&, auto&, auto&, auto&, auto&, auto&, auto& o) { o = opt; }),
            {p, bo.fragment});
    }
  }
  c.add("MhaInto_OutRowsOverlap",
        [](World& w) {
          Eigen::Map<M, 0, Eigen::OuterStride<>> out(w.outh.data(), 4, 12, Eigen::OuterStride<>(5));
          attend::multi_head_attention_into(w.qh, w.kh, w.vh, Heads{4, 2}, out);
        },
        {prefix("multi_head_attention_into"), "out has rows of 12 values 5 apart (out [4, 12])",
         "its rows overlap in memory"});
  // multi_query_attention: one kv head, so only the query count and the widths can be wrong.
  const std::string p = prefix("multi_query_attention");
  c.add("Mqa_QueryHeads0", [](World& w) { attend::multi_query_attention(w.qh, w.kq, w.vq, 0); },
        {p, "heads.query is 0"});
  c.add("Mqa_QueryHeadsNegative", [](World& w) { attend::multi_query_attention(w.qh, w.kq, w.vq, -1); },
        {p, "heads.query is -1"});
  c.add("Mqa_QueryWidthNotAMultiple", [](World& w) { attend::multi_query_attention(w.qh, w.kq, w.vq, 3); },
        {p, "q has 16 columns, expected a positive multiple of query heads (3)"});
  c.add("Mqa_KeyWidthOfTwoKvHeads", [](World& w) { attend::multi_query_attention(w.qh, w.kh, w.vq, 4); },
        {p, "k has 8 columns, expected kv heads (1) * head dim (4) = 4", "k [5, 8]"});
  c.add("Mqa_ValueRows", [](World& w) { attend::multi_query_attention(w.qh, w.kq, w.vh_long, 4); },
        {p, "v has 6 rows, expected k's 5", "v [6, 6]"});
  for (const BadOption& bo : bad_options(4)) {
    const Options opt = bo.options;
    c.add("Mqa_" + bo.name, [opt](World& w) { attend::multi_query_attention(w.qh, w.kq, w.vq, 4, opt); },
          {p, bo.fragment});
  }
}

void add_sinks_and_slopes(Catalogue& c) {
  const std::string p = prefix("apply_sinks");
  const std::vector<double> four(4, 0.5);
  c.add("ApplySinks_ThreeForFourHeads",
        [](World& w) {
          attend::apply_sinks(w.parts[0], {1, 2, 3});
        },
        {p, "sinks has 3 entries, expected one per head of the result (4)"});
  c.add("ApplySinks_None", [](World& w) { attend::apply_sinks(w.parts[0], {}); },
        {p, "sinks has 0 entries, expected one per head of the result (4)"});
  c.add("ApplySinks_NaN",
        [](World& w) {
          attend::apply_sinks(w.parts[0], {0, 0, kNaN, 0});
        },
        {p, "sinks[2] is nan, expected a finite value"});
  c.add("ApplySinks_Inf", [](World& w) { attend::apply_sinks(w.parts[0], {0, kInf, 0, 0}); }, {p, "sinks[1] is inf"});
  c.add("ApplySinks_BeyondFloat",
        [](World& w) {
          attend::apply_sinks(w.parts[0], {0, 0, 0, 1e300});
        },
        {p, "sinks[3] is 1e+300"});
  c.add(
      "ApplySinks_LseRows", [](World& w) { w.parts[0].lse = M::Zero(3, 4); },
      [four](World& w) { attend::apply_sinks(w.parts[0], four); },
      {p, "sink_free.lse is [3, 4], expected [Lq, H] with H dividing out [4, 12]"});
  c.add(
      "ApplySinks_HeadsDoNotDivideOut", [](World& w) { w.parts[0].lse = M::Zero(4, 5); },
      [](World& w) { attend::apply_sinks(w.parts[0], std::vector<double>(5, 0.0)); }, {p, "sink_free.lse is [4, 5]"});
  const std::string g = prefix("geometric_alibi_slopes");
  c.add("GeometricSlopes_Heads0", [](World&) { attend::geometric_alibi_slopes(0); },
        {g, "heads is 0, expected at least 1"});
  c.add("GeometricSlopes_HeadsNegative", [](World&) { attend::geometric_alibi_slopes(-8); }, {g, "heads is -8"});
  c.add("GeometricSlopes_MaxBias0", [](World&) { attend::geometric_alibi_slopes(8, 0); },
        {g, "max_bias is 0, expected a finite value > 0"});
  c.add("GeometricSlopes_MaxBiasNaN", [](World&) { attend::geometric_alibi_slopes(8, kNaN); }, {g, "max_bias is nan"});
}

void add_merge_and_rope(Catalogue& c) {
  const std::string p = prefix("merge_attention");
  using Parts = std::vector<attend::AttentionResult<float>>;
  c.add("Merge_NoParts", [](World&) { attend::merge_attention(Parts{}); }, {p, "parts is empty"});
  c.add(
      "Merge_LseWithoutHeads", [](World& w) { w.parts[0].lse = M(4, 0); },
      [](World& w) { attend::merge_attention(w.parts); },
      {p, "parts[0].lse is [4, 0], expected [Lq, H] with H dividing out [4, 12]"});
  c.add(
      "Merge_HeadsDoNotDivideOut", [](World& w) { w.parts[0].lse = M::Zero(4, 5); },
      [](World& w) { attend::merge_attention(w.parts); }, {p, "parts[0].lse is [4, 5]", "out [4, 12]"});
  c.add(
      "Merge_LseRows", [](World& w) { w.parts[0].lse = M::Zero(3, 4); },
      [](World& w) { attend::merge_attention(w.parts); }, {p, "parts[0].lse is [3, 4]", "out [4, 12]"});
  c.add(
      "Merge_SecondOutRows", [](World& w) { w.parts[1].out = M::Zero(5, 12); },
      [](World& w) { attend::merge_attention(w.parts); },
      {p, "parts[1] has out [5, 12] and lse [4, 4], expected [4, 12] and [4, 4] as parts[0]"});
  c.add(
      "Merge_SecondOutCols", [](World& w) { w.parts[1].out = M::Zero(4, 8); },
      [](World& w) { attend::merge_attention(w.parts); }, {p, "parts[1] has out [4, 8]", "expected [4, 12]"});
  c.add(
      "Merge_SecondLseHeads", [](World& w) { w.parts[1].lse = M::Zero(4, 2); },
      [](World& w) { attend::merge_attention(w.parts); }, {p, "parts[1] has out [4, 12] and lse [4, 2]"});
  c.add(
      "Merge_SecondLseRows", [](World& w) { w.parts[1].lse = M::Zero(2, 4); },
      [](World& w) { attend::merge_attention(w.parts); }, {p, "lse [2, 4], expected [4, 12] and [4, 4]"});
  c.add(
      "Merge_ThirdPartDiffers",
      [](World& w) {
        w.parts.push_back({M::Zero(4, 12), M::Zero(4, 3)});
      },
      [](World& w) { attend::merge_attention(w.parts); }, {p, "parts[2] has out [4, 12] and lse [4, 3]"});
  c.add(
      "Merge_PairMismatch", [](World& w) { w.parts[1].out = M::Zero(4, 4); },
      [](World& w) { attend::merge_attention(w.parts[0], w.parts[1]); }, {p, "parts[1] has out [4, 4]"});

  const std::string r = prefix("apply_rope");
  c.add("Rope_OddHeadDim", [](World& w) { attend::apply_rope(w.x, 3); },
        {r, "rope head dim is 3, expected an even number"});
  c.add("Rope_NegativeHeadDim", [](World& w) { attend::apply_rope(w.x, -2); }, {r, "rope head dim is -2"});
  c.add("Rope_HeadDimDoesNotDivide", [](World& w) { attend::apply_rope(w.x, 6); },
        {r, "x has 16 columns, expected a multiple of the rope head dim (6)"});
  for (auto [name, theta, text] : {std::tuple{"Rope_Theta0", 0.0, "rope theta is 0"},
                                   std::tuple{"Rope_ThetaNegative", -10000.0, "rope theta is -10000"},
                                   std::tuple{"Rope_ThetaInf", kInf, "rope theta is inf"},
                                   std::tuple{"Rope_ThetaNaN", kNaN, "rope theta is nan"}}) {
    const double t = theta;
    c.add(name, [t](World& w) { attend::apply_rope(w.x, 4, 0, t); }, {r, text, "expected a finite value > 0"});
  }
}

void add_linear_and_norm(Catalogue& c) {
  const std::string l = prefix("Linear");
  c.add("Linear_InputWidth", [](World& w) { w.lin(w.x); }, {l, "x is [3, 16], expected 8 columns (weight is [4, 8])"});
  c.add("Linear_InputWithoutColumns", [](World& w) { w.lin(w.x_no_cols); }, {l, "x is [3, 0], expected 8 columns"});
  c.add(
      "Linear_BiasSize", [](World& w) { w.lin.bias = Vec::Ones(3); }, [](World& w) { w.lin(w.xl); },
      {l, "bias has 3 entries, expected 0 (no bias) or 4"});
  c.add(
      "Linear_BiasForTransposedWeight", [](World& w) { w.lin.bias = Vec::Ones(8); }, [](World& w) { w.lin(w.xl); },
      {l, "bias has 8 entries, expected 0 (no bias) or 4"});
  const std::string n = prefix("RMSNorm");
  c.add("RmsNorm_WeightSize", [](World& w) { w.norm(w.x); },
        {n, "weight has 8 entries, expected 0 (identity) or 16 for x [3, 16]"});
  c.add("RmsNorm_InputWithoutColumns", [](World& w) { w.norm(w.x_no_cols); },
        {n, "weight has 8 entries, expected 0 (identity) or 0 for x [3, 0]"});
  // A negative eps can make the mean square negative: sqrt of it is NaN.
  for (const auto& [name, eps, text] : std::vector<std::tuple<std::string, double, std::string>>{
           {"RmsNorm_EpsNegative", -1e-6, "eps is -1e-06, expected a finite value >= 0"},
           {"RmsNorm_EpsInf", kInf, "eps is inf"}}) {
    const double e = eps;
    c.add(
        name, [e](World& w) { w.norm.eps = e; }, [](World& w) { w.norm(w.xl); }, {n, text});
  }
}

void add_mha(Catalogue& c) {
  const std::string ctor = prefix("MultiHeadAttention");
  c.add("MhaCtor_DModelNegative", [](World&) { Mha(-1, 2, 2, 4); }, {ctor, "d_model is -1, expected at least 1"});
  c.add("MhaCtor_Heads0", [](World&) { Mha(16, 0, 1, 4); }, {ctor, "heads is 0, expected at least 1"});
  c.add("MhaCtor_HeadsNegative", [](World&) { Mha(16, -3, 1, 4); }, {ctor, "heads is -3"});
  c.add("MhaCtor_KvHeadsNegative", [](World&) { Mha(16, 4, -1, 4); }, {ctor, "kv_heads is -1"});
  c.add("MhaCtor_HeadDim0", [](World&) { Mha(16, 4, 2, 0); }, {ctor, "head_dim is 0, expected at least 1"});
  c.add("MhaCtor_HeadDimNegative", [](World&) { Mha(16, 4, 2, -4); }, {ctor, "head_dim is -4"});
  c.add("MhaCtor_KvHeadsDoNotDivide", [](World&) { Mha(16, 6, 4, 4); },
        {ctor, "heads (6) is not a multiple of kv_heads (4)"});
  c.add("MhaCtor_MoreKvHeadsThanHeads", [](World&) { Mha(16, 2, 4, 4); },
        {ctor, "heads (2) is not a multiple of kv_heads (4)"});

  const std::string f = prefix("MultiHeadAttention::forward");
  // The three forwards, each checked with the same wrong layers and options.
  struct Forward {
    std::string name;
    std::function<void(World&, const Mha&, const Options&)> call;
  };
  const std::vector<Forward> forwards = {
      {"MhaSelf", [](World& w, const Mha& m, const Options& o) { m.forward(w.x, o); }},
      {"MhaCross", [](World& w, const Mha& m, const Options& o) { m.forward(w.x, w.ctx, o); }},
      {"MhaCached", [](World& w, const Mha& m, const Options& o) { m.forward(w.x, w.cache, o); }},
      {"MhaPaged",
       [](World& w, const Mha& m, const Options& o) {
         m.forward(w.x, w.pcache, {0}, {0, 3}, o);
       }},
  };
  struct Wrong {
    std::string name;
    std::function<void(Mha&)> spoil;
    std::string fragment;
  };
  const std::vector<Wrong> wrongs = {
      {"QProjWeightRows", [](Mha& m) { m.q_proj.weight = M::Zero(12, 16); },
       "q_proj.weight is [12, 16], expected [16, 16] [out_features, in_features]"},
      {"KProjWeightTransposed", [](Mha& m) { m.k_proj.weight = M::Zero(16, 8); },
       "k_proj.weight is [16, 8], expected [8, 16]"},
      {"VProjWeightCols", [](Mha& m) { m.v_proj.weight = M::Zero(8, 15); },
       "v_proj.weight is [8, 15], expected [8, 16]"},
      {"OProjWeightTransposed", [](Mha& m) { m.o_proj.weight = M::Zero(16, 8); },
       "o_proj.weight is [16, 8], expected [16, 16]"},
      {"EmptyWeight", [](Mha& m) { m.q_proj.weight = M(); }, "q_proj.weight is [0, 0], expected [16, 16]"},
      {"QProjBias", [](Mha& m) { m.q_proj.bias = Vec::Zero(8); },
       "q_proj.bias has 8 entries, expected 0 (no bias) or 16"},
      {"KProjBias", [](Mha& m) { m.k_proj.bias = Vec::Zero(16); },
       "k_proj.bias has 16 entries, expected 0 (no bias) or 8"},
      {"VProjBias", [](Mha& m) { m.v_proj.bias = Vec::Zero(1); }, "v_proj.bias has 1 entries"},
      {"OProjBias", [](Mha& m) { m.o_proj.bias = Vec::Zero(17); },
       "o_proj.bias has 17 entries, expected 0 (no bias) or 16"},
      {"HeadsChangedAfterConstruction", [](Mha& m) { m.heads = 3; },
       "layer sizes d_model 16, heads 3, kv_heads 2, head_dim 4 are invalid"},
      {"KvHeadsZeroed", [](Mha& m) { m.kv_heads = 0; }, "kv_heads 0"},
      {"HeadDimChanged", [](Mha& m) { m.head_dim = 5; }, "q_proj.weight is [16, 16], expected [20, 16]"},
      {"DModelChanged", [](Mha& m) { m.d_model = 8; }, "q_proj.weight is [16, 16], expected [16, 8]"},
  };
  for (const Forward& fw : forwards) {
    const auto call = fw.call;
    for (const Wrong& wr : wrongs) {
      const auto spoil = wr.spoil;
      c.add(
          fw.name + "_" + wr.name, [spoil](World& w) { spoil(w.mha); }, [call](World& w) { call(w, w.mha, Options{}); },
          {f, wr.fragment});
    }
    for (const BadOption& bo : bad_options(4)) {
      const Options opt = bo.options;
      c.add(fw.name + "_" + bo.name, [call, opt](World& w) { call(w, w.mha, opt); }, {f, bo.fragment});
    }
  }
  c.add("MhaSelf_InputWidth", [](World& w) { w.mha.forward(w.x_narrow); },
        {f, "x is [3, 15], expected 16 columns (d_model)"});
  c.add("MhaSelf_InputWithoutColumns", [](World& w) { w.mha.forward(w.x_no_cols); }, {f, "x is [3, 0], expected 16"});
  c.add("MhaCross_InputWidth", [](World& w) { w.mha.forward(w.x_narrow, w.ctx); }, {f, "x is [3, 15]"});
  c.add("MhaCross_ContextWidth", [](World& w) { w.mha.forward(w.x, w.ctx_narrow); },
        {f, "context is [5, 17], expected 16 columns (d_model)"});
  c.add("MhaCached_InputWidth", [](World& w) { w.mha.forward(w.x_narrow, w.cache); }, {f, "x is [3, 15]"});
  c.add("MhaCached_CacheOfMoreKvHeads", [](World& w) { Mha(16, 4, 4, 4).forward(w.x, w.cache); },
        {f, "cache holds keys of 8 and values of 8 features per token, expected 16 and 16",
         "filled by a layer of other sizes"});
  c.add("MhaCached_CacheOfLargerHeadDim", [](World& w) { Mha(16, 4, 2, 6).forward(w.x, w.cache); },
        {f, "cache holds keys of 8", "expected 12 and 12"});
  c.add("MhaCached_CacheOfMqa", [](World& w) { Mha(16, 4, 1, 4).forward(w.x, w.cache); }, {f, "expected 4 and 4"});
  // The same widths (8 features per token) in other heads: the cache remembers the layout of the layer that filled
  // it (2 kv heads of head dim 4).
  c.add("MhaCached_CacheOfSameWidthMoreKvHeads", [](World& w) { Mha(16, 4, 4, 2).forward(w.x, w.cache); },
        {f, "cache holds tokens of 2 kv heads of head dim 4 (8 features per token), expected 4 kv heads of head dim 2",
         "filled by a layer of other sizes"});
  c.add("MhaCached_CacheOfSameWidthMqa", [](World& w) { Mha(16, 4, 1, 8).forward(w.x, w.cache); },
        {f, "cache holds tokens of 2 kv heads of head dim 4", "expected 1 kv heads of head dim 8"});
  const std::string ak = prefix("KVCache::append");
  c.add(
      "KvCacheAppend_OtherLayoutOfTheSameWidth", [](World& w) { w.cache.append(w.kh, w.kh, 4, 2); },
      {ak, "cache holds tokens of 2 kv heads of head dim 4 (8 features per token), expected 4 kv heads of head dim 2"});
  c.add("KvCacheAppend_LayoutOfOtherWidth", [](World& w) { w.cache.append(w.kh, w.kh, 3, 2); },
        {ak, "k is [5, 8] and v [5, 8], expected kv_heads (3) * head_dim (2) = 6 columns in both"});
  c.add("KvCacheAppend_KvHeads0", [](World& w) { w.cache.append(w.kh, w.kh, 0, 8); },
        {ak, "kv_heads is 0 and head_dim 8, expected both at least 1"});
  c.add("KvCacheAppend_RowsDiffer", [](World& w) { w.cache.append(w.kh, w.v_long, 2, 4); },
        {ak, "k has 5 rows and v 6, expected one row per token in both"});
  c.add("KvCacheAppend_OtherWidthsWithoutLayout", [](World& w) { w.cache.append(w.kh_wide, w.kh_wide); },
        {ak, "cache holds keys of 8 and values of 8 features per token, expected 12 and 12"});

  const std::string rk = prefix("KVCache::reserve");
  c.add("KvCacheReserve_OtherWidths", [](World& w) { w.cache.reserve(100, 4, 4); },
        {rk, "cache holds keys of 8 and values of 8 features per token, expected 4 and 4"});
  c.add("KvCacheReserve_OtherValueWidth", [](World& w) { w.cache.reserve(100, 8, 16); }, {rk, "expected 8 and 16"});
  c.add("KvCacheReserve_OtherKeyWidth", [](World& w) { w.cache.reserve(2, 6, 8); }, {rk, "expected 6 and 8"});
  c.add("KvCacheReserve_NegativeKeyWidth", [](World& w) { w.cache.reserve(10, -1, 8); },
        {rk, "tokens 10, key_width -1 and value_width 8 must not be negative"});
  c.add("KvCacheReserve_NegativeValueWidth", [](World& w) { w.cache.reserve(10, 8, -8); }, {rk, "value_width -8"});
  c.add("KvCacheReserve_NegativeTokens", [](World& w) { w.cache.reserve(-1, 8, 8); }, {rk, "tokens -1"});
}

void add_mla(Catalogue& c) {
  const std::string ctor = prefix("MultiHeadLatentAttention");
  struct BadConfig {
    std::string name;
    MlaConfig config;
    std::string fragment;
  };
  const std::vector<BadConfig> configs = {
      {"DModel0", {0, 2, 0, 6, 4, 2, 4}, "config.d_model is 0, expected at least 1"},
      {"HeadsNegative", {16, -1, 0, 6, 4, 2, 4}, "config.heads is -1"},
      {"QLoraNegative", {16, 2, -1, 6, 4, 2, 4}, "config.q_lora_rank is -1, expected >= 0"},
      {"KvLoraNegative", {16, 2, 0, -2, 4, 2, 4}, "config.kv_lora_rank is -2, expected at least 1"},
      {"NopeNegative", {16, 2, 0, 6, -1, 2, 4}, "config.qk_nope_head_dim -1 and qk_rope_head_dim 2"},
      {"RopeNegative", {16, 2, 0, 6, 4, -2, 4}, "qk_rope_head_dim -2 must be >= 0"},
      {"NoQueryKeyDims",
       {16, 2, 0, 6, 0, 0, 4},
       "config.qk_nope_head_dim 0 and qk_rope_head_dim 0 must be >= 0 with a positive sum"},
      {"RopeOdd", {16, 2, 0, 6, 4, 5, 4}, "config.qk_rope_head_dim is 5, expected an even number"},
      {"ValueDim0", {16, 2, 0, 6, 4, 2, 0}, "config.v_head_dim is 0, expected at least 1"},
      {"Theta0", {16, 2, 0, 6, 4, 2, 4, 0.0}, "config.rope_theta is 0, expected a finite value > 0"},
      {"ThetaNaN", {16, 2, 0, 6, 4, 2, 4, kNaN}, "config.rope_theta is nan"},
      {"ThetaInf", {16, 2, 0, 6, 4, 2, 4, kInf}, "config.rope_theta is inf"},
      // nope + rope overflows int: the checks add in Index (UBSan under the asan preset would report otherwise).
      {"NopeIntMaxValueDim0",
       {16, 2, 0, 6, std::numeric_limits<int>::max(), 2, 0},
       "config.v_head_dim is 0, expected at least 1"},
  };
  for (const BadConfig& bc : configs) {
    const MlaConfig cfg = bc.config;
    c.add("MlaCtor_" + bc.name, [cfg](World&) { Mla m(cfg); }, {ctor, bc.fragment});
  }

  const std::string f = prefix("MultiHeadLatentAttention::forward");
  struct Forward {
    std::string name;
    std::function<void(World&, const Mla&, const Options&)> call;
  };
  const std::vector<Forward> forwards = {
      {"MlaSelf", [](World& w, const Mla& m, const Options& o) { m.forward(w.x, o); }},
      {"MlaCached", [](World& w, const Mla& m, const Options& o) { m.forward(w.x, w.lcache, o); }},
      {"MlaPaged",
       [](World& w, const Mla& m, const Options& o) {
         m.forward(w.x, w.plcache, {2, 0}, {0, 1, 3}, o);
       }},
  };
  struct Wrong {
    std::string name;
    bool q_lora;  // applies to mla_q (query compression) instead of mla
    std::function<void(Mla&)> spoil;
    std::string fragment;
  };
  const std::vector<Wrong> wrongs = {
      {"QProjWeight", false, [](Mla& m) { m.q_proj.weight = M::Zero(10, 16); },
       "q_proj.weight is [10, 16], expected [12, 16]"},
      {"QProjBias", false, [](Mla& m) { m.q_proj.bias = Vec::Zero(6); },
       "q_proj.bias has 6 entries, expected 0 (no bias) or 12"},
      {"QLoraSetWithoutItsWeights", false, [](Mla& m) { m.config.q_lora_rank = 8; },
       "q_a_proj.weight is [0, 0], expected [8, 16]"},
      {"QAProjWeight", true, [](Mla& m) { m.q_a_proj.weight = M::Zero(8, 12); },
       "q_a_proj.weight is [8, 12], expected [8, 16]"},
      {"QALayernorm", true, [](Mla& m) { m.q_a_layernorm.weight = Vec::Ones(6); },
       "q_a_layernorm.weight has 6 entries, expected 0 (identity) or 8"},
      {"QBProjWeight", true, [](Mla& m) { m.q_b_proj.weight = M::Zero(12, 6); },
       "q_b_proj.weight is [12, 6], expected [12, 8]"},
      {"QBProjBias", true, [](Mla& m) { m.q_b_proj.bias = Vec::Zero(8); }, "q_b_proj.bias has 8 entries"},
      {"KvAProjWeight", false, [](Mla& m) { m.kv_a_proj_with_mqa.weight = M::Zero(6, 16); },
       "kv_a_proj_with_mqa.weight is [6, 16], expected [8, 16]"},
      {"KvAProjBias", false, [](Mla& m) { m.kv_a_proj_with_mqa.bias = Vec::Zero(6); },
       "kv_a_proj_with_mqa.bias has 6 entries, expected 0 (no bias) or 8"},
      {"KvALayernorm", false, [](Mla& m) { m.kv_a_layernorm.weight = Vec::Ones(8); },
       "kv_a_layernorm.weight has 8 entries, expected 0 (identity) or 6"},
      {"KvBProjWeight", false, [](Mla& m) { m.kv_b_proj.weight = M::Zero(16, 8); },
       "kv_b_proj.weight is [16, 8], expected [16, 6]"},
      {"KvBProjBias", false, [](Mla& m) { m.kv_b_proj.bias = Vec::Zero(6); },
       "kv_b_proj.bias has 6 entries, expected 0 (no bias) or 16"},
      {"OProjWeight", false, [](Mla& m) { m.o_proj.weight = M::Zero(16, 16); },
       "o_proj.weight is [16, 16], expected [16, 8]"},
      {"OProjBias", false, [](Mla& m) { m.o_proj.bias = Vec::Zero(8); }, "o_proj.bias has 8 entries"},
      {"HeadsZeroed", false, [](Mla& m) { m.config.heads = 0; }, "config.heads is 0"},
      {"RopeMadeOdd", false, [](Mla& m) { m.config.qk_rope_head_dim = 3; }, "config.qk_rope_head_dim is 3"},
      {"ThetaZeroed", false, [](Mla& m) { m.config.rope_theta = 0; }, "config.rope_theta is 0"},
      {"QALayernormEpsInf", true, [](Mla& m) { m.q_a_layernorm.eps = kInf; },
       "q_a_layernorm.eps is inf, expected a finite value >= 0"},
      {"KvALayernormEpsNegative", false, [](Mla& m) { m.kv_a_layernorm.eps = -1; }, "kv_a_layernorm.eps is -1"},
  };
  for (const Forward& fw : forwards) {
    const auto call = fw.call;
    for (const Wrong& wr : wrongs) {
      const auto spoil = wr.spoil;
      const bool q_lora = wr.q_lora;
      // mla_q's cache would be of the same widths; the world's latent cache serves both.
      c.add(
          fw.name + "_" + wr.name, [spoil, q_lora](World& w) { spoil(q_lora ? w.mla_q : w.mla); },
          [call, q_lora](World& w) { call(w, q_lora ? w.mla_q : w.mla, Options{}); }, {f, wr.fragment});
    }
    for (const BadOption& bo : bad_options(2)) {
      const Options opt = bo.options;
      c.add(fw.name + "_" + bo.name, [call, opt](World& w) { call(w, w.mla, opt); }, {f, bo.fragment});
    }
  }
  c.add("MlaSelf_InputWidth", [](World& w) { w.mla.forward(w.x_narrow); },
        {f, "x is [3, 15], expected 16 columns (d_model)"});
  c.add("MlaCached_InputWidth", [](World& w) { w.mla.forward(w.x_narrow, w.lcache); }, {f, "x is [3, 15]"});
  c.add("MlaCached_CacheOfLargerLatent",
        [](World& w) {
          Mla(MlaConfig{16, 2, 0, 8, 4, 2, 4}).forward(w.x, w.lcache);
        },
        {f,
         "cache holds latents of 6 and rope keys of 2 features per token, expected kv_lora_rank 8 and "
         "qk_rope_head_dim 2",
         "filled by a layer of other sizes"});
  c.add("MlaCached_CacheOfLargerRope",
        [](World& w) {
          Mla(MlaConfig{16, 2, 0, 6, 4, 4, 4}).forward(w.x, w.lcache);
        },
        {f, "expected kv_lora_rank 6 and qk_rope_head_dim 4"});
  c.add("MlaCached_CacheOfSameTotalWidth",
        [](World& w) {
          Mla(MlaConfig{16, 2, 0, 4, 4, 4, 4}).forward(w.x, w.lcache);
        },
        {f, "cache holds latents of 6 and rope keys of 2", "expected kv_lora_rank 4 and qk_rope_head_dim 4"});
  c.add(
      "MlaCached_KeyBiasWithSoftcap", [](World& w) { w.mla.kv_b_proj.bias = Vec::Ones(16); },
      [](World& w) { w.mla.forward(w.x, w.lcache, softcap(30)); },
      {f, "kv_b_proj.bias has nonzero key entries and options.softcap is 30"});

  const std::string rl = prefix("LatentCache::reserve");
  c.add("LatentCacheReserve_OtherLatentWidth", [](World& w) { w.lcache.reserve(100, 8, 2); },
        {rl,
         "cache holds latents of 6 and rope keys of 2 features per token, expected kv_lora_rank 8 and "
         "qk_rope_head_dim 2"});
  c.add("LatentCacheReserve_OtherRopeWidth", [](World& w) { w.lcache.reserve(100, 6, 4); },
        {rl, "expected kv_lora_rank 6 and qk_rope_head_dim 4"});
  c.add("LatentCacheReserve_SameTotalWidth", [](World& w) { w.lcache.reserve(1, 4, 4); },
        {rl, "expected kv_lora_rank 4 and qk_rope_head_dim 4"});
  c.add("LatentCacheReserve_NegativeRopeWidth", [](World& w) { w.lcache.reserve(10, 6, -2); },
        {rl, "tokens 10, latent_width 6 and rope_width -2 must not be negative"});
  c.add("LatentCacheReserve_NegativeLatentWidth", [](World& w) { w.lcache.reserve(10, -6, 2); },
        {rl, "latent_width -6"});
  c.add("LatentCacheReserve_NegativeTokens", [](World& w) { w.lcache.reserve(-3, 6, 2); }, {rl, "tokens -3"});
}

void add_conversions(Catalogue& c) {
  const std::string g = prefix("to_grouped");
  c.add("ToGrouped_KvHeadsNegative", [](World& w) { attend::to_grouped(w.mha, -1); },
        {g, "kv_heads is -1, expected a divisor of the source's kv heads (2)"});
  c.add("ToGrouped_MoreKvHeadsThanSource", [](World& w) { attend::to_grouped(w.mha, 4); }, {g, "kv_heads is 4"});
  c.add(
      "ToGrouped_SourceWeights", [](World& w) { w.mha.v_proj.weight = M::Zero(16, 16); },
      [](World& w) { attend::to_grouped(w.mha, 1); }, {g, "v_proj.weight is [16, 16], expected [8, 16]"});
  c.add(
      "ToGrouped_SourceBias", [](World& w) { w.mha.k_proj.bias = Vec::Zero(4); },
      [](World& w) { attend::to_grouped(w.mha, 1); }, {g, "k_proj.bias has 4 entries"});
  c.add(
      "ToGrouped_SourceSizes", [](World& w) { w.mha.heads = 3; }, [](World& w) { attend::to_grouped(w.mha, 1); },
      {g, "layer sizes d_model 16, heads 3, kv_heads 2, head_dim 4 are invalid"});

  const std::string l = prefix("to_latent");
  c.add("ToLatent_RankNegative", [](World& w) { attend::to_latent(w.mha, -1); },
        {l, "kv_lora_rank is -1, expected 1..16 (the stacked [W_k; W_v] is [32, 16])"});
  c.add("ToLatent_RankAboveDModel", [](World& w) { attend::to_latent(w.mha, 17); },
        {l, "kv_lora_rank is 17, expected 1..16"});
  c.add(
      "ToLatent_SourceWeights", [](World& w) { w.mha.o_proj.weight = M::Zero(16, 15); },
      [](World& w) { attend::to_latent(w.mha, 4); }, {l, "o_proj.weight is [16, 15], expected [16, 16]"});
  c.add(
      "ToLatent_SourceBias", [](World& w) { w.mha.v_proj.bias = Vec::Zero(5); },
      [](World& w) { attend::to_latent(w.mha, 4); }, {l, "v_proj.bias has 5 entries"});
  c.add(
      "ToLatent_SourceSizes", [](World& w) { w.mha.kv_heads = 3; }, [](World& w) { attend::to_latent(w.mha, 4); },
      {l, "kv_heads 3", "are invalid"});

  // Non-finite weights: the conversions would spread them (pooled heads, every singular vector) or copy them.
  for (const auto& [name, spoil, fragment] :
       std::vector<std::tuple<std::string, std::function<void(Mha&)>, std::string>>{
           {"KProjWeightNaN", [](Mha& m) { m.k_proj.weight(3, 5) = kNaN; }, "k_proj.weight[3, 5] is nan"},
           {"VProjWeightInf", [](Mha& m) { m.v_proj.weight(7, 0) = kInf; }, "v_proj.weight[7, 0] is inf"},
           {"QProjWeightNaN", [](Mha& m) { m.q_proj.weight(0, 15) = kNaN; }, "q_proj.weight[0, 15] is nan"},
           {"OProjWeightMinusInf", [](Mha& m) { m.o_proj.weight(15, 2) = -kInf; }, "o_proj.weight[15, 2] is -inf"},
           {"KProjBiasInf", [](Mha& m) { m.k_proj.bias(1) = kInf; }, "k_proj.bias[1] is inf, expected finite biases"},
           {"OProjBiasNaN", [](Mha& m) { m.o_proj.bias(4) = kNaN; }, "o_proj.bias[4] is nan"}}) {
    const auto sp = spoil;
    c.add(
        "ToGrouped_" + name, [sp](World& w) { sp(w.mha); }, [](World& w) { attend::to_grouped(w.mha, 1); },
        {g, fragment, fragment.find("bias") == std::string::npos ? "expected finite weights" : "expected finite"});
    c.add(
        "ToLatent_" + name, [sp](World& w) { sp(w.mha); }, [](World& w) { attend::to_latent(w.mha, 8); },
        {l, fragment});
  }

  const std::string s = prefix("kv_singular_values");
  c.add(
      "KvSingularValues_SourceWeights", [](World& w) { w.mha.k_proj.weight = M::Zero(8, 12); },
      [](World& w) { attend::kv_singular_values(w.mha); }, {s, "k_proj.weight is [8, 12], expected [8, 16]"});
  c.add(
      "KvSingularValues_SourceBias", [](World& w) { w.mha.q_proj.bias = Vec::Zero(3); },
      [](World& w) { attend::kv_singular_values(w.mha); }, {s, "q_proj.bias has 3 entries"});
  c.add(
      "KvSingularValues_SourceSizes", [](World& w) { w.mha.head_dim = 0; },
      [](World& w) { attend::kv_singular_values(w.mha); }, {s, "head_dim 0", "are invalid"});
  c.add(
      "KvSingularValues_KProjWeightNaN", [](World& w) { w.mha.k_proj.weight(2, 9) = kNaN; },
      [](World& w) { attend::kv_singular_values(w.mha); }, {s, "k_proj.weight[2, 9] is nan, expected finite weights"});
  c.add(
      "KvSingularValues_VProjWeightInf", [](World& w) { w.mha.v_proj.weight(0, 0) = -kInf; },
      [](World& w) { attend::kv_singular_values(w.mha); }, {s, "v_proj.weight[0, 0] is -inf"});
}

// The backward's own arguments: out, lse and dout against q and v, and the layers' dy.
void add_backward(Catalogue& c) {
  const std::string s = prefix("scaled_dot_product_attention_backward");
  const auto sdpa = [](const M World::*out, const M World::*lse, const M World::*dout) {
    return [out, lse, dout](World& w) {
      attend::scaled_dot_product_attention_backward(w.q, w.k, w.v, w.*out, w.*lse, w.*dout);
    };
  };
  c.add("SdpaBackward_OutRows", sdpa(&World::out_rows, &World::lse_one, &World::out),
        {s, "out is [3, 6], expected [Lq, H*dv] = [4, 6]", "q [4, 8]", "v [5, 6]"});
  c.add("SdpaBackward_OutCols", sdpa(&World::out_cols, &World::lse_one, &World::out),
        {s, "out is [4, 5], expected [Lq, H*dv] = [4, 6]"});
  c.add("SdpaBackward_OutEmpty", sdpa(&World::out_empty, &World::lse_one, &World::out), {s, "out is [0, 0]"});
  c.add("SdpaBackward_LseCols", sdpa(&World::out, &World::q, &World::out),
        {s, "lse is [4, 8], expected [Lq, H] = [4, 1]", "q [4, 8]"});
  c.add("SdpaBackward_LseEmpty", sdpa(&World::out, &World::out_empty, &World::out),
        {s, "lse is [0, 0], expected [Lq, H] = [4, 1]"});
  c.add("SdpaBackward_DoutRows", sdpa(&World::out, &World::lse_one, &World::out_rows),
        {s, "dout is [3, 6], expected [Lq, H*dv] = [4, 6]", "out [4, 6]"});
  c.add("SdpaBackward_DoutCols", sdpa(&World::out, &World::lse_one, &World::out_cols),
        {s, "dout is [4, 5], expected [Lq, H*dv] = [4, 6]"});
  c.add("SdpaBackwardBias_OutRows",
        [](World& w) {
          attend::scaled_dot_product_attention_backward(w.q, w.k, w.v, w.bias, w.out_rows, w.lse_one, w.out);
        },
        {s, "out is [3, 6], expected [Lq, H*dv] = [4, 6]"});
  c.add("SdpaBackwardBias_BiasBeforeOut",
        [](World& w) {
          attend::scaled_dot_product_attention_backward(w.q, w.k, w.v, w.bias_t, w.out_rows, w.lse_one, w.out);
        },
        {s, "bias is [5, 4], expected [Lq, Lk] = [4, 5]"});

  const std::string m = prefix("multi_head_attention_backward");
  const auto mha = [](const M World::*out, const M World::*lse, const M World::*dout) {
    return [out, lse, dout](World& w) {
      attend::multi_head_attention_backward(w.qh, w.kh, w.vh, w.*out, w.*lse, w.*dout, Heads{4, 2});
    };
  };
  c.add("MhaBackward_OutCols", mha(&World::outh_bad, &World::lse_one, &World::outh),
        {m, "out is [4, 11], expected [Lq, H*dv] = [4, 12]", "q [4, 16]", "v [5, 6]"});
  c.add("MhaBackward_OutRows", mha(&World::x, &World::lse_one, &World::outh),
        {m, "out is [3, 16], expected [Lq, H*dv] = [4, 12]"});
  c.add("MhaBackward_LseOfOneHead", mha(&World::outh, &World::lse_one, &World::outh),
        {m, "lse is [4, 1], expected [Lq, H] = [4, 4]"});
  c.add("MhaBackward_LseRows", mha(&World::outh, &World::bias_rows, &World::outh),
        {m, "lse is [3, 5], expected [Lq, H] = [4, 4]"});
  c.add("MhaBackward_DoutCols",
        [](World& w) {
          attend::multi_head_attention_backward(w.qh, w.kh, w.vh, w.outh, w.parts[0].lse, w.outh_bad, Heads{4, 2});
        },
        {m, "dout is [4, 11], expected [Lq, H*dv] = [4, 12]", "out [4, 12]"});
  c.add("MhaBackward_DoutRows",
        [](World& w) {
          attend::multi_head_attention_backward(w.qh, w.kh, w.vh, w.outh, w.parts[0].lse, w.x, Heads{4, 2});
        },
        {m, "dout is [3, 16], expected [Lq, H*dv] = [4, 12]"});
  c.add("MhaBackward_OutOfAnotherValueWidth",
        [](World& w) {
          attend::multi_head_attention_backward(w.qh, w.kq, w.vh, w.outh, w.parts[0].lse, w.outh, Heads{4, 1});
        },
        {m, "out is [4, 12], expected [Lq, H*dv] = [4, 24]", "v [5, 6]"});

  // The layers: dy, and the checks the forward makes.
  const std::string f = prefix("MultiHeadAttention::backward");
  c.add("MhaSelfBackward_DyWidth", [](World& w) { w.mha.backward(w.x, w.x_narrow); },
        {f, "dy is [3, 15], expected the output's shape [L, d_model] = [3, 16]"});
  c.add("MhaSelfBackward_DyRows", [](World& w) { w.mha.backward(w.x, w.ctx); },
        {f, "dy is [5, 16], expected the output's shape [L, d_model] = [3, 16]"});
  c.add("MhaSelfBackward_InputWidth", [](World& w) { w.mha.backward(w.x_narrow, w.x); },
        {f, "x is [3, 15], expected 16 columns (d_model)"});
  c.add("MhaCrossBackward_DyRowsOfContext", [](World& w) { w.mha.backward(w.x, w.ctx, w.ctx); },
        {f, "dy is [5, 16], expected the output's shape [L, d_model] = [3, 16]"});
  c.add("MhaCrossBackward_ContextWidth", [](World& w) { w.mha.backward(w.x, w.ctx_narrow, w.x); },
        {f, "context is [5, 17], expected 16 columns (d_model)"});
  c.add(
      "MhaSelfBackward_OProjBias", [](World& w) { w.mha.o_proj.bias = Vec::Zero(17); },
      [](World& w) { w.mha.backward(w.x, w.x); }, {f, "o_proj.bias has 17 entries, expected 0 (no bias) or 16"});
  c.add(
      "MhaCrossBackward_KProjWeight", [](World& w) { w.mha.k_proj.weight = M::Zero(16, 8); },
      [](World& w) { w.mha.backward(w.x, w.ctx, w.x); }, {f, "k_proj.weight is [16, 8], expected [8, 16]"});
  for (const BadOption& bo : bad_options(4)) {
    const Options opt = bo.options;
    c.add("MhaSelfBackward_" + bo.name, [opt](World& w) { w.mha.backward(w.x, w.x, opt); }, {f, bo.fragment});
    c.add("MhaCrossBackward_" + bo.name, [opt](World& w) { w.mha.backward(w.x, w.ctx, w.x, opt); }, {f, bo.fragment});
  }
  const std::string l = prefix("MultiHeadLatentAttention::backward");
  c.add("MlaSelfBackward_DyWidth", [](World& w) { w.mla.backward(w.x, w.x_narrow); },
        {l, "dy is [3, 15], expected the output's shape [L, d_model] = [3, 16]"});
  c.add("MlaSelfBackward_DyRows", [](World& w) { w.mla_q.backward(w.x, w.ctx); }, {l, "dy is [5, 16]"});
  c.add("MlaSelfBackward_InputWidth", [](World& w) { w.mla.backward(w.x_narrow, w.x); }, {l, "x is [3, 15]"});
  c.add(
      "MlaSelfBackward_KvBProjWeight", [](World& w) { w.mla.kv_b_proj.weight = M::Zero(16, 8); },
      [](World& w) { w.mla.backward(w.x, w.x); }, {l, "kv_b_proj.weight is [16, 8], expected [16, 6]"});
  c.add(
      "MlaSelfBackward_QALayernorm", [](World& w) { w.mla_q.q_a_layernorm.weight = Vec::Ones(6); },
      [](World& w) { w.mla_q.backward(w.x, w.x); }, {l, "q_a_layernorm.weight has 6 entries"});
  for (const BadOption& bo : bad_options(2)) {
    const Options opt = bo.options;
    c.add("MlaSelfBackward_" + bo.name, [opt](World& w) { w.mla.backward(w.x, w.x, opt); }, {l, bo.fragment});
  }
}

// Ragged batches, paged caches and the layers' continuous-batching forwards.
void add_serving(Catalogue& c) {
  using attend::Ragged;
  for (const std::string fn : {"multi_head_attention", "multi_head_attention_with_lse"}) {
    const std::string p = prefix(fn), name = fn == "multi_head_attention" ? "RaggedMha" : "RaggedMhaLse";
    const bool lse = fn != "multi_head_attention";
    const auto call = [lse](World& w, const M& k, const Ragged& r, const Options& o) {
      if (lse)
        attend::multi_head_attention_with_lse(w.qh, k, w.vh, r, Heads{4, 2}, o);
      else
        attend::multi_head_attention(w.qh, k, w.vh, r, Heads{4, 2}, o);
    };
    const auto offsets = [call](Ragged r) { return [call, r](World& w) { call(w, w.kh, r, Options{}); }; };
    c.add(name + "_OffsetsOfTwoSizes", offsets({{0, 4}, {0, 2, 5}}),
          {p, "ragged.q_offsets has 2 entries and ragged.kv_offsets 3, expected the same number"});
    c.add(name + "_NoOffsets", offsets({{}, {}}), {p, "ragged.q_offsets is empty, expected 0 ... q's rows (4)"});
    c.add(name + "_QOffsetsFromOne", offsets({{1, 4}, {0, 5}}), {p, "ragged.q_offsets[0] is 1, expected 0"});
    c.add(name + "_QOffsetsDecrease", offsets({{0, 3, 2, 4}, {0, 1, 2, 5}}),
          {p, "ragged.q_offsets[2] is 2, below ragged.q_offsets[1] = 3 (offsets must not decrease)"});
    c.add(name + "_QOffsetsShort", offsets({{0, 3}, {0, 5}}), {p, "ragged.q_offsets ends at 3, expected q's rows (4)"});
    c.add(name + "_QOffsetsLong", offsets({{0, 2, 6}, {0, 1, 5}}), {p, "ragged.q_offsets ends at 6"});
    c.add(name + "_KvOffsetsFromMinusOne", offsets({{0, 4}, {-1, 5}}), {p, "ragged.kv_offsets[0] is -1, expected 0"});
    c.add(name + "_KvOffsetsDecrease", offsets({{0, 1, 2, 4}, {0, 5, 3, 5}}),
          {p, "ragged.kv_offsets[2] is 3, below ragged.kv_offsets[1] = 5"});
    c.add(name + "_KvOffsetsLong", offsets({{0, 4}, {0, 6}}),
          {p, "ragged.kv_offsets ends at 6, expected k's rows (5)"});
    c.add(name + "_KeyWidth", [call](World& w) { call(w, w.kh_wide, w.ragged, Options{}); },
          {p, "k has 12 columns, expected kv heads (2) * head dim (4) = 8", "q [4, 16]", "k [5, 12]"});
    c.add(name + "_ValueRows",
          [lse](World& w) {
            if (lse)
              attend::multi_head_attention_with_lse(w.qh, w.kh, w.vh_long, w.ragged, Heads{4, 2});
            else
              attend::multi_head_attention(w.qh, w.kh, w.vh_long, w.ragged, Heads{4, 2});
          },
          {p, "v has 6 rows, expected k's 5"});
    for (const BadOption& bo : bad_options(4)) {
      const Options opt = bo.options;
      c.add(name + "_" + bo.name, [call, opt](World& w) { call(w, w.kh, w.ragged, opt); }, {p, bo.fragment});
    }
  }

  const std::string ctor = prefix("PagedKVCache"), lctor = prefix("PagedLatentCache");
  c.add("PagedKvCacheCtor_PageTokens0", [](World&) { attend::PagedKVCache<float> p(0); },
        {ctor, "page_tokens is 0, expected at least 1"});
  c.add("PagedKvCacheCtor_PageTokensNegative", [](World&) { attend::PagedKVCache<float> p(-16); },
        {ctor, "page_tokens is -16"});
  c.add("PagedLatentCacheCtor_PageTokens0", [](World&) { attend::PagedLatentCache<float> p(0); },
        {lctor, "page_tokens is 0, expected at least 1"});
  const std::string held = "which the cache does not hold (never added, or released; it holds 2 sequences)";
  for (const auto& [what, seq] :
       std::vector<std::pair<std::string, int>>{{"Released", 1}, {"Unknown", 3}, {"Negative", -1}}) {
    const int s = seq;
    const std::string is = "seq is " + std::to_string(s) + ", ";
    c.add("PagedKvCacheRelease_" + what, [s](World& w) { w.pcache.release(s); },
          {prefix("PagedKVCache::release"), is + held});
    c.add("PagedKvCacheLength_" + what, [s](World& w) { w.pcache.length(s); }, {prefix("PagedKVCache::length"), is});
    c.add("PagedKvCacheKeys_" + what, [s](World& w) { w.pcache.keys(s); }, {prefix("PagedKVCache::keys"), is});
    c.add("PagedKvCacheValues_" + what, [s](World& w) { w.pcache.values(s); }, {prefix("PagedKVCache::values"), is});
    c.add("PagedLatentCacheRelease_" + what, [s](World& w) { w.plcache.release(s); },
          {prefix("PagedLatentCache::release"), is + held});
    c.add("PagedLatentCacheLength_" + what, [s](World& w) { w.plcache.length(s); },
          {prefix("PagedLatentCache::length"), is});
    c.add("PagedLatentCacheEntries_" + what, [s](World& w) { w.plcache.entries(s); },
          {prefix("PagedLatentCache::entries"), is});
  }
  const std::string ap = prefix("PagedKVCache::append");
  c.add("PagedKvCacheAppend_OtherWidths", [](World& w) { w.pcache.append(2, M::Ones(1, 4), M::Ones(1, 4)); },
        {ap, "cache holds keys of 8 and values of 8 features per token, expected 4 and 4"});
  c.add("PagedKvCacheAppend_RowsDiffer", [](World& w) { w.pcache.append(2, M::Ones(2, 8), M::Ones(1, 8)); },
        {ap, "k has 2 rows and v 1, expected one row per token in both (k [2, 8], v [1, 8])"});
  c.add("PagedKvCacheAppend_Released", [](World& w) { w.pcache.append(1, M::Ones(1, 8), M::Ones(1, 8)); },
        {ap, "seqs[0] is 1, " + held});
  c.add("PagedKvCacheAppend_IdTwice",
        [](World& w) {
          w.pcache.append({2, 2}, {0, 1, 2}, M::Ones(2, 8), M::Ones(2, 8));
        },
        {ap, "seqs[1] is 2, which seqs[0] already names"});
  const std::string lap = prefix("PagedLatentCache::append");
  c.add("PagedLatentCacheAppend_OtherWidths",
        [](World& w) {
          w.plcache.append({2}, {0, 1}, M::Ones(1, 8), 4);
        },
        {lap, "cache holds latents of 6 and rope keys of 2 features per token, expected kv_lora_rank 4"});
  c.add("PagedLatentCacheAppend_LatentBeyondRows",
        [](World& w) {
          w.plcache.append({2}, {0, 1}, M::Ones(1, 8), 9);
        },
        {lap, "latent_width is 9, expected 0 to the rows' 8 columns"});

  // The forwards: the batch is checked before any sequence changes.
  struct Batch {
    std::string name;
    std::vector<int> seqs;
    std::vector<Index> offsets;
    std::string fragment;
  };
  const std::vector<Batch> batches = {
      {"UnknownId", {7}, {0, 3}, "seqs[0] is 7, " + held},
      {"ReleasedId", {0, 1}, {0, 1, 3}, "seqs[1] is 1, " + held},
      {"NegativeId", {-1}, {0, 3}, "seqs[0] is -1"},
      {"IdTwice", {0, 2, 0}, {0, 1, 2, 3}, "seqs[2] is 0, which seqs[0] already names (each sequence at most once a"},
      {"OffsetsForOtherCount", {0, 2}, {0, 3}, "x_offsets has 2 entries, expected seqs.size() + 1 = 3"},
      {"NoOffsets", {}, {}, "x_offsets has 0 entries, expected seqs.size() + 1 = 1"},
      {"OffsetsFromOne", {0}, {1, 3}, "x_offsets[0] is 1, expected 0"},
      {"OffsetsDecrease", {0, 2}, {0, 3, 2}, "x_offsets[2] is 2, below x_offsets[1] = 3 (offsets must not decrease)"},
      {"OffsetsShort", {0}, {0, 2}, "x_offsets ends at 2, expected x's rows (3) (x [3, 16])"},
      {"OffsetsLong", {0, 2}, {0, 3, 4}, "x_offsets ends at 4, expected x's rows (3)"},
      {"NoSequencesForRows", {}, {0}, "x_offsets ends at 0, expected x's rows (3)"},
  };
  const std::string f = prefix("MultiHeadAttention::forward"), lf = prefix("MultiHeadLatentAttention::forward");
  for (const Batch& b : batches) {
    const auto seqs = b.seqs;
    const auto offsets = b.offsets;
    c.add("MhaPaged_" + b.name, [seqs, offsets](World& w) { w.mha.forward(w.x, w.pcache, seqs, offsets); },
          {f, b.fragment});
    c.add("MlaPaged_" + b.name, [seqs, offsets](World& w) { w.mla.forward(w.x, w.plcache, seqs, offsets); },
          {lf, b.fragment});
  }
  c.add("MhaPaged_InputWidth",
        [](World& w) {
          w.mha.forward(w.x_narrow, w.pcache, {0}, {0, 3});
        },
        {f, "x is [3, 15], expected 16 columns (d_model)"});
  c.add("MhaPaged_CacheOfMoreKvHeads",
        [](World& w) {
          Mha(16, 4, 4, 4).forward(w.x, w.pcache, {2}, {0, 3});
        },
        {f, "cache holds keys of 8 and values of 8 features per token, expected 16 and 16",
         "filled by a layer of other sizes"});
  c.add("MhaPaged_CacheOfLargerHeadDim",
        [](World& w) {
          Mha(16, 4, 2, 6).forward(w.x, w.pcache, {0}, {0, 3});
        },
        {f, "expected 12 and 12"});
  c.add("MlaPaged_InputWidth",
        [](World& w) {
          w.mla.forward(w.x_narrow, w.plcache, {0}, {0, 3});
        },
        {lf, "x is [3, 15], expected 16 columns (d_model)"});
  c.add("MlaPaged_CacheOfLargerLatent",
        [](World& w) {
          Mla(MlaConfig{16, 2, 0, 8, 4, 2, 4}).forward(w.x, w.plcache, {2}, {0, 3});
        },
        {lf, "cache holds latents of 6 and rope keys of 2 features per token, expected kv_lora_rank 8",
         "filled by a layer of other sizes"});
  c.add(
      "MlaPaged_KeyBiasWithSoftcap", [](World& w) { w.mla.kv_b_proj.bias = Vec::Ones(16); },
      [](World& w) {
        w.mla.forward(w.x, w.plcache, {0}, {0, 3}, softcap(30));
      },
      {lf, "kv_b_proj.bias has nonzero key entries and options.softcap is 30"});
}

// 8 bits: the ragged q8 calls, the 8-bit paged caches and the layers over them.
void add_serving_q8(Catalogue& c) {
  using attend::Ragged;
  for (const std::string fn : {"multi_head_attention", "multi_head_attention_with_lse", "multi_head_attention_into"}) {
    const std::string p = prefix(fn);
    const std::string name = fn == "multi_head_attention"        ? "RaggedQ8Mha"
                             : fn == "multi_head_attention_into" ? "RaggedQ8MhaInto"
                                                                 : "RaggedQ8MhaLse";
    const auto call = [fn](World& w, const M& q, const attend::Q8Matrix& k, const attend::Q8Matrix& v, const Ragged& r,
                           const Options& o) {
      if (fn == "multi_head_attention")
        attend::multi_head_attention(q, k, v, r, Heads{4, 2}, o);
      else if (fn == "multi_head_attention_with_lse")
        attend::multi_head_attention_with_lse(q, k, v, r, Heads{4, 2}, o);
      else
        attend::multi_head_attention_into(q, k, v, r, Heads{4, 2}, w.outh, o);  // outh [4, 12]: checked after
    };
    const auto offsets = [call](Ragged r) { return [call, r](World& w) { call(w, w.q8q, w.k8, w.v8, r, {}); }; };
    c.add(name + "_OffsetsOfTwoSizes", offsets({{0, 4}, {0, 2, 5}}),
          {p, "ragged.q_offsets has 2 entries and ragged.kv_offsets 3, expected the same number"});
    c.add(name + "_QOffsetsShort", offsets({{0, 3}, {0, 5}}), {p, "ragged.q_offsets ends at 3, expected q's rows (4)"});
    c.add(name + "_KvOffsetsDecrease", offsets({{0, 1, 2, 4}, {0, 5, 3, 5}}),
          {p, "ragged.kv_offsets[2] is 3, below ragged.kv_offsets[1] = 5"});
    c.add(name + "_HeadDimNotBlocks", [call](World& w) { call(w, w.q8q16, w.k8n, w.v8n, w.ragged, {}); },
          {p, "head dims d = 16 and dv = 16 must be multiples of 32 for 8-bit keys and values", "q [4, 64]",
           "k [5, 32]"});
    c.add(name + "_KeyWidth", [call](World& w) { call(w, w.q8q, w.k8n, w.v8, w.ragged, {}); },
          {p, "k has 32 columns, expected kv heads (2) * head dim (32) = 64"});
    Options one_sink;
    one_sink.sinks = {0.5};
    c.add(name + "_Sinks", [call, one_sink](World& w) { call(w, w.q8q, w.k8, w.v8, w.ragged, one_sink); },
          {p, "options.sinks has 1 entries, expected 0 or one per query head (4)"});
  }
  c.add("RaggedQ8MhaInto_OutShape",
        [](World& w) {
          attend::multi_head_attention_into(w.q8q, w.k8, w.v8, w.ragged, Heads{4, 2}, w.outh);
        },
        {prefix("multi_head_attention_into"), "out is [4, 12], expected [4, 128]"});

  const std::string ap = prefix("PagedKVCache::append"), lap = prefix("PagedLatentCache::append");
  c.add("PagedKvCache8Append_WidthNotBlocks", [](World& w) { w.pcache8.append(2, M::Ones(1, 48), M::Ones(1, 48)); },
        {ap, "key_width is 48, expected a multiple of 32 for an 8-bit cache (its q8 blocks)"});
  c.add("PagedKvCache8Append_OtherWidths", [](World& w) { w.pcache8.append(2, M::Ones(1, 32), M::Ones(1, 32)); },
        {ap, "cache holds keys of 64 and values of 64 features per token, expected 32 and 32"});
  c.add("PagedKvCache8Append_NaN",
        [](World& w) {
          M k = M::Ones(2, 64);
          k(1, 3) = kNaN;
          w.pcache8.append({2, 0}, {0, 1, 2}, k, M::Ones(2, 64));
        },
        {ap, "k(1, 3) is nan: q8 stores finite values only (k [2, 64])"});
  c.add("PagedKvCache8KeysDequantized_Released", [](World& w) { w.pcache8.keys_dequantized(1); },
        {prefix("PagedKVCache::keys_dequantized"), "seq is 1, which the cache does not hold"});
  c.add("PagedLatentCache8Append_LatentNotBlocks",
        [](World& w) {
          w.plcache8.append({2}, {0, 1}, M::Ones(1, 64), 16);
        },
        {lap, "kv_lora_rank is 16, expected a multiple of 32 for an 8-bit cache"});
  c.add("PagedLatentCache8Append_Inf",
        [](World& w) {
          M rows = M::Ones(1, 64);
          rows(0, 40) = kInf;
          w.plcache8.append({2}, {0, 1}, rows, 32);
        },
        {lap, "rows(0, 40) is inf: q8 stores finite values only"});

  const std::string f = prefix("MultiHeadAttention::forward"), lf = prefix("MultiHeadLatentAttention::forward");
  c.add("MhaPaged8_HeadDimNotBlocks",
        [](World& w) {
          Mha(16, 4, 4, 16).forward(w.x, w.pcache8, {2}, {0, 3});
        },
        {f, "head_dim is 16, expected a multiple of 32 for an 8-bit cache"});
  c.add("MhaPaged8_UnknownId",
        [](World& w) {
          w.mha8.forward(w.x, w.pcache8, {5}, {0, 3});
        },
        {f, "seqs[0] is 5, which the cache does not hold"});
  c.add(
      "MhaPaged8_NaNInput", [](World& w) { w.x(2, 7) = kNaN; },
      [](World& w) {
        w.mha8.forward(w.x, w.pcache8, {0, 2}, {0, 2, 3});
      },
      {ap, "k(2, ", "is nan: q8 stores finite values only"});
  c.add(
      "MhaPaged_CacheOfOtherHeadsOfTheSameWidths",
      [](World& w) {
        Mha(16, 4, 1, 8).forward(w.x, w.pcache, {2}, {0, 3});
      },
      {f, "cache holds tokens of 2 kv heads of head dim 4 (8 features per token), expected 1 kv heads of head dim 8"});
  c.add("MlaPaged8_LatentNotBlocks",
        [](World& w) {
          w.mla.forward(w.x, w.plcache8, {2}, {0, 3});
        },
        {lf, "kv_lora_rank is 6, expected a multiple of 32 for an 8-bit cache"});
  c.add("MlaPaged8_ReleasedId",
        [](World& w) {
          w.mla8.forward(w.x, w.plcache8, {1}, {0, 3});
        },
        {lf, "seqs[0] is 1, which the cache does not hold"});
}

std::vector<Case> catalogue() {
  Catalogue c;
  add_single_head(c);
  add_multi_head(c);
  add_sinks_and_slopes(c);
  add_merge_and_rope(c);
  add_linear_and_norm(c);
  add_mha(c);
  add_mla(c);
  add_conversions(c);
  add_serving(c);
  add_serving_q8(c);
  add_backward(c);
  return c.cases;
}

// ---------------------------------------------------------------------------------------------------------------

class BadInput : public ::testing::TestWithParam<Case> {};

TEST_P(BadInput, ThrowsShapeErrorNamingTheArgumentAndChangesNothing) {
  const Case& c = GetParam();
  World w = make_world();
  if (c.setup) c.setup(w);
  const World before = w;
  try {
    c.call(w);
    ADD_FAILURE() << c.name << ": no exception";
  } catch (const attend::shape_error& e) {
    const std::string what = e.what();
    ASSERT_FALSE(c.fragments.empty());
    EXPECT_EQ(what.rfind(c.fragments.front(), 0), 0u)
        << "message does not start with '" << c.fragments.front() << "': " << what;
    for (const std::string& f : c.fragments)
      EXPECT_NE(what.find(f), std::string::npos) << "'" << f << "' not in: " << what;
  } catch (const std::exception& e) {
    ADD_FAILURE() << c.name << ": threw another exception: " << e.what();
  }
  EXPECT_EQ(first_difference(w, before), "") << "changed by the failed call";
}

INSTANTIATE_TEST_SUITE_P(Catalogue, BadInput, ::testing::ValuesIn(catalogue()),
                         [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

// The World must itself be valid: every function above succeeds on its good arguments, so each case fails only
// because of the one thing it changes.
TEST(BadInputWorld, GoodArgumentsAreAccepted) {
  World w = make_world();
  Options o;
  EXPECT_NO_THROW(attend::scaled_dot_product_attention(w.q, w.k, w.v, w.bias, o));
  EXPECT_NO_THROW(attend::scaled_dot_product_attention_into(w.q, w.k, w.v, w.out, o));
  EXPECT_NO_THROW(attend::attention_weights(w.q, w.k, w.bias, o));
  EXPECT_NO_THROW(attend::reference::scaled_dot_product_attention(w.q, w.k, w.v, o, &w.bias_d));
  EXPECT_NO_THROW(attend::multi_head_attention_into(w.qh, w.kh, w.vh, Heads{4, 2}, w.outh, o));
  EXPECT_NO_THROW(attend::multi_query_attention(w.qh, w.kq, w.vq, 4, o));
  EXPECT_NO_THROW(attend::merge_attention(w.parts));
  EXPECT_NO_THROW(attend::apply_rope(w.x, 4));
  EXPECT_NO_THROW(w.lin(w.xl));
  EXPECT_NO_THROW(w.norm(w.xl));
  EXPECT_NO_THROW(w.mha.forward(w.x, w.ctx, o));
  EXPECT_NO_THROW(w.mha.forward(w.x, w.cache, o));
  EXPECT_NO_THROW(w.mla.forward(w.x, w.lcache, o));
  EXPECT_NO_THROW(w.mla_q.forward(w.x, o));
  EXPECT_NO_THROW(attend::to_grouped(w.mha, 1));
  EXPECT_NO_THROW(attend::to_latent(w.mha, 16));
  EXPECT_NO_THROW(attend::kv_singular_values(w.mha));
  EXPECT_NO_THROW(w.cache.reserve(100, 8, 8));
  EXPECT_NO_THROW(w.lcache.reserve(100, 6, 2));
  EXPECT_EQ(w.cache.size(), 6);  // forward(x, cache) above appended 3 tokens
  EXPECT_EQ(w.lcache.size(), 6);
  EXPECT_NO_THROW(attend::multi_head_attention_with_lse(w.qh, w.kh, w.vh, w.ragged, Heads{4, 2}, o));
  EXPECT_NO_THROW(w.mha.forward(w.x, w.pcache, {2, 0}, {0, 1, 3}, o));
  EXPECT_NO_THROW(w.mla.forward(w.x, w.plcache, {0, 2}, {0, 2, 3}, o));
  EXPECT_NO_THROW(w.pcache.append(0, M::Ones(1, 8), M::Ones(1, 8)));
  EXPECT_NO_THROW(w.plcache.append({0}, {0, 1}, M::Ones(1, 8), 6));
  EXPECT_EQ(w.pcache.length(0), 6);  // 3 tokens, 2 from forward, 1 appended
  EXPECT_EQ(w.plcache.length(2), 1);
  EXPECT_EQ(w.pcache.sequences(), (std::vector<int>{0, 2}));
}

// The backward calls succeed on the World's good arguments too.
TEST(BadInputWorld, GoodBackwardArgumentsAreAccepted) {
  World w = make_world();
  EXPECT_NO_THROW(attend::scaled_dot_product_attention_backward(w.q, w.k, w.v, w.out, w.lse_one, w.out));
  EXPECT_NO_THROW(attend::scaled_dot_product_attention_backward(w.q, w.k, w.v, w.bias, w.out, w.lse_one, w.out));
  EXPECT_NO_THROW(attend::scaled_dot_product_attention_with_lse(w.q, w.k, w.v, w.bias));
  EXPECT_NO_THROW(attend::multi_head_attention_backward(w.qh, w.kh, w.vh, w.outh, w.parts[0].lse, w.outh, Heads{4, 2}));
  EXPECT_NO_THROW(
      attend::multi_head_attention_backward(w.qh, w.kq, w.vq, M(4, 12), w.parts[0].lse, M(4, 12), Heads{4, 1}));
  EXPECT_NO_THROW(w.mha.backward(w.x, w.x));
  EXPECT_NO_THROW(w.mha.backward(w.x, w.ctx, w.x));
  EXPECT_NO_THROW(w.mla.backward(w.x, w.x));
  EXPECT_NO_THROW(w.mla_q.backward(w.x, w.x));
}

// A World compared with itself after a change is told apart: the comparison is not vacuous.
TEST(BadInputWorld, ComparisonSeesEveryKindOfChange) {
  const World a = make_world();
  World b = a;
  EXPECT_EQ(first_difference(a, b), "");
  b.mha.forward(b.x, b.cache);
  EXPECT_EQ(first_difference(a, b), "cache");
  b = a;
  b.mha.forward(b.x.topRows(1), b.pcache, {2}, {0, 1});
  EXPECT_EQ(first_difference(a, b), "pcache");
  b = a;
  b.plcache.add_sequence();
  EXPECT_EQ(first_difference(a, b), "plcache");
  b = a;
  b.mla.kv_b_proj.weight(0, 0) += 1;
  EXPECT_EQ(first_difference(a, b), "mla");
  b = a;
  b.out(3, 5) = 0;
  EXPECT_EQ(first_difference(a, b), "out");
  b = a;
  b.parts[1].lse(0, 0) = 1;
  EXPECT_EQ(first_difference(a, b), "parts[1]");
}

// ---------------------------------------------------------------------------------------------------------------
// Edges next to the catalogue: what is valid there must work.

// A scale or softcap beyond float's range is refused in float (the catalogue) but valid in double, where the
// kernel computes with it: every score becomes huge or capped, never NaN.
TEST(BadInputEdges, ScaleBeyondFloatIsValidInDouble) {
  using D = attend::Matrix<double>;
  const D q = D::Ones(2, 4), k = D::Ones(3, 4), v = D::Ones(3, 2);
  for (const Options& o : {scale(1e300), softcap(1e300), scale(1e-300)}) {
    const D out = attend::scaled_dot_product_attention(q, k, v, o);
    EXPECT_TRUE(out.isApprox(D::Ones(2, 2))) << out;
    EXPECT_TRUE(out.isApprox(attend::reference::scaled_dot_product_attention(q, k, v, o))) << out;
  }
  // The reference computes in double, so it accepts these options for float inputs too.
  EXPECT_TRUE(attend::reference::scaled_dot_product_attention(M::Ones(2, 4), M::Ones(3, 4), M::Ones(3, 2), scale(1e300))
                  .isApprox(D::Ones(2, 2)));
}

// Zero-row inputs are valid and give zero-row outputs, without touching a cache. Column blocks of empty
// matrices would offset a null data pointer, which UBSan reports under the asan preset: these functions return
// before forming any.
TEST(BadInputEdges, ZeroRowsGiveEmptyResults) {
  const attend::AttentionResult<float> empty{M(0, 4), M(0, 2)};
  const auto merged = attend::merge_attention(empty, empty);
  EXPECT_EQ(merged.out.rows(), 0);
  EXPECT_EQ(merged.out.cols(), 4);
  EXPECT_EQ(merged.lse.cols(), 2);
  EXPECT_EQ(attend::reference::multi_head_attention(M(0, 8), M::Ones(5, 8), M::Ones(5, 8), Heads{2, 2}).rows(), 0);
  // No key at all: the contract's zero rows.
  const attend::Matrix<double> no_keys =
      attend::reference::multi_head_attention(M::Ones(3, 8), M(0, 8), M(0, 8), Heads{2, 2});
  EXPECT_EQ(no_keys.rows(), 3);
  EXPECT_EQ(no_keys.cols(), 8);
  EXPECT_TRUE(no_keys.isZero(0));
  const Mla mla(MlaConfig{8, 2, 0, 4, 2, 2, 2});
  const M self = mla.forward(M(0, 8));
  EXPECT_EQ(self.rows(), 0);
  EXPECT_EQ(self.cols(), 8);
  attend::LatentCache<float> cache;
  EXPECT_EQ(mla.forward(M(0, 8), cache).cols(), 8);
  EXPECT_EQ(cache.size(), 0);
  mla.forward(M::Ones(2, 8), cache);
  EXPECT_EQ(mla.forward(M(0, 8), cache).rows(), 0);
  EXPECT_EQ(cache.size(), 2);
}

// eps = 0 is valid: the exact formula, with an all-zero row kept zero instead of 0/0.
TEST(BadInputEdges, RmsNormWithZeroEpsKeepsZeroRowsZero) {
  attend::RMSNorm<float> norm;
  norm.weight = Vec::Ones(4);
  norm.eps = 0;
  M x = M::Zero(2, 4);
  x.row(1) << 3, 0, 0, -4;
  const M y = norm(x);
  EXPECT_TRUE(y.row(0).isZero(0)) << y;
  EXPECT_NEAR(y(1, 0), 3 / 2.5f, 1e-6f);  // rms = sqrt(25 / 4)
  EXPECT_NEAR(y(1, 3), -4 / 2.5f, 1e-6f);
}

// Caches reserve for valid widths, including zero tokens.
TEST(BadInputEdges, CacheReserveAcceptsZeroTokens) {
  attend::KVCache<float> kv;
  kv.reserve(0, 8, 4);
  kv.reserve(64, 8, 4);
  EXPECT_GE(kv.capacity(), 64);
  attend::LatentCache<float> latent;
  latent.reserve(0, 6, 2);
  latent.reserve(32, 6, 2);
  EXPECT_GE(latent.capacity(), 32);
}

}  // namespace
