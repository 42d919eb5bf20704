// Paged caches and continuous batching: PagedKVCache and PagedLatentCache bookkeeping (pages, the free list, ids,
// memory that follows the tokens held), the kernel reading keys through page tables against the same keys
// contiguous, and simulated serving runs (arrivals, chunked prefills, one-token decodes, stalls, releases and page
// reuse) whose every output row equals that of the sequence fed alone through a KVCache / LatentCache.
#include <gtest/gtest.h>

#include <algorithm>
#include <attend/attend.hpp>
#include <map>
#include <random>
#include <string>
#include <vector>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include "test_util.hpp"

using attend::Heads;
using attend::Index;
using attend::Mask;
using attend::Matrix;
using attend::Options;
using attend_test::random_matrix;

namespace {

// max |a - b| / max(1, max |b|).
template <class A, class B>
double relative_diff(const A& a, const B& b) {
  const double scale = std::max(1.0, b.size() ? b.template cast<double>().cwiseAbs().maxCoeff() : 0.0);
  return attend_test::max_abs_diff(a, b) / scale;
}

template <class T>
bool same_bits(const Matrix<T>& a, const Matrix<T>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         (a.template cast<double>().array() == b.template cast<double>().array()).all();
}

Options options_of(int i, int heads) {
  Options o;
  switch (i % 5) {
    case 0:
      o.mask = Mask::causal();
      break;
    case 1:
      o.mask = Mask::sliding_window(7);
      break;
    case 2:
      o.mask = Mask::causal();
      o.sinks.assign(static_cast<std::size_t>(heads), 0.25);
      o.alibi_slopes = attend::geometric_alibi_slopes(heads);
      break;
    case 3:
      o.mask = Mask::causal();
      o.softcap = 20;
      break;
    default:
      break;  // none(): each new token sees its whole sequence
  }
  return o;
}

// ---------------------------------------------------------------------------------------------------------------
// Bookkeeping.

TEST(PagedKVCache, SequencesGrowAPageAtATime) {
  std::mt19937 rng(1701);
  attend::PagedKVCache<float> cache(4);
  EXPECT_EQ(cache.page_tokens(), 4);
  const int a = cache.add_sequence(), b = cache.add_sequence(), c = cache.add_sequence();
  EXPECT_EQ(a, 0);
  EXPECT_EQ(b, 1);
  EXPECT_EQ(c, 2);
  const Matrix<float> k = random_matrix<float>(13, 6, rng), v = random_matrix<float>(13, 4, rng);
  cache.append({a, b, c}, {0, 10, 13, 13}, k, v);  // 10, 3 and 0 tokens
  EXPECT_EQ(cache.length(a), 10);
  EXPECT_EQ(cache.length(b), 3);
  EXPECT_EQ(cache.length(c), 0);
  EXPECT_EQ(cache.tokens(), 13);
  EXPECT_EQ(cache.pages_in_use(), 3 + 1);
  EXPECT_EQ(cache.key_width(), 6);
  EXPECT_EQ(cache.value_width(), 4);
  EXPECT_EQ(cache.bytes(), std::size_t(4) * 4 * (6 + 4) * sizeof(float));
  EXPECT_TRUE(same_bits(cache.keys(a), Matrix<float>(k.topRows(10))));
  EXPECT_TRUE(same_bits(cache.values(b), Matrix<float>(v.middleRows(10, 3))));
  EXPECT_EQ(cache.keys(c).rows(), 0);
  // One more token to each: a fills its third page, b its first, c starts one.
  const Matrix<float> k2 = random_matrix<float>(3, 6, rng), v2 = random_matrix<float>(3, 4, rng);
  cache.append({c, a, b}, {0, 1, 2, 3}, k2, v2);
  EXPECT_EQ(cache.pages_in_use(), 3 + 1 + 1);
  Matrix<float> want(11, 6);
  want << k.topRows(10), k2.row(1);
  EXPECT_TRUE(same_bits(cache.keys(a), want));
  cache.append(b, k2.topRows(1), v2.topRows(1));
  EXPECT_EQ(cache.length(b), 5);
  EXPECT_EQ(cache.pages_in_use(), 3 + 2 + 1);
}

TEST(PagedKVCache, ReleasedPagesAndIdsAreReused) {
  std::mt19937 rng(1702);
  attend::PagedKVCache<float> cache(2);
  std::vector<int> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(cache.add_sequence());
  const Matrix<float> k = random_matrix<float>(24, 8, rng);
  cache.append(ids, {0, 6, 12, 18, 24}, k, k);  // 3 pages each
  EXPECT_EQ(cache.pages_in_use(), 12);
  const std::size_t full = cache.bytes();
  cache.release(ids[1]);
  cache.release(ids[2]);
  EXPECT_FALSE(cache.holds(ids[1]));
  EXPECT_EQ(cache.sequences(), (std::vector<int>{0, 3}));
  EXPECT_EQ(cache.pages_in_use(), 6);
  EXPECT_EQ(cache.free_pages(), 6);
  EXPECT_EQ(cache.bytes(), full);  // kept for reuse
  // New sequences take the lowest free ids and the free pages: no page is allocated.
  const int x = cache.add_sequence(), y = cache.add_sequence(), z = cache.add_sequence();
  EXPECT_EQ(x, 1);
  EXPECT_EQ(y, 2);
  EXPECT_EQ(z, 4);
  cache.append({x, y}, {0, 6, 12}, k.topRows(12), k.topRows(12));
  EXPECT_EQ(cache.free_pages(), 0);
  EXPECT_EQ(cache.bytes(), full);
  EXPECT_TRUE(same_bits(cache.keys(y), Matrix<float>(k.middleRows(6, 6))));
}

TEST(PagedKVCache, MemoryFollowsTheTokensHeld) {
  std::mt19937 rng(1703);
  attend::PagedKVCache<float> cache(16);
  std::vector<int> ids;
  std::vector<Index> offsets{0};
  for (int i = 0; i < 8; ++i) {
    ids.push_back(cache.add_sequence());
    offsets.push_back(offsets.back() + 100);
  }
  const Matrix<float> k = random_matrix<float>(800, 16, rng);
  cache.append(ids, offsets, k, k);
  const std::size_t page_bytes = 16 * 32 * sizeof(float);
  EXPECT_EQ(cache.pages_in_use(), 8 * 7);
  EXPECT_EQ(cache.bytes(), 56 * page_bytes);
  for (int i = 0; i < 7; ++i) cache.release(ids[static_cast<std::size_t>(i)]);
  // Free pages beyond as many as are in use go back to the allocator.
  EXPECT_EQ(cache.pages_in_use(), 7);
  EXPECT_LE(cache.free_pages(), cache.pages_in_use());
  EXPECT_EQ(cache.bytes(), std::size_t(cache.pages_in_use() + cache.free_pages()) * page_bytes);
  cache.shrink_to_fit();
  EXPECT_EQ(cache.bytes(), 7 * page_bytes);
  cache.release(ids.back());
  EXPECT_EQ(cache.bytes(), 0u);
  EXPECT_EQ(cache.key_width(), 0);
  // An empty cache takes a layer of any widths.
  const int s = cache.add_sequence();
  cache.append(s, random_matrix<float>(3, 8, rng), random_matrix<float>(3, 4, rng));
  EXPECT_EQ(cache.key_width(), 8);
  EXPECT_EQ(cache.bytes(), 16 * 12 * sizeof(float));
}

TEST(PagedKVCache, CopiesHoldTheSameSequences) {
  std::mt19937 rng(1704);
  attend::PagedKVCache<double> cache(3);
  const int a = cache.add_sequence(), b = cache.add_sequence();
  cache.append({a, b}, {0, 4, 9}, random_matrix<double>(9, 4, rng), random_matrix<double>(9, 2, rng));
  cache.release(a);
  attend::PagedKVCache<double> copy = cache;
  EXPECT_EQ(copy.sequences(), cache.sequences());
  EXPECT_TRUE(same_bits(copy.keys(b), cache.keys(b)));
  EXPECT_TRUE(same_bits(copy.values(b), cache.values(b)));
  copy.append(b, Matrix<double>::Ones(1, 4), Matrix<double>::Ones(1, 2));
  EXPECT_EQ(cache.length(b), 5);
  EXPECT_EQ(copy.length(b), 6);
  EXPECT_EQ(copy.add_sequence(), a);  // the released id travels with the copy
  attend::PagedKVCache<double> moved = std::move(copy);
  EXPECT_EQ(moved.length(b), 6);
}

// 16-bit and 8-bit pages hold what a KVCache and a LatentCache of the same storage hold: the same rounding (q8: the
// same blocks and half scales), in the same bytes per token.
template <class S>
class NarrowPages : public ::testing::Test {};
using NarrowStorage = ::testing::Types<Eigen::bfloat16, Eigen::half, attend::q8>;
TYPED_TEST_SUITE(NarrowPages, NarrowStorage);

TYPED_TEST(NarrowPages, HoldWhatTheContiguousCachesHold) {
  using S = TypeParam;
  std::mt19937 rng(1705);
  const Matrix<float> k = random_matrix<float>(21, 64, rng), v = random_matrix<float>(21, 32, rng);
  attend::KVCache<float, S> flat;
  flat.append(k, v);
  attend::PagedKVCache<float, S> paged(5);
  const int s = paged.add_sequence();
  paged.append(s, k.topRows(11), v.topRows(11));
  paged.append(s, k.bottomRows(10), v.bottomRows(10));
  EXPECT_TRUE(same_bits(paged.keys_dequantized(s), flat.keys_dequantized()));
  EXPECT_TRUE(same_bits(paged.values_dequantized(s), flat.values_dequantized()));
  EXPECT_EQ(paged.bytes(), 5 * 5 * flat.bytes() / 21);  // 5 pages of 5 tokens
  attend::PagedLatentCache<float, S> latent(4);
  const int t = latent.add_sequence();
  latent.append({t}, {0, 21}, k, 32);
  attend::LatentCache<float, S> flat_latent;
  flat_latent.append(k, 32);
  EXPECT_TRUE(same_bits(latent.entries_dequantized(t), flat_latent.entries_dequantized()));
  EXPECT_EQ(latent.rope_width(), 32);
}

TEST(PagedLatentCache, EntriesGrowAPageAtATime) {
  std::mt19937 rng(1706);
  attend::PagedLatentCache<float> cache(3);
  const int a = cache.add_sequence(), b = cache.add_sequence();
  const Matrix<float> rows = random_matrix<float>(8, 10, rng);
  cache.append({b, a}, {0, 5, 8}, rows, 6);
  EXPECT_EQ(cache.latent_width(), 6);
  EXPECT_EQ(cache.rope_width(), 4);
  EXPECT_EQ(cache.length(b), 5);
  EXPECT_EQ(cache.pages_in_use(), 2 + 1);
  EXPECT_TRUE(same_bits(cache.entries(a), Matrix<float>(rows.bottomRows(3))));
  cache.release(b);
  EXPECT_EQ(cache.pages_in_use(), 1);
  EXPECT_EQ(cache.add_sequence(), b);
}

// ---------------------------------------------------------------------------------------------------------------
// The kernel through page tables against the same keys contiguous.

template <class P>
class PagedKernel : public ::testing::Test {};
template <class T, class S = T>
struct Pair {
  using Q = T;
  using KV = S;
};
using Pairs = ::testing::Types<Pair<float>, Pair<double>, Pair<float, Eigen::bfloat16>, Pair<float, Eigen::half>>;
TYPED_TEST_SUITE(PagedKernel, Pairs);

// Sequences filled over several appends into pages of 1, 3 (not whole panels of the packed products), 16 and 64
// tokens; the ragged kernel over their page tables and over the same keys stacked contiguously. Float and double
// give the same bits: every tile, chunk and panel is the same. 16-bit keys give the same values up to the order
// of the additions where a page ends inside a block of the 16-bit score products.
TYPED_TEST(PagedKernel, PageTablesGiveTheKeysContiguousWouldGive) {
  using T = typename TypeParam::Q;
  using S = typename TypeParam::KV;
  using C = attend::accumulator_t<T>;
  std::mt19937 rng(1707);
  const Heads h{8, 2};
  const Index d = 32, kw = h.kv * d;
  for (Index page : {1, 3, 16, 64}) {
    attend::PagedKVCache<T, S> cache(page);
    const std::vector<Index> lengths = {700, 1, 0, 130, 40, 1500, 9};
    std::vector<int> ids;
    for (std::size_t b = 0; b < lengths.size(); ++b) ids.push_back(cache.add_sequence());
    // Keys arrive in three rounds, interleaved across sequences, as a server appends them.
    std::vector<Matrix<S>> keys(lengths.size(), Matrix<S>(0, kw)), values(lengths.size(), Matrix<S>(0, kw));
    for (int round = 0; round < 3; ++round) {
      std::vector<Index> offsets{0};
      std::vector<Matrix<S>> k_parts, v_parts;
      for (std::size_t b = 0; b < lengths.size(); ++b) {
        const Index n = lengths[b] * (round + 1) / 3 - lengths[b] * round / 3;
        k_parts.push_back(random_matrix<S>(n, kw, rng));
        v_parts.push_back(random_matrix<S>(n, kw, rng));
        offsets.push_back(offsets.back() + n);
        Matrix<S> kb(keys[b].rows() + n, kw), vb(values[b].rows() + n, kw);
        kb << keys[b], k_parts.back();
        vb << values[b], v_parts.back();
        keys[b] = kb;
        values[b] = vb;
      }
      Matrix<S> k(offsets.back(), kw), v(offsets.back(), kw);
      for (std::size_t b = 0; b < lengths.size(); ++b) {
        k.middleRows(offsets[b], offsets[b + 1] - offsets[b]) = k_parts[b];
        v.middleRows(offsets[b], offsets[b + 1] - offsets[b]) = v_parts[b];
      }
      cache.append(ids, offsets, k, v);
    }
    // Queries: a decode, a chunk of a prefill, nothing, a whole prompt, ...
    const std::vector<Index> queries = {1, 1, 0, 130, 7, 1, 9};
    attend::Ragged r{{0}, {0}};
    for (std::size_t b = 0; b < lengths.size(); ++b) {
      r.q_offsets.push_back(r.q_offsets.back() + queries[b]);
      r.kv_offsets.push_back(r.kv_offsets.back() + lengths[b]);
    }
    Matrix<S> k(r.kv_offsets.back(), kw), v(r.kv_offsets.back(), kw);
    for (std::size_t b = 0; b < lengths.size(); ++b) {
      k.middleRows(r.kv_offsets[b], lengths[b]) = keys[b];
      v.middleRows(r.kv_offsets[b], lengths[b]) = values[b];
    }
    const Matrix<T> q = random_matrix<T>(r.q_offsets.back(), h.query * d, rng);
    for (int i = 0; i < 5; ++i) {
      const Options o = options_of(i, h.query);
      const auto want = attend::multi_head_attention_with_lse(q, k, v, r, h, o);
      Matrix<T> out(q.rows(), h.query * d);
      Matrix<C> lse(q.rows(), h.query);
      attend::detail::paged_attention<T>(q, cache, ids, r.q_offsets, h, kw, kw, o, out, &lse);
      if constexpr (std::is_same_v<S, T>) {
        EXPECT_TRUE(same_bits(out, want.out)) << "page " << page << ", options " << i;
        EXPECT_TRUE(same_bits(lse, want.lse)) << "page " << page << ", options " << i;
      } else {
        EXPECT_LE(relative_diff(out, want.out), 1e-5) << "page " << page << ", options " << i;
        EXPECT_LE(relative_diff(lse, want.lse), 1e-5) << "page " << page << ", options " << i;
      }
    }
  }
}

// q8 pages against the same q8 rows contiguous: a Q8Matrix of the same blocks with the pages' half scales (in
// float), through the ragged q8 call. Equal up to the order of the additions where a page ends inside a block of
// the narrow products, as 16-bit pages.
TEST(PagedKernelQ8, PageTablesGiveTheKeysContiguousWouldGive) {
  std::mt19937 rng(1713);
  const Heads h{8, 2};
  const Index d = 32, kw = h.kv * d;
  const std::vector<Index> lengths = {700, 1, 0, 130, 40, 1500, 9}, queries = {1, 1, 0, 130, 7, 1, 9};
  attend::Ragged r{{0}, {0}};
  for (std::size_t b = 0; b < lengths.size(); ++b) {
    r.q_offsets.push_back(r.q_offsets.back() + queries[b]);
    r.kv_offsets.push_back(r.kv_offsets.back() + lengths[b]);
  }
  const Matrix<float> k = random_matrix<float>(r.kv_offsets.back(), kw, rng);
  const Matrix<float> v = random_matrix<float>(r.kv_offsets.back(), kw, rng);
  const Matrix<float> q = random_matrix<float>(r.q_offsets.back(), h.query * d, rng);
  attend::Q8Matrix k8 = attend::quantize_q8(k), v8 = attend::quantize_q8(v);
  for (attend::Q8Matrix* m : {&k8, &v8})
    for (Index i = 0; i < m->rows() * m->blocks(); ++i) m->scales()[i] = float(Eigen::half(m->scales()[i]));
  for (Index page : {1, 3, 16, 64}) {
    attend::PagedKVCache<float, attend::q8> cache(page);
    std::vector<int> ids;
    for (std::size_t b = 0; b < lengths.size(); ++b) ids.push_back(cache.add_sequence());
    cache.append(ids, r.kv_offsets, k, v);
    for (int i = 0; i < 5; ++i) {
      const Options o = options_of(i, h.query);
      const auto want = attend::multi_head_attention_with_lse(q, k8, v8, r, h, o);
      Matrix<float> out(q.rows(), h.query * d), lse(q.rows(), h.query);
      attend::detail::paged_attention<float>(q, cache, ids, r.q_offsets, h, kw, kw, o, out, &lse);
      EXPECT_LE(relative_diff(out, want.out), 1e-5) << "page " << page << ", options " << i;
      EXPECT_LE(relative_diff(lse, want.lse), 1e-5) << "page " << page << ", options " << i;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Serving runs.

// A simulated server: requests arrive with prompts of various lengths, are prefilled in chunks, then decode one
// token a step (the next input is a random row: there is no vocabulary here), sometimes stall a step, and leave
// when done. Each step is one forward over the batch; a twin of every request is fed the same rows alone through
// `Alone` (a KVCache or LatentCache) and every output row is compared.
template <class Layer, class Paged, class Alone>
void serve(const Layer& layer, int d_model, Index page_tokens, int steps, std::mt19937& rng, const Options& o,
           double tol, const std::string& what) {
  using T = typename Paged::Scalar;
  struct Request {
    int id;
    Matrix<T> prompt;
    Index fed = 0;
    int to_generate;
    Alone alone;
  };
  Paged cache(page_tokens);
  std::vector<Request> live;
  std::uniform_int_distribution<int> arrivals(0, 2), prompt(1, 60), chunk(1, 24), generate(1, 30), coin(0, 9);
  double worst = 0;
  Index peak_pages = 0, max_batch = 0, reused = 0;
  for (int step = 0; step < steps; ++step) {
    for (int a = arrivals(rng); a > 0; --a) {
      const Index free_before = cache.free_pages();
      live.push_back(Request{cache.add_sequence(), random_matrix<T>(prompt(rng), d_model, rng), 0, generate(rng), {}});
      reused += free_before > 0;
    }
    // This step's rows: a chunk of the prompt, one new token, or (now and then) nothing.
    std::vector<std::size_t> order(live.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<int> seqs;
    std::vector<Index> offsets{0};
    std::vector<Matrix<T>> rows;
    for (const std::size_t i : order) {
      Request& r = live[i];
      Matrix<T> x;
      if (coin(rng) == 0)
        x = Matrix<T>(0, d_model);  // a stall: in the batch with no new token
      else if (r.fed < r.prompt.rows())
        x = r.prompt.middleRows(r.fed, std::min<Index>(chunk(rng), r.prompt.rows() - r.fed));
      else
        x = random_matrix<T>(1, d_model, rng);
      r.fed += std::min(x.rows(), std::max<Index>(0, r.prompt.rows() - r.fed));
      seqs.push_back(r.id);
      offsets.push_back(offsets.back() + x.rows());
      rows.push_back(x);
    }
    Matrix<T> batch(offsets.back(), d_model);
    for (std::size_t b = 0; b < rows.size(); ++b) batch.middleRows(offsets[b], rows[b].rows()) = rows[b];
    const Matrix<T> y = layer.forward(batch, cache, seqs, offsets, o);
    ASSERT_EQ(y.rows(), batch.rows());
    max_batch = std::max<Index>(max_batch, Index(seqs.size()));
    peak_pages = std::max(peak_pages, cache.pages_in_use());
    for (std::size_t b = 0; b < rows.size(); ++b) {
      Request& r = live[order[b]];
      const Matrix<T> want = layer.forward(rows[b], r.alone, o);
      const double diff = relative_diff(y.middleRows(offsets[b], rows[b].rows()), want);
      worst = std::max(worst, diff);
      EXPECT_LE(diff, tol) << what << ": step " << step << ", sequence " << r.id << ", " << rows[b].rows() << " rows";
      EXPECT_EQ(cache.length(r.id), r.alone.size());
    }
    // Requests whose prompt is in and whose tokens are out leave.
    for (std::size_t i = 0; i < live.size();) {
      Request& r = live[i];
      if (r.fed >= r.prompt.rows() && cache.length(r.id) >= r.prompt.rows() + r.to_generate) {
        cache.release(r.id);
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
      } else {
        ++i;
      }
    }
  }
  EXPECT_GE(max_batch, 4) << what << ": the run never batched several sequences";
  EXPECT_GT(reused, 0) << what << ": no arrival found free pages to reuse";
  EXPECT_LE(cache.free_pages(), std::max<Index>(cache.pages_in_use(), peak_pages));
  ::testing::Test::RecordProperty(what + "_worst", std::to_string(worst));
}

template <class P>
class Serving : public ::testing::Test {};
using ServingPairs = ::testing::Types<Pair<float>, Pair<double>, Pair<float, Eigen::bfloat16>, Pair<float, Eigen::half>,
                                      Pair<float, attend::q8>>;
TYPED_TEST_SUITE(Serving, ServingPairs);

// Tolerances: float and double compare one precision's kernel over keys projected in one batch instead of per
// sequence (an ulp apart at most); 16-bit caches round those keys to 16 bits, where an ulp of float can become one
// ulp of a stored key: two ulps of the 16-bit type (2^-7 for bfloat16, 2^-10 for half) leave room for that.
// q8: a key that differs by an ulp can cross the rounding point of its 8-bit value, one step of its block's
// scale (max |x| / 127).
template <class T, class S>
double serving_tolerance() {
  if constexpr (std::is_same_v<S, attend::q8>) return 5e-3;  // 5.1e-4 seen
  if constexpr (std::is_same_v<S, Eigen::bfloat16>) return 8e-3;
  if constexpr (std::is_same_v<S, Eigen::half>) return 1e-3;
  return std::is_same_v<T, float> ? 1e-5 : 1e-12;
}

TYPED_TEST(Serving, EverySequenceGetsTheRowsOfItsOwnKVCache) {
  using T = typename TypeParam::Q;
  using S = typename TypeParam::KV;
  std::mt19937 rng(1708);
  for (int i = 0; i < 5; ++i) {
    const int heads = i % 2 ? 4 : 8, kv_heads = i % 3 == 0 ? 1 : 2;
    const int head_dim = std::is_same_v<S, attend::q8> ? 32 : 16;  // q8: heads of whole blocks
    const auto layer = attend_test::random_mha<T>(48, heads, kv_heads, head_dim, rng);
    const Index page = std::vector<Index>{16, 1, 3, 64, 5}[static_cast<std::size_t>(i)];
    serve<attend::MultiHeadAttention<T>, attend::PagedKVCache<T, S>, attend::KVCache<T, S>>(
        layer, 48, page, 30, rng, options_of(i, heads), serving_tolerance<T, S>(),
        "case " + std::to_string(i) + ", page " + std::to_string(page));
  }
}

// kv_lora_rank 16 and rope 4; for q8 caches 32 and 32 (the latent and the whole row in blocks of 32).
template <class T, class S = T>
attend::MultiHeadLatentAttention<T> random_mla(bool q_lora, std::mt19937& rng) {
  constexpr bool q8 = std::is_same_v<S, attend::q8>;
  typename attend::MultiHeadLatentAttention<T>::Config c;
  c.d_model = 40, c.heads = 4, c.q_lora_rank = q_lora ? 12 : 0, c.kv_lora_rank = q8 ? 32 : 16, c.qk_nope_head_dim = 8;
  c.qk_rope_head_dim = q8 ? 32 : 4, c.v_head_dim = 8;
  attend::MultiHeadLatentAttention<T> m(c);
  for (auto* lin : {&m.q_proj, &m.q_a_proj, &m.q_b_proj, &m.kv_a_proj_with_mqa, &m.kv_b_proj, &m.o_proj})
    if (lin->weight.size() != 0) attend_test::randomize(*lin, rng);
  m.kv_a_layernorm.weight = attend::Vector<T>::Ones(c.kv_lora_rank) + random_matrix<T>(c.kv_lora_rank, 1, rng, 0.1);
  if (q_lora) m.q_a_layernorm.weight = attend::Vector<T>::Ones(12);
  return m;
}

TYPED_TEST(Serving, EveryLatentSequenceGetsTheRowsOfItsOwnLatentCache) {
  using T = typename TypeParam::Q;
  using S = typename TypeParam::KV;
  std::mt19937 rng(1709);
  for (int i = 0; i < 3; ++i) {
    const auto layer = random_mla<T, S>(i == 1, rng);
    const Index page = std::vector<Index>{16, 3, 1}[static_cast<std::size_t>(i)];
    Options o = options_of(i == 2 ? 4 : i, 4);
    o.softcap = 0;  // the latent path refuses a softcap with key biases, which random_mla has
    serve<attend::MultiHeadLatentAttention<T>, attend::PagedLatentCache<T, S>, attend::LatentCache<T, S>>(
        layer, 40, page, 30, rng, o, serving_tolerance<T, S>(),
        "case " + std::to_string(i) + ", page " + std::to_string(page));
  }
}

// A decode step of many sequences and a long prefill chunk in one call, at 1 and 2 threads, bit for bit.
#if defined(_OPENMP)
TEST(Serving, OneAndTwoThreadsAgreeBitForBit) {
  const int saved = omp_get_max_threads();
  std::mt19937 rng(1710);
  const auto layer = attend_test::random_mha<float>(64, 8, 2, 32, rng);
  Options o;
  o.mask = Mask::causal();
  std::vector<Matrix<float>> out;
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    std::mt19937 data(1711);
    attend::PagedKVCache<float> cache(16);
    std::vector<int> ids;
    std::vector<Index> offsets{0};
    for (int b = 0; b < 12; ++b) {
      ids.push_back(cache.add_sequence());
      offsets.push_back(offsets.back() + 100 + 150 * b);
    }
    cache.append(ids, offsets, random_matrix<float>(offsets.back(), 64, data),
                 random_matrix<float>(offsets.back(), 64, data));
    std::vector<Index> step{0};
    for (int b = 0; b < 12; ++b) step.push_back(step.back() + (b == 5 ? 300 : 1));
    out.push_back(layer.forward(random_matrix<float>(step.back(), 64, data), cache, ids, step, o));
  }
  omp_set_num_threads(saved);
  EXPECT_TRUE(same_bits(out[0], out[1]));
}
#endif

}  // namespace
