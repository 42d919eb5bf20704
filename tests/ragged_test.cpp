// Ragged batches: multi_head_attention(q, k, v, Ragged, heads, options) against the same kernel on each sequence's
// rows alone (bitwise, as documented, and within 1e-5 / 1e-12 relative), against the double reference, over
// random batches with empty sequences, one-token sequences, Lq > Lk under causal masks, windows, GQA and MQA,
// sinks, ALiBi, softcaps, 16-bit and 8-bit (q8) storage; 1 and 2 threads bit for bit; small tiles through the kernel
// seam.
#include <gtest/gtest.h>

#include <algorithm>
#include <attend/attend.hpp>
#include <random>
#include <string>
#include <vector>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include "kernel_seam.hpp"
#include "test_util.hpp"

using attend::Heads;
using attend::Index;
using attend::Mask;
using attend::Matrix;
using attend::Options;
using attend::Ragged;
using attend_test::random_matrix;

namespace {

// Offsets of a random batch: lengths from `lq` and `lk` choices, sometimes empty, sometimes Lq > Lk.
Ragged random_batch(std::mt19937& rng, int sequences, const std::vector<Index>& lq, const std::vector<Index>& lk) {
  Ragged r{{0}, {0}};
  std::uniform_int_distribution<std::size_t> pick_q(0, lq.size() - 1), pick_k(0, lk.size() - 1);
  for (int b = 0; b < sequences; ++b) {
    r.q_offsets.push_back(r.q_offsets.back() + lq[pick_q(rng)]);
    r.kv_offsets.push_back(r.kv_offsets.back() + lk[pick_k(rng)]);
  }
  return r;
}

std::string describe(const Ragged& r) {
  std::string s;
  for (std::size_t b = 0; b + 1 < r.q_offsets.size(); ++b)
    s += " (" + std::to_string(r.q_offsets[b + 1] - r.q_offsets[b]) + ", " +
         std::to_string(r.kv_offsets[b + 1] - r.kv_offsets[b]) + ")";
  return s;
}

// The options of case `i`: every mask kind, with sinks, ALiBi and a softcap on some.
Options options_of(int i, int heads) {
  Options o;
  switch (i % 6) {
    case 0:
      break;
    case 1:
      o.mask = Mask::causal();
      break;
    case 2:
      o.mask = Mask::sliding_window(5);
      break;
    case 3:
      o.mask = Mask::causal_top_left();
      o.softcap = 15;
      break;
    case 4:
      o.mask = Mask::causal();
      o.sinks.assign(static_cast<std::size_t>(heads), 0.75);
      o.alibi_slopes = attend::geometric_alibi_slopes(heads);
      break;
    default:
      o.mask = Mask::sliding_window(300);
      o.sinks.assign(static_cast<std::size_t>(heads), -0.5);
      break;
  }
  return o;
}

bool bitwise_equal(const Matrix<float>& a, const Matrix<float>& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols()) return false;
  for (Index i = 0; i < a.size(); ++i)
    if (!(a.data()[i] == b.data()[i] || (std::isnan(a.data()[i]) && std::isnan(b.data()[i])))) return false;
  return true;
}
template <class T>
bool bitwise_equal(const Matrix<T>& a, const Matrix<T>& b) {
  return bitwise_equal(Matrix<float>(a.template cast<float>()), Matrix<float>(b.template cast<float>()));
}
bool bitwise_equal(const Matrix<double>& a, const Matrix<double>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() && (a.array() == b.array()).all();
}

// max |a - b| / max(1, max |b|): relative to the size of the values compared.
template <class A, class B>
double relative_diff(const A& a, const B& b) {
  const double scale = std::max(1.0, b.size() ? b.template cast<double>().cwiseAbs().maxCoeff() : 0.0);
  return attend_test::max_abs_diff(a, b) / scale;
}

// Keys and values as the tests hold them: Matrix<S>, or a Q8Matrix for attend::q8 (float queries over 8-bit keys and
// values; q8 rows are quantized row by row, so a sequence's rows of quantize_q8(k) are quantize_q8 of its rows).
template <class S>
struct Stored {
  using type = Matrix<S>;
};
template <>
struct Stored<attend::q8> {
  using type = attend::Q8Matrix;
};
template <class S>
using stored_t = typename Stored<S>::type;

template <class S>
stored_t<S> random_kv(Index rows, Index cols, std::mt19937& rng) {
  if constexpr (std::is_same_v<S, attend::q8>)
    return attend::quantize_q8(random_matrix<float>(rows, cols, rng));
  else
    return random_matrix<S>(rows, cols, rng);
}
// A head dim for storage S: q8 heads are whole blocks of 32.
template <class S>
Index head_dim(Index d) {
  return std::is_same_v<S, attend::q8> ? std::max<Index>(32, 2 * d) : d;
}
template <class S>
Matrix<S> rows_of(const Matrix<S>& m, Index r0, Index n) {
  return m.middleRows(r0, n);
}
attend::Q8Matrix rows_of(const attend::Q8Matrix& m, Index r0, Index n) {
  attend::Q8Matrix out(n, m.cols());
  std::copy_n(m.data() + r0 * m.cols(), n * m.cols(), out.data());
  std::copy_n(m.scales() + r0 * m.blocks(), n * m.blocks(), out.scales());
  return out;
}
// The kernel's view of stored keys or values.
template <class S>
attend::detail::ConstRowsRef<S> view(const Matrix<S>& m) {
  return attend::detail::ConstRowsRef<S>(m);
}
attend::detail::Q8Rows<float> view(const attend::Q8Matrix& m) { return attend::detail::q8_rows(m); }

// Every sequence of the ragged result against the kernel on its rows alone.
template <class T, class KV>
void expect_each_sequence_alone(const Matrix<T>& q, const KV& k, const KV& v, const Ragged& r, Heads h,
                                const Options& o, const attend::AttentionResult<T>& got, const std::string& what) {
  using C = attend::accumulator_t<T>;
  for (std::size_t b = 0; b + 1 < r.q_offsets.size(); ++b) {
    const Index q0 = r.q_offsets[b], lq = r.q_offsets[b + 1] - q0, k0 = r.kv_offsets[b], lk = r.kv_offsets[b + 1] - k0;
    if (lq == 0) continue;
    const KV kb = rows_of(k, k0, lk), vb = rows_of(v, k0, lk);
    const auto alone = attend::multi_head_attention_with_lse(Matrix<T>(q.middleRows(q0, lq)), kb, vb, h, o);
    const Matrix<T> out = got.out.middleRows(q0, lq);
    const Matrix<C> lse = got.lse.middleRows(q0, lq);
    EXPECT_TRUE(bitwise_equal(out, alone.out)) << what << ", sequence " << b << " (" << lq << ", " << lk << ")";
    EXPECT_TRUE(bitwise_equal(lse, alone.lse)) << what << ", sequence " << b << " lse";
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
      EXPECT_LE(relative_diff(out, alone.out), tol) << what << ", sequence " << b;
    }
  }
}

template <class T>
struct Types {
  using Q = T;
  using KV = T;
};
struct FloatOverBf16 {
  using Q = float;
  using KV = Eigen::bfloat16;
};
struct FloatOverHalf {
  using Q = float;
  using KV = Eigen::half;
};
struct FloatOverQ8 {
  using Q = float;
  using KV = attend::q8;
};

template <class P>
class RaggedKernel : public ::testing::Test {};
using Pairs = ::testing::Types<Types<float>, Types<double>, FloatOverBf16, FloatOverHalf, FloatOverQ8,
                               Types<Eigen::bfloat16>, Types<Eigen::half>>;
TYPED_TEST_SUITE(RaggedKernel, Pairs);

// Random batches with empty sequences (no queries, no keys or neither), one-token decodes, Lq > Lk, long caches that
// split into chunks and prefills of several tiles, for every mask kind and MHA, GQA and MQA.
TYPED_TEST(RaggedKernel, EachSequenceEqualsTheKernelOnItsRowsAlone) {
  using T = typename TypeParam::Q;
  using S = typename TypeParam::KV;
  std::mt19937 rng(1601);
  const std::vector<Heads> heads = {{8, 2}, {4, 4}, {6, 1}};
  for (int i = 0; i < 18; ++i) {
    const Heads h = heads[static_cast<std::size_t>(i) % heads.size()];
    const Index d = head_dim<S>(i % 2 ? 16 : 32);
    const Ragged r = random_batch(rng, 1 + i % 7, {0, 1, 1, 2, 7, 40, 90}, {0, 1, 3, 7, 40, 300, 700, 1300});
    const Options o = options_of(i, h.query);
    const Matrix<T> q = random_matrix<T>(r.q_offsets.back(), h.query * d, rng);
    const stored_t<S> k = random_kv<S>(r.kv_offsets.back(), h.kv * d, rng);
    const stored_t<S> v = random_kv<S>(r.kv_offsets.back(), h.kv * d, rng);
    const auto got = attend::multi_head_attention_with_lse(q, k, v, r, h, o);
    ASSERT_EQ(got.out.rows(), q.rows());
    ASSERT_EQ(got.out.cols(), h.query * d);
    EXPECT_TRUE(bitwise_equal(got.out, attend::multi_head_attention(q, k, v, r, h, o)));
    Matrix<T> into(q.rows(), h.query * d);
    attend::multi_head_attention_into(q, k, v, r, h, into, o);
    EXPECT_TRUE(bitwise_equal(got.out, into));
    expect_each_sequence_alone(q, k, v, r, h, o, got, "case " + std::to_string(i) + ":" + describe(r));
  }
}

// The same through the kernel seam with tiny tiles: prefills of many query tiles, keys cut by the mask into narrow
// tiles, decodes split into many chunks, all on small shapes.
TYPED_TEST(RaggedKernel, SmallTilesGiveEachSequenceTheBitsOfItsOwnCall) {
  using T = typename TypeParam::Q;
  using S = typename TypeParam::KV;
  using C = attend::accumulator_t<T>;
  std::mt19937 rng(1602);
  const auto tiles = attend_test::tiles().with_queries(4).with_keys(8).with_decode_chunk(16).with_cut_keys(4);
  for (int i = 0; i < 12; ++i) {
    const Heads h = i % 3 == 0 ? Heads{2, 1} : Heads{4, 2};
    const Ragged r = random_batch(rng, 1 + i % 5, {0, 1, 2, 3, 9, 20}, {0, 1, 5, 9, 33, 70});
    const Options o = options_of(i, h.query);
    const Index d = head_dim<S>(8);
    const Matrix<T> q = random_matrix<T>(r.q_offsets.back(), h.query * d, rng);
    const stored_t<S> k = random_kv<S>(r.kv_offsets.back(), h.kv * d, rng);
    const stored_t<S> v = random_kv<S>(r.kv_offsets.back(), h.kv * d, rng);
    Matrix<T> out(q.rows(), h.query * d);
    Matrix<C> lse(q.rows(), h.query);
    const attend::detail::ConstRowsRef<T> qr(q);
    attend::detail::ragged_attention(qr, view(k), view(v), r, h, o, out, &lse, tiles);
    for (std::size_t b = 0; b + 1 < r.q_offsets.size(); ++b) {
      const Index q0 = r.q_offsets[b], lq = r.q_offsets[b + 1] - q0, k0 = r.kv_offsets[b];
      const Index lk = r.kv_offsets[b + 1] - k0;
      if (lq == 0) continue;
      const Matrix<T> qb = q.middleRows(q0, lq);
      const stored_t<S> kb = rows_of(k, k0, lk), vb = rows_of(v, k0, lk);
      Matrix<T> alone(lq, h.query * d);
      Matrix<C> alone_lse(lq, h.query);
      const attend::detail::ConstRowsRef<T> qbr(qb);
      const auto kbr = view(kb), vbr = view(vb);
      attend::detail::attention(attend::detail::make_problem(qbr, kbr, vbr, nullptr, h, o), alone, &alone_lse, tiles);
      EXPECT_TRUE(bitwise_equal(Matrix<T>(out.middleRows(q0, lq)), alone))
          << "case " << i << describe(r) << " seq " << b;
      EXPECT_TRUE(bitwise_equal(Matrix<C>(lse.middleRows(q0, lq)), alone_lse)) << "case " << i << " seq " << b;
    }
  }
}

template <class T>
class RaggedReference : public ::testing::Test {};
TYPED_TEST_SUITE(RaggedReference, attend_test::Scalars);

// Against the textbook double oracle on each sequence: the ragged call means per-sequence attention.
TYPED_TEST(RaggedReference, EachSequenceMatchesTheDoubleReference) {
  using T = TypeParam;
  std::mt19937 rng(1603);
  for (int i = 0; i < 12; ++i) {
    const Heads h = i % 2 ? Heads{4, 1} : Heads{6, 3};
    const Ragged r = random_batch(rng, 2 + i % 4, {0, 1, 3, 12}, {0, 2, 12, 80, 600});
    const Options o = options_of(i, h.query);
    const Matrix<T> q = random_matrix<T>(r.q_offsets.back(), h.query * 16, rng);
    const Matrix<T> k = random_matrix<T>(r.kv_offsets.back(), h.kv * 16, rng);
    const Matrix<T> v = random_matrix<T>(r.kv_offsets.back(), h.kv * 8, rng);
    const Matrix<T> got = attend::multi_head_attention(q, k, v, r, h, o);
    for (std::size_t b = 0; b + 1 < r.q_offsets.size(); ++b) {
      const Index q0 = r.q_offsets[b], lq = r.q_offsets[b + 1] - q0, k0 = r.kv_offsets[b];
      const Index lk = r.kv_offsets[b + 1] - k0;
      if (lq == 0) continue;
      const Matrix<double> want = attend::reference::multi_head_attention(
          Matrix<T>(q.middleRows(q0, lq)), Matrix<T>(k.middleRows(k0, lk)), Matrix<T>(v.middleRows(k0, lk)), h, o);
      EXPECT_LE(attend_test::max_abs_diff(got.middleRows(q0, lq), want), attend_test::tolerance<T>())
          << "case " << i << describe(r) << " seq " << b;
    }
  }
}

// Rows of a sequence without keys are zero with lse -inf, or lse = the sink with sinks; under a causal mask the
// first rows of a sequence with Lq > Lk see nothing too.
TEST(Ragged, RowsThatSeeNoKeyAreZero) {
  std::mt19937 rng(1604);
  const Heads h{4, 2};
  const Ragged r{{0, 3, 8, 9}, {0, 0, 2, 6}};  // no keys; Lq 5 > Lk 2; one query over 4 keys
  const Matrix<float> q = random_matrix<float>(9, 4 * 8, rng);
  const Matrix<float> k = random_matrix<float>(6, 2 * 8, rng), v = random_matrix<float>(6, 2 * 8, rng);
  Options o;
  o.mask = Mask::causal();
  const auto got = attend::multi_head_attention_with_lse(q, k, v, r, h, o);
  EXPECT_TRUE(got.out.topRows(3).isZero(0)) << got.out.topRows(3);
  EXPECT_TRUE((got.lse.topRows(3).array() == -std::numeric_limits<float>::infinity()).all());
  EXPECT_TRUE(got.out.middleRows(3, 3).isZero(0));  // positions 0..2 of 5 see keys j <= i - 3: none
  EXPECT_FALSE(got.out.row(6).isZero(0));
  o.sinks = {0.5, -1, 2, 0};
  const auto sunk = attend::multi_head_attention_with_lse(q, k, v, r, h, o);
  EXPECT_TRUE(sunk.out.topRows(3).isZero(0));
  for (Index i = 0; i < 3; ++i)
    for (int hh = 0; hh < 4; ++hh) EXPECT_FLOAT_EQ(sunk.lse(i, hh), float(o.sinks[static_cast<std::size_t>(hh)]));
}

TEST(Ragged, EmptyBatchesGiveEmptyResults) {
  const Heads h{2, 1};
  const auto none =
      attend::multi_head_attention(Matrix<float>(0, 16), Matrix<float>(0, 8), Matrix<float>(0, 8), Ragged{{0}, {0}}, h);
  EXPECT_EQ(none.rows(), 0);
  EXPECT_EQ(none.cols(), 16);
  // Sequences, none of them with queries; keys that nobody reads.
  const auto no_queries = attend::multi_head_attention_with_lse(
      Matrix<float>(0, 16), Matrix<float>::Ones(5, 8), Matrix<float>::Ones(5, 8), Ragged{{0, 0, 0}, {0, 2, 5}}, h);
  EXPECT_EQ(no_queries.out.rows(), 0);
  EXPECT_EQ(no_queries.lse.cols(), 2);
  // Queries, no keys anywhere.
  const auto no_keys = attend::multi_head_attention(Matrix<float>::Ones(4, 16), Matrix<float>(0, 8),
                                                    Matrix<float>(0, 8), Ragged{{0, 1, 4}, {0, 0, 0}}, h);
  EXPECT_TRUE(no_keys.isZero(0));
}

// One sequence is a plain call; sequences stacked are their calls stacked.
TEST(Ragged, OneSequenceIsThePlainCall) {
  std::mt19937 rng(1605);
  const Heads h{8, 2};
  const Matrix<float> q = random_matrix<float>(33, 8 * 16, rng);
  const Matrix<float> k = random_matrix<float>(900, 2 * 16, rng), v = random_matrix<float>(900, 2 * 16, rng);
  Options o;
  o.mask = Mask::causal();
  EXPECT_TRUE(bitwise_equal(attend::multi_head_attention(q, k, v, Ragged{{0, 33}, {0, 900}}, h, o),
                            attend::multi_head_attention(q, k, v, h, o)));
}

// *_into may write over its own inputs (the result as if every input were read first), and inputs of any Eigen
// layout are read as Eigen reads them: a broadcast row (outer stride 0) as that row repeated.
TEST(Ragged, IntoItsOwnInputsAndRowsOfStrideZero) {
  std::mt19937 rng(1609);
  const Heads h{4, 2};
  const Ragged r{{0, 1, 6, 9}, {0, 40, 45, 48}};
  Options o;
  o.mask = Mask::causal();
  Matrix<float> q = random_matrix<float>(9, 4 * 16, rng);
  const Matrix<float> k = random_matrix<float>(48, 2 * 16, rng), v = random_matrix<float>(48, 2 * 16, rng);
  const Matrix<float> want = attend::multi_head_attention(q, k, v, r, h, o);
  attend::multi_head_attention_into(q, k, v, r, h, q, o);  // out is q
  EXPECT_TRUE(bitwise_equal(q, want));
  Matrix<float> q2 = random_matrix<float>(9, 4 * 32, rng);
  const Matrix<float> k32 = random_matrix<float>(48, 2 * 32, rng);
  const attend::Q8Matrix k8w = attend::quantize_q8(k32), v8w = attend::quantize_q8(k32);
  const Matrix<float> want8 = attend::multi_head_attention(q2, k8w, v8w, r, h, o);
  attend::multi_head_attention_into(q2, k8w, v8w, r, h, q2, o);
  EXPECT_TRUE(bitwise_equal(q2, want8));
  const Matrix<float> row = random_matrix<float>(1, 4 * 16, rng);
  const Eigen::Map<const Matrix<float>, 0, Eigen::OuterStride<>> same_row(row.data(), 9, 4 * 16,
                                                                          Eigen::OuterStride<>(0));
  EXPECT_TRUE(bitwise_equal(attend::multi_head_attention(same_row, k, v, r, h, o),
                            attend::multi_head_attention(Matrix<float>(row.replicate(9, 1)), k, v, r, h, o)));
}

#if defined(_OPENMP)
struct SavedThreads {
  int saved = omp_get_max_threads();
  ~SavedThreads() { omp_set_num_threads(saved); }
};

// A batch large enough to start the team: decodes over long caches and prefills, at 1 and 2 threads bit for bit.
TEST(Ragged, OneAndTwoThreadsAgreeBitForBit) {
  const SavedThreads restore;
  std::mt19937 rng(1606);
  const Heads h{8, 2};
  for (int i = 0; i < 4; ++i) {
    const Ragged r = random_batch(rng, 10, {0, 1, 1, 1, 64, 130}, {0, 200, 1500, 3000});
    const Options o = options_of(i + 1, h.query);
    const Matrix<float> q = random_matrix<float>(r.q_offsets.back(), 8 * 32, rng);
    const Matrix<float> k = random_matrix<float>(r.kv_offsets.back(), 2 * 32, rng);
    const Matrix<float> v = random_matrix<float>(r.kv_offsets.back(), 2 * 32, rng);
    omp_set_num_threads(1);
    const auto one = attend::multi_head_attention_with_lse(q, k, v, r, h, o);
    omp_set_num_threads(2);
    const auto two = attend::multi_head_attention_with_lse(q, k, v, r, h, o);
    EXPECT_TRUE(bitwise_equal(one.out, two.out)) << describe(r);
    EXPECT_TRUE(bitwise_equal(one.lse, two.lse)) << describe(r);
  }
}
#endif

}  // namespace
