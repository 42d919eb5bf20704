// Continuous batching: one attention layer serving many requests at once through a paged KV cache.
//
// An inference engine never runs one sequence at a time. Each step it holds the requests in flight, some still
// reading their prompt, most generating one token, and runs them through the model together: one
// MultiHeadAttention::forward(x, cache, seqs, x_offsets) appends every request's new tokens to its own sequence of a
// PagedKVCache and attends each over its own tokens only, all in one call of the kernel. Requests arrive and leave
// between steps; the pages a finished request held go to the next ones. The program
//   1. serves requests arriving with prompts of 16 to 160 tokens, read in chunks of at most 48 tokens a step
//      (chunked prefill) and then generating 4 to 32 tokens one a step (the next input is the layer's output row,
//      scaled back to unit size: there is no vocabulary here), printing per step the batch, the pages in use and
//      the tokens per second;
//   2. checks that every request got exactly the rows it would get fed alone through a KVCache (1e-5 relative),
//      that the pages in use always match the tokens held (ceil(length / 16) per request), that released pages
//      were handed out again, and that the cache holds no memory once every request has left.
// Exit status 1 when a check fails.
#include <algorithm>
#include <attend/attend.hpp>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "util.hpp"

namespace {

using attend::Index;
using attend::Matrix;

struct Request {
  int id = -1;  // its sequence in the paged cache
  Matrix<float> prompt;
  int to_generate = 0;
  Index read = 0;  // prompt tokens fed so far
  int generated = 0;
  Matrix<float> next;  // the next token's input row, once the prompt is in
  // What it was fed and what it got, step by step, to replay it alone at the end.
  std::vector<Matrix<float>> inputs, outputs;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main() {
  std::printf("attend %s: continuous batching through a paged KV cache\n\n", attend::version_string);
  std::mt19937 rng(2024);
  bool ok = true;

  // A GQA layer: d_model 256, 8 query heads over 2 kv heads of 32.
  const int d_model = 256, heads = 8, kv_heads = 2, head_dim = 32;
  attend::MultiHeadAttention<float> layer(d_model, heads, kv_heads, head_dim);
  layer.q_proj.weight = ex::random_weight(rng, heads * head_dim, d_model);
  layer.k_proj.weight = ex::random_weight(rng, kv_heads * head_dim, d_model);
  layer.v_proj.weight = ex::random_weight(rng, kv_heads * head_dim, d_model);
  layer.o_proj.weight = ex::random_weight(rng, d_model, heads * head_dim);
  attend::Options causal;
  causal.mask = attend::Mask::causal();

  const Index page_tokens = 16, chunk = 48;
  attend::PagedKVCache<float> cache(page_tokens);
  std::printf(
      "1. A layer of d_model %d, %d query heads over %d kv heads of %d; pages of %lld tokens (%zu KiB each:\n"
      "   keys and values of every kv head). Prompts are read %lld tokens a step at most.\n\n",
      d_model, heads, kv_heads, head_dim, static_cast<long long>(page_tokens),
      std::size_t(page_tokens) * layer.kv_cache_elements_per_token() * sizeof(float) / 1024,
      static_cast<long long>(chunk));

  std::vector<Request> live, done;
  std::uniform_int_distribution<int> arrivals(0, 3), prompt_length(16, 160), generate(4, 32);
  bool pages_match = true;
  Index peak_pages = 0, pages_taken = 0, tokens_total = 0;
  std::size_t peak_bytes = 0;
  const std::size_t page_bytes = std::size_t(page_tokens) * layer.kv_cache_elements_per_token() * sizeof(float);
  double busy = 0;
  std::printf("   %4s %9s %8s %8s %7s %7s %9s %10s\n", "step", "requests", "prefill", "decode", "new", "pages", "ms",
              "tokens/s");
  const int arriving_steps = 24;
  for (int step = 0; step < arriving_steps || !live.empty(); ++step) {
    // Arrivals (for the first steps only, so that the run ends).
    if (step < arriving_steps)
      for (int a = arrivals(rng); a > 0; --a) {
        Request r;
        r.id = cache.add_sequence();
        r.prompt = ex::random_matrix(rng, prompt_length(rng), d_model);
        r.to_generate = generate(rng);
        live.push_back(std::move(r));
      }
    if (live.empty()) continue;

    // The step's batch: a chunk of each prompt still being read, one token of each request generating.
    std::vector<int> seqs;
    std::vector<Index> offsets{0};
    Index prefill = 0, decode = 0;
    for (Request& r : live) {
      const Matrix<float> x =
          r.read < r.prompt.rows()
              ? Matrix<float>(r.prompt.middleRows(r.read, std::min(chunk, r.prompt.rows() - r.read)))
              : r.next;
      (r.read < r.prompt.rows() ? prefill : decode) += x.rows();
      r.inputs.push_back(x);
      seqs.push_back(r.id);
      offsets.push_back(offsets.back() + x.rows());
    }
    Matrix<float> batch(offsets.back(), d_model);
    for (std::size_t b = 0; b < live.size(); ++b)
      batch.middleRows(offsets[b], offsets[b + 1] - offsets[b]) = live[b].inputs.back();

    const auto t0 = std::chrono::steady_clock::now();
    const Matrix<float> y = layer.forward(batch, cache, seqs, offsets, causal);
    const double t = seconds_since(t0);
    busy += t;
    tokens_total += batch.rows();

    // Each request takes its rows; the last row of a finished prompt, or of a decode, is the next input.
    Index pages_needed = 0;
    for (std::size_t b = 0; b < live.size(); ++b) {
      Request& r = live[b];
      const Matrix<float> rows = y.middleRows(offsets[b], offsets[b + 1] - offsets[b]);
      r.outputs.push_back(rows);
      if (r.read < r.prompt.rows())
        r.read += rows.rows();
      else
        ++r.generated;
      if (r.read == r.prompt.rows()) {
        const Matrix<float> last = rows.bottomRows(1);
        r.next = last / std::max(1e-6f, std::sqrt(last.squaredNorm() / float(d_model)));  // back to unit RMS
      }
      pages_needed += (cache.length(r.id) + page_tokens - 1) / page_tokens;
    }
    pages_match = pages_match && pages_needed == cache.pages_in_use();
    peak_pages = std::max(peak_pages, cache.pages_in_use());
    peak_bytes = std::max(peak_bytes, cache.bytes());
    std::printf("   %4d %9zu %8lld %8lld %7lld %7lld %9.2f %10.0f\n", step, live.size(),
                static_cast<long long>(prefill), static_cast<long long>(decode), static_cast<long long>(batch.rows()),
                static_cast<long long>(cache.pages_in_use()), t * 1e3, double(batch.rows()) / t);

    // Requests done generating leave; their pages go to the free list.
    for (std::size_t i = 0; i < live.size();) {
      if (live[i].generated >= live[i].to_generate) {
        pages_taken += (cache.length(live[i].id) + page_tokens - 1) / page_tokens;
        cache.release(live[i].id);
        done.push_back(std::move(live[i]));
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
      } else {
        ++i;
      }
    }
  }

  const Index peak_allocated = static_cast<Index>(peak_bytes / page_bytes);
  std::printf(
      "\n   %zu requests served, %lld tokens in %.1f ms of forward calls (%.0f tokens/s). At most %lld pages in use\n"
      "   and %lld allocated (%.1f MiB, in use and free), while the requests held %lld pages over the run: the\n"
      "   pages of finished requests went to the next ones.\n\n",
      done.size(), static_cast<long long>(tokens_total), busy * 1e3, double(tokens_total) / busy,
      static_cast<long long>(peak_pages), static_cast<long long>(peak_allocated), double(peak_bytes) / (1 << 20),
      static_cast<long long>(pages_taken));

  // 2. Each request replayed alone through a KVCache, with the same inputs in the same chunks.
  double worst = 0;
  double alone_time = 0;
  for (const Request& r : done) {
    attend::KVCache<float> kv;
    for (std::size_t s = 0; s < r.inputs.size(); ++s) {
      const auto t0 = std::chrono::steady_clock::now();
      const Matrix<float> want = layer.forward(r.inputs[s], kv, causal);
      alone_time += seconds_since(t0);
      const double scale = std::max(1.0, ex::max_abs(want));
      worst = std::max(worst, ex::max_abs_diff(r.outputs[s], want) / scale);
    }
  }
  std::printf(
      "2. Every request replayed alone through a KVCache (one forward per request and step, %.1f ms in all):\n"
      "   max relative difference from its rows in the batch = %.2e\n\n",
      alone_time * 1e3, worst);
  ok &= ex::check(worst <= 1e-5, "every request got the rows of its own KVCache (1e-5 relative)");
  ok &= ex::check(pages_match, "pages in use = sum of ceil(length / 16) over the requests, every step");
  ok &= ex::check(pages_taken > peak_allocated, "pages reused: requests held more pages than were ever allocated");
  ok &= ex::check(cache.pages_in_use() == 0 && cache.bytes() == 0, "no memory held once every request has left");
  return ok ? 0 : 1;
}
