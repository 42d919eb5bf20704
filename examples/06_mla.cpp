// Multi-head latent attention (MLA, DeepSeek-V2): cache one small latent per token instead of keys and values.
//
// MLA compresses each token to a latent c (kv_lora_rank numbers) and rebuilds every head's key and value from
// it with kv_b_proj; only a small RoPE key (qk_rope_head_dim numbers) is shared by all heads on the side. A
// decoder caches just [c, k_rope]. At decode time the key up-projection is absorbed into the query and the
// value up-projection into the output, so attention runs directly over the cached latents, never rebuilding
// per-head keys and values (attend::MultiHeadLatentAttention::forward with a LatentCache).
//
// The program
//   1. compares the cache per token of MLA with MHA, GQA and MQA of the same width (d_model 1024, 16 heads
//      of 64; MLA with DeepSeek-V2-Lite's proportions at half its width: latent 256, rope 32, nope 64, v 64);
//   2. runs one MLA layer three ways: the decompressed forward over the whole sequence, the absorbed path
//      through a LatentCache (a prefill, then token by token), and a hand-written "naive" decoder that caches
//      the decompressed per-head keys and values (as DeepSeek's reference code can) - checks they agree and
//      times prefill and decode;
//   3. takes the K ~ U S V^T view: attend::to_latent factorizes an MHA layer's stacked key/value projection by
//      a truncated SVD; prints the singular values (attend::kv_singular_values) and the output error at
//      several ranks, and checks the conversion is exact at full rank.
// Exit status 1 when a check fails. Timings are medians and vary from run to run.
#include <Eigen/QR>
#include <attend/attend.hpp>
#include <cstdio>
#include <random>
#include <vector>

#include "util.hpp"

namespace {

using attend::Index;
using attend::Matrix;
using MLA = attend::MultiHeadLatentAttention<float>;

MLA::Config deepseek_like_config() {
  MLA::Config c;
  c.d_model = 1024;
  c.heads = 16;
  c.q_lora_rank = 0;  // DeepSeek-V2-Lite does not compress queries
  c.kv_lora_rank = 256;
  c.qk_nope_head_dim = 64;
  c.qk_rope_head_dim = 32;
  c.v_head_dim = 64;
  return c;
}

MLA random_mla(std::mt19937& rng) {
  MLA m(deepseek_like_config());
  const MLA::Config& c = m.config;
  const Index h = c.heads;
  m.q_proj.weight = ex::random_weight(rng, h * (c.qk_nope_head_dim + c.qk_rope_head_dim), c.d_model);
  m.kv_a_proj_with_mqa.weight = ex::random_weight(rng, c.kv_lora_rank + c.qk_rope_head_dim, c.d_model);
  m.kv_a_layernorm.weight = attend::Vector<float>::Ones(c.kv_lora_rank);
  m.kv_b_proj.weight = ex::random_weight(rng, h * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
  m.o_proj.weight = ex::random_weight(rng, c.d_model, h * c.v_head_dim);
  return m;
}

/// DeepSeek's "naive" MLA decoder, written with attend's public pieces: it caches every head's decompressed key
/// [k_nope, k_rope] and value, heads * (nope + rope + v) floats per token, and runs plain multi-head attention.
class NaiveMlaDecoder {
 public:
  NaiveMlaDecoder(const MLA& m, Index capacity) : m_(m) {
    const MLA::Config& c = m.config;
    qk_ = c.qk_nope_head_dim + c.qk_rope_head_dim;
    keys_.resize(capacity, Index(c.heads) * qk_);
    values_.resize(capacity, Index(c.heads) * c.v_head_dim);
    options_.mask = attend::Mask::causal();
    options_.scale = 1.0 / std::sqrt(double(qk_));
  }

  static std::size_t floats_per_token(const MLA::Config& c) {
    return std::size_t(c.heads) * std::size_t(c.qk_nope_head_dim + c.qk_rope_head_dim + c.v_head_dim);
  }

  /// Appends the tokens x (positions size() ...) to the cache and returns their outputs.
  Matrix<float> forward(const Matrix<float>& x) {
    const MLA::Config& c = m_.config;
    const Index n = x.rows(), start = size_, nope = c.qk_nope_head_dim, rope = c.qk_rope_head_dim, dv = c.v_head_dim;
    // Keys and values: latent c = norm(W_DKV x), shared rope key, then per head k_nope and v = W_UK c, W_UV c.
    const Matrix<float> kv_a = m_.kv_a_proj_with_mqa(x);
    const Matrix<float> latent = m_.kv_a_layernorm(kv_a.leftCols(c.kv_lora_rank));
    const Matrix<float> k_rope = attend::apply_rope(kv_a.rightCols(rope), rope, start, c.rope_theta, c.rope_layout);
    const Matrix<float> kv = m_.kv_b_proj(latent);
    Matrix<float> q = m_.q_proj(x);
    for (Index h = 0; h < c.heads; ++h) {
      keys_.block(start, h * qk_, n, nope) = kv.middleCols(h * (nope + dv), nope);
      keys_.block(start, h * qk_ + nope, n, rope) = k_rope;
      values_.block(start, h * dv, n, dv) = kv.middleCols(h * (nope + dv) + nope, dv);
      q.middleCols(h * qk_ + nope, rope) =
          attend::apply_rope(q.middleCols(h * qk_ + nope, rope), rope, start, c.rope_theta, c.rope_layout);
    }
    size_ += n;
    const attend::Heads heads{c.heads, c.heads};
    return m_.o_proj(attend::multi_head_attention(q, keys_.topRows(size_), values_.topRows(size_), heads, options_));
  }

  Index size() const { return size_; }

 private:
  const MLA& m_;
  Index qk_ = 0, size_ = 0;
  Matrix<float> keys_, values_;
  attend::Options options_;
};

/// An orthonormal [rows, cols] basis from the QR decomposition of a random matrix.
Eigen::MatrixXd random_orthonormal(std::mt19937& rng, Index rows, Index cols) {
  const Eigen::MatrixXd a = ex::random_matrix<double>(rng, rows, cols);
  return Eigen::HouseholderQR<Eigen::MatrixXd>(a).householderQ() * Eigen::MatrixXd::Identity(rows, cols);
}

/// An MHA layer whose stacked per-head [W_k; W_v] is U diag(s) V^T of rank `rank`, singular values decaying
/// like exp(-i / decay): a layer whose keys and values live near a low-dimensional subspace, as trained ones
/// often do. With rank == 0 all weights are plain random (full rank, flat spectrum).
attend::MultiHeadAttention<float> mha_for_svd(int d_model, int heads, int head_dim, int rank, double decay,
                                              std::mt19937& rng) {
  attend::MultiHeadAttention<float> m(d_model, heads, heads, head_dim);
  const Index rows = Index(heads) * 2 * head_dim;
  m.q_proj.weight = ex::random_weight(rng, Index(heads) * head_dim, d_model);
  m.o_proj.weight = ex::random_weight(rng, d_model, Index(heads) * head_dim);
  Eigen::MatrixXd stacked;
  if (rank == 0) {
    stacked = ex::random_weight<double>(rng, rows, d_model);
  } else {
    Eigen::VectorXd s(rank);
    for (int i = 0; i < rank; ++i) s(i) = std::exp(-double(i) / decay);
    s *= std::sqrt(double(rows)) / s.norm();  // the same total size as a random 1/sqrt(d_model) weight
    stacked = random_orthonormal(rng, rows, rank) * s.asDiagonal() * random_orthonormal(rng, d_model, rank).transpose();
  }
  // to_latent stacks per head: W_k(head 0), W_v(head 0), W_k(head 1), ...
  for (Index h = 0; h < heads; ++h) {
    m.k_proj.weight.middleRows(h * head_dim, head_dim) = stacked.middleRows(h * 2 * head_dim, head_dim).cast<float>();
    m.v_proj.weight.middleRows(h * head_dim, head_dim) =
        stacked.middleRows(h * 2 * head_dim + head_dim, head_dim).cast<float>();
  }
  return m;
}

}  // namespace

int main() {
  std::printf("attend %s: multi-head latent attention (DeepSeek-V2 MLA)\n\n", attend::version_string);
  std::mt19937 rng(42);
  bool ok = true;
  attend::Options causal;
  causal.mask = attend::Mask::causal();
  const MLA::Config cfg = deepseek_like_config();
  const Index context = 4096;

  // 1. Cache per token.
  {
    const attend::MultiHeadAttention<float> mha(1024, 16, 16, 64), gqa(1024, 16, 4, 64), mqa(1024, 16, 1, 64);
    const MLA mla(cfg);
    std::printf("1. KV cache per token and layer, d_model 1024, 16 query heads (float):\n\n");
    std::printf("   %-51s %7s %7s %14s %8s\n", "", "floats", "bytes", "4096 tokens", "vs MHA");
    const auto line = [&](const char* name, std::size_t n) {
      std::printf("   %-51s %7zu %7zu %10.2f MiB %7.2fx\n", name, n, n * sizeof(float),
                  double(n * sizeof(float) * std::size_t(context)) / (1 << 20),
                  double(mha.kv_cache_elements_per_token()) / double(n));
    };
    line("MHA: 16 kv heads x (key 64 + value 64)", mha.kv_cache_elements_per_token());
    line("GQA: 4 kv heads x (64 + 64)", gqa.kv_cache_elements_per_token());
    line("MLA: latent 256 + shared rope key 32", mla.kv_cache_elements_per_token());
    line("MQA: 1 kv head x (64 + 64)", mqa.kv_cache_elements_per_token());
    line("MLA decompressed (16 x (nope 64 + rope 32 + v 64))", NaiveMlaDecoder::floats_per_token(cfg));
    std::printf(
        "\n   MLA caches as much as GQA with %.2f kv heads, yet every head gets its own keys and values\n"
        "   (rebuilt from the latent), where GQA's heads share them.\n\n",
        double(mla.kv_cache_elements_per_token()) / (2.0 * 64));
    ok &= ex::check(mla.kv_cache_elements_per_token() == 256 + 32, "MLA caches kv_lora_rank + qk_rope_head_dim = 288");
    std::printf("\n");
  }

  // 2. Absorbed (LatentCache) vs decompressed: the same outputs, different costs.
  {
    const MLA mla = random_mla(rng);
    const Index n_prefill = 1024, steps = 16, total = n_prefill + steps;
    const Matrix<float> x = ex::random_matrix(rng, total, cfg.d_model);

    const Matrix<float> y_full = mla.forward(x, causal);  // decompressed, every row at once
    const double y_max = ex::max_abs(y_full);

    attend::LatentCache<float> cache;
    NaiveMlaDecoder naive(mla, total);
    Matrix<float> y_absorbed(total, cfg.d_model), y_naive(total, cfg.d_model);
    y_absorbed.topRows(n_prefill) = mla.forward(x.topRows(n_prefill), cache, causal);
    y_naive.topRows(n_prefill) = naive.forward(x.topRows(n_prefill));
    std::vector<double> t_absorbed, t_naive;
    for (Index t = n_prefill; t < total; ++t) {
      t_absorbed.push_back(ex::seconds([&] { y_absorbed.row(t) = mla.forward(x.row(t), cache, causal); }));
      t_naive.push_back(ex::seconds([&] { y_naive.row(t) = naive.forward(x.row(t)); }));
    }
    const double d_absorbed = ex::max_abs_diff(y_absorbed, y_full) / y_max;
    const double d_naive = ex::max_abs_diff(y_naive, y_full) / y_max;

    const int reps = 3;
    const double t_prefill_decompressed = ex::median_seconds(reps, [&] { mla.forward(x.topRows(n_prefill), causal); });
    const double t_prefill_absorbed = ex::median_seconds(reps, [&] {
      attend::LatentCache<float> fresh;
      mla.forward(x.topRows(n_prefill), fresh, causal);
    });

    std::printf(
        "2. One MLA layer (random weights), %lld tokens of prefill, then %lld tokens decoded one at a time.\n\n",
        static_cast<long long>(n_prefill), static_cast<long long>(steps));
    std::printf("   %-52s %12s %14s %14s\n", "", "cache floats", "prefill ms", "decode ms/tok");
    std::printf("   %-52s %12s %14.1f %14s\n", "decompressed forward(x) (per-head keys and values)", "-",
                t_prefill_decompressed * 1e3, "-");
    std::printf("   %-52s %12zu %14s %14.3f\n", "naive decoder: cache the decompressed keys/values",
                NaiveMlaDecoder::floats_per_token(cfg), "-", ex::median(t_naive) * 1e3);
    std::printf("   %-52s %12zu %14.1f %14.3f\n", "absorbed: forward(x, LatentCache)",
                mla.kv_cache_elements_per_token(), t_prefill_absorbed * 1e3, ex::median(t_absorbed) * 1e3);
    std::printf(
        "\n   largest difference from the decompressed forward, relative to its largest output:\n"
        "     absorbed (LatentCache) %.1e, naive decoder %.1e\n\n",
        d_absorbed, d_naive);
    std::printf(
        "   Absorbed attention is multi-query attention over the cache itself: keys [latent, rope key] of\n"
        "   %d floats, values the %d-float latents, for all %d heads. Per cached token it does more\n"
        "   arithmetic than per-head attention (%d + %d vs %d + %d per head) but reads %.1fx less memory, and\n"
        "   decoding is memory-bound; prefill is compute-bound, which is why DeepSeek prefills decompressed.\n\n",
        cfg.kv_lora_rank + cfg.qk_rope_head_dim, cfg.kv_lora_rank, cfg.heads, cfg.kv_lora_rank + cfg.qk_rope_head_dim,
        cfg.kv_lora_rank, cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim,
        double(NaiveMlaDecoder::floats_per_token(cfg)) / double(mla.kv_cache_elements_per_token()));
    ok &= ex::check(d_absorbed <= 1e-4, "absorbed LatentCache decoding = decompressed forward (1e-4 relative)");
    ok &= ex::check(d_naive <= 1e-4, "the naive decompressed-cache decoder agrees too (1e-4 relative)");
    std::printf("\n");
  }

  // 3. to_latent: K ~ U S V^T.
  {
    const int d_model = 256, heads = 8, head_dim = 32, true_rank = 96;
    const int mha_floats = 2 * heads * head_dim;  // 512
    const attend::MultiHeadAttention<float> mha = mha_for_svd(d_model, heads, head_dim, true_rank, 24.0, rng);
    const Eigen::VectorXd s = attend::kv_singular_values(mha);
    const Matrix<float> x = ex::random_matrix(rng, 64, d_model);
    const Matrix<float> y = mha.forward(x, causal);
    const double total_energy = s.squaredNorm();

    std::printf(
        "3. to_latent: an MHA layer (d_model %d, %d heads of %d, cache %d floats/token) whose stacked\n"
        "   [W_k; W_v] (%d x %d) has rank %d and decaying singular values, converted at several ranks r.\n"
        "   The latent c = V_r^T x holds r floats per token; kv_b_proj = U_r S_r rebuilds keys and values.\n\n",
        d_model, heads, head_dim, mha_floats, mha_floats, d_model, true_rank);
    std::printf("   %6s %14s %12s %14s %14s\n", "rank r", "floats/token", "sigma_r", "weights lost", "output error");
    const int ranks[] = {8, 16, 32, 64, 95, 96, 256};
    std::vector<double> weight_err, out_err;
    for (int r : ranks) {
      const MLA latent = attend::to_latent(mha, r);
      const double lost = std::sqrt(std::max(0.0, s.tail(s.size() - r).squaredNorm() / total_energy));
      const double err = ex::max_abs_diff(latent.forward(x, causal), y) / ex::max_abs(y);
      weight_err.push_back(lost);
      out_err.push_back(err);
      std::printf("   %6d %14zu %12.2e %14.2e %14.2e%s\n", r, latent.kv_cache_elements_per_token(), s(r - 1), lost, err,
                  r == true_rank ? "   <- full rank: exact" : "");
    }
    std::printf(
        "\n   weights lost = sqrt(sum of sigma_i^2 past r / sum of all): the best any rank-r fit can do\n"
        "   (Eckart-Young). output error = max |y_latent - y_MHA| / max |y_MHA| over 64 tokens, causal.\n"
        "   The singular values past rank %d are rounding noise (sigma_%d = %.1e).\n\n",
        true_rank, true_rank + 1, s(true_rank));

    // An untrained layer has no low-rank structure: it needs r = d_model, still half MHA's cache.
    const attend::MultiHeadAttention<float> flat = mha_for_svd(d_model, heads, head_dim, 0, 0, rng);
    const Eigen::VectorXd sf = attend::kv_singular_values(flat);
    const Matrix<float> yf = flat.forward(x, causal);
    const double flat_full =
        ex::max_abs_diff(attend::to_latent(flat, d_model).forward(x, causal), yf) / ex::max_abs(yf);
    const double flat_half =
        ex::max_abs_diff(attend::to_latent(flat, d_model / 2).forward(x, causal), yf) / ex::max_abs(yf);
    std::printf(
        "   A random (untrained) layer's singular values only fall from %.2f to %.2f: rank %d leaves an output\n"
        "   error of %.2f, and only r = d_model = %d is exact (%.1e) - still half of MHA's %d floats per token,\n"
        "   because the %d stacked rows of [W_k; W_v] never have more than d_model independent directions.\n\n",
        sf(0), sf(sf.size() - 1), d_model / 2, flat_half, d_model, flat_full, mha_floats, mha_floats);

    bool monotone = true;
    for (std::size_t i = 1; i < weight_err.size(); ++i) monotone = monotone && weight_err[i] <= weight_err[i - 1];
    ok &= ex::check(out_err[5] <= 1e-4, "to_latent at full rank (96) reproduces the MHA output (1e-4 relative)");
    ok &= ex::check(out_err[6] <= 1e-4 && flat_full <= 1e-4, "to_latent at rank d_model is exact for any layer (1e-4)");
    ok &= ex::check(monotone && out_err[0] > out_err[5], "the error shrinks as the rank grows");
  }
  return ok ? 0 : 1;
}
