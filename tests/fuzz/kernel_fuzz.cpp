// libFuzzer target: decodes bytes into shapes, options and values, runs attend's kernels and checks them.
//
//   mode 0, 1  finite values: every kernel path (public functions, the blocked kernel with fuzzed small tiles,
//              merge_attention) must give finite outputs equal to attend::reference within a tolerance that
//              grows with the conditioning of the scores.
//   mode 2     values that may be +-inf or NaN: no crash, and every (row, head) whose query, visible keys,
//              visible values and visible bias entries are finite must be finite and equal the reference (a
//              non-finite key hidden by the mask never reaches an output).
//   mode 3     arbitrary shapes, head counts and options, possibly wrong, for the kernels, apply_rope,
//              merge_attention and the layers: each call either throws attend::shape_error or returns a result
//              of the right shape that matches the reference; any other exception, crash or sanitizer report
//              is a bug. A valid multi-head call is also run with a diagonal and window at the ends of Index,
//              with q as a Map of zero, padded or negative stride, and in place (out = q).
//
// Build: clang with -fsanitize=fuzzer,address,undefined (ATTEND_BUILD_FUZZERS=ON, the asan preset). ctest runs
// it for a fixed number of iterations from tests/fuzz/corpus; README "Reliability" shows how to run it longer.
#include <attend/attend.hpp>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <optional>
#include <vector>

#include "../kernel_seam.hpp"

namespace {

using attend::Heads;
using attend::Index;
using attend::Mask;
using attend::Matrix;
using attend::Options;

// Columns [c0, c0 + n) of m as a plain matrix. Eigen forms a block of an empty matrix by offsetting its null
// data pointer, which UBSan reports; empty matrices are sliced by shape only.
template <class M>
typename M::PlainObject cols(const M& m, Index c0, Index n) {
  if (m.size() == 0) return typename M::PlainObject(m.rows(), n);
  return m.middleCols(c0, n);
}

[[noreturn]] void fail(const char* what, double got = 0, double want = 0, double tol = 0) {
  std::fprintf(stderr, "kernel_fuzz: %s (got %.17g, want %.17g, tolerance %.3g)\n", what, got, want, tol);
  std::abort();
}

void check(bool ok, const char* what) {
  if (!ok) fail(what);
}

struct Reader {
  const std::uint8_t* p;
  std::size_t n;
  std::uint8_t byte() {
    if (n == 0) return 0;
    --n;
    return *p++;
  }
  std::int8_t signed_byte() { return static_cast<std::int8_t>(byte()); }
};

// ---------------------------------------------------------------------------------------------------------------
// Valid problems (modes 0 to 2).

template <class T>
struct Problem {
  Index lq = 0, lk = 0, d = 1, dv = 1;
  Heads heads{1, 1};
  Options options;
  Matrix<T> q, k, v, bias;
  bool has_bias = false;
  attend_test::Tiles tiles;
};

// One byte to a value: multiples of 1/64 in [-2, 2) times `magnitude`; in non-finite mode three codes are +inf,
// -inf and NaN.
template <class T>
T value(Reader& in, double magnitude, bool non_finite) {
  const std::uint8_t b = in.byte();
  if (non_finite) {
    if (b == 0x7f) return std::numeric_limits<T>::infinity();
    if (b == 0x80) return -std::numeric_limits<T>::infinity();
    if (b == 0x81) return std::numeric_limits<T>::quiet_NaN();
  }
  return static_cast<T>(static_cast<std::int8_t>(b) / 64.0 * magnitude);
}

template <class T>
Problem<T> decode(Reader& in, std::uint8_t flags, bool non_finite) {
  Problem<T> p;
  p.lq = in.byte() % 13;
  const std::uint8_t lk_byte = in.byte();
  p.lk = lk_byte >= 250 ? 1025 + Index(lk_byte - 250) * 300 : lk_byte % 25;  // > 1024: split-key decode path
  const std::uint8_t hb = in.byte();
  const int kv = 1 + hb % 3, group = 1 + (hb / 3) % 4;
  p.heads = Heads{kv * group, kv};
  p.d = 1 + in.byte() % 8;
  p.dv = 1 + in.byte() % 8;
  const std::uint8_t window = in.byte(), diagonal = in.byte();
  switch ((flags >> 4) & 3) {
    case 0:
      p.options.mask = Mask::none();
      break;
    case 1:
      p.options.mask = Mask::causal();
      break;
    case 2:
      p.options.mask = Mask::causal_top_left();
      break;
    default:
      p.options.mask = Mask::sliding_window(1 + window % (p.lk + 3));
  }
  if (diagonal & 1) p.options.mask = p.options.mask.with_diagonal(static_cast<std::int8_t>(diagonal) / 2 % 30);
  const std::int8_t scale = in.signed_byte();
  if (flags & 0x40) p.options.scale = std::exp2(scale / 32.0);  // 1/16 .. 16
  const std::uint8_t cap = in.byte();
  if (flags & 0x80) p.options.softcap = std::exp2((cap % 64) / 8.0 - 1);  // 0.5 .. 128
  const Index queries = 1 + in.byte() % 8, keys = 1 + in.byte() % 16, chunk = 1 + in.byte() % 32;
  // Derived from bytes already read, so the corpus keeps its meaning.
  p.tiles = attend_test::tiles().with_queries(queries).with_keys(keys).with_decode_chunk(chunk).with_cut_keys(
      1 + chunk % keys);
  if (queries % 2 == 1) p.tiles.with_few_rows(0);                  // packed products on every tile
  if (keys % 3 == 0) p.tiles.with_pack_groups(false);              // key tiles packed one by one
  const double magnitude = std::exp2(in.signed_byte() / 8 / 2.0);  // 2^-8 .. 2^8 for q and k
  p.q.resize(p.lq, p.heads.query * p.d);
  p.k.resize(p.lk, p.heads.kv * p.d);
  p.v.resize(p.lk, p.heads.kv * p.dv);
  for (Index i = 0; i < p.q.size(); ++i) p.q.data()[i] = value<T>(in, magnitude, non_finite);
  for (Index i = 0; i < p.k.size(); ++i) p.k.data()[i] = value<T>(in, magnitude, non_finite);
  for (Index i = 0; i < p.v.size(); ++i) p.v.data()[i] = value<T>(in, 1.0, non_finite);
  p.has_bias = flags & 0x08;
  if (p.has_bias) {
    p.bias.resize(p.lq, p.lk);
    for (Index i = 0; i < p.bias.size(); ++i) {
      const std::uint8_t b = in.byte();
      p.bias.data()[i] = b == 0x80 ? -std::numeric_limits<T>::infinity() : value<T>(in, 4.0, non_finite);
    }
  }
  return p;
}

// The reference per head (with the shared bias), each row's log-sum-exp, and which (row, head) pairs are clean:
// finite query, and finite keys, values and bias entries wherever the row can see. `conditioning` is the largest
// |score| a clean pair can form, which sets the tolerance.
struct Expected {
  Matrix<double> out, lse;
  std::vector<std::vector<bool>> clean;  // [row][head]
  double conditioning = 0;
};

template <class T>
Expected expected(const Problem<T>& p) {
  Expected e;
  const int group = p.heads.query / p.heads.kv;
  e.out = Matrix<double>::Zero(p.lq, p.heads.query * p.dv);
  e.lse = Matrix<double>(p.lq, p.heads.query);
  e.clean.assign(p.lq, std::vector<bool>(p.heads.query, true));
  const Matrix<double> bias = p.has_bias ? Matrix<double>(p.bias.template cast<double>()) : Matrix<double>();
  const double scale = p.options.scale ? *p.options.scale : 1.0 / std::sqrt(double(p.d));
  const Mask& mask = p.options.mask;
  if (p.lq == 0) return e;
  for (int h = 0; h < p.heads.query; ++h) {
    const int g = h / group;
    const Matrix<double> q = cols(p.q, h * p.d, p.d).template cast<double>();
    const Matrix<double> k = cols(p.k, g * p.d, p.d).template cast<double>();
    const Matrix<double> v = cols(p.v, g * p.dv, p.dv).template cast<double>();
    e.out.middleCols(h * p.dv, p.dv) =
        attend::reference::scaled_dot_product_attention(q, k, v, p.options, p.has_bias ? &bias : nullptr);
    for (Index i = 0; i < p.lq; ++i) {
      bool clean = q.row(i).allFinite();
      double m = -std::numeric_limits<double>::infinity();
      std::vector<double> s(p.lk, -std::numeric_limits<double>::infinity());
      for (Index j = 0; j < p.lk; ++j) {
        if (!mask.visible(i, j, p.lq, p.lk)) continue;
        const double b = p.has_bias ? bias(i, j) : 0.0;
        const bool hidden_by_bias = b == -std::numeric_limits<double>::infinity();
        if (!k.row(j).allFinite() || (!hidden_by_bias && !v.row(j).allFinite()) || std::isnan(b) ||
            b == std::numeric_limits<double>::infinity())
          clean = false;
        if (!clean) break;
        double raw = scale * q.row(i).dot(k.row(j));
        double bound = scale * q.row(i).cwiseAbs().dot(k.row(j).cwiseAbs());
        if (p.options.softcap > 0) {
          raw = p.options.softcap * std::tanh(raw / p.options.softcap);
          bound = std::min(bound, p.options.softcap);
        }
        if (!hidden_by_bias) e.conditioning = std::max(e.conditioning, bound + std::abs(b));
        s[j] = raw + b;
        m = std::max(m, s[j]);
      }
      e.clean[i][h] = clean;
      if (!clean || m == -std::numeric_limits<double>::infinity()) {
        e.lse(i, h) = clean ? m : std::numeric_limits<double>::quiet_NaN();
        continue;
      }
      double sum = 0;
      for (double x : s) sum += std::exp(x - m);
      e.lse(i, h) = m + std::log(sum);
    }
  }
  return e;
}

template <class T>
double base_tolerance() {
  return std::is_same_v<T, float> ? 2e-5 : 1e-12;
}

// Compares the clean (row, head) blocks of `got` [lq, H*dv] with the reference.
template <class T>
void compare(const Problem<T>& p, const Expected& e, const Matrix<T>& got, const char* what, double factor = 1) {
  if (got.rows() != p.lq || got.cols() != p.heads.query * p.dv) fail(what);
  const double tol = factor * base_tolerance<T>() * (1 + e.conditioning / 4);
  for (Index i = 0; i < p.lq; ++i)
    for (int h = 0; h < p.heads.query; ++h) {
      if (!e.clean[i][h]) continue;
      for (Index c = h * p.dv; c < (h + 1) * p.dv; ++c) {
        const double g = got(i, c), w = e.out(i, c);
        if (!std::isfinite(g)) fail(what, g, w, tol);
        if (!(std::abs(g - w) <= tol)) fail(what, g, w, tol);
      }
    }
}

template <class T>
void compare_lse(const Problem<T>& p, const Expected& e, const Matrix<T>& got, const char* what) {
  const double tol = base_tolerance<T>() * (2 + e.conditioning + std::log1p(double(p.lk)));
  for (Index i = 0; i < p.lq; ++i)
    for (int h = 0; h < p.heads.query; ++h) {
      if (!e.clean[i][h]) continue;
      const double g = got(i, h), w = e.lse(i, h);
      if (std::isinf(w) || std::isinf(g)) {
        if (g != w) fail(what, g, w, 0);
      } else if (!(std::abs(g - w) <= tol * (1 + std::abs(w) * 1e-3))) {
        fail(what, g, w, tol);
      }
    }
}

template <class T>
Matrix<T> blocked(const Problem<T>& p, const attend_test::Tiles& tiles, Matrix<T>* lse = nullptr) {
  return attend_test::kernel(p.q, p.k, p.v, p.heads, p.options, tiles, p.has_bias ? &p.bias : nullptr, lse);
}

template <class T>
void run_valid(Reader& in, std::uint8_t flags, bool non_finite) {
  const Problem<T> p = decode<T>(in, flags, non_finite);
  const Expected e = expected(p);
  Matrix<T> lse(p.lq, p.heads.query);
  compare(p, e, blocked(p, p.tiles, &lse), "blocked kernel, fuzzed tiles");
  compare_lse(p, e, lse, "blocked kernel lse, fuzzed tiles");
  compare(p, e, blocked(p, attend_test::tiles()), "blocked kernel, default tiles");
  if (p.has_bias) {
    if (p.heads.query == 1) {
      compare(p, e, attend::scaled_dot_product_attention(p.q, p.k, p.v, p.bias, p.options), "sdpa with bias");
      const Matrix<T> w = attend::attention_weights(p.q, p.k, p.bias, p.options);
      if (!non_finite) compare(p, e, Matrix<T>(w * p.v), "attention_weights with bias * v", 2);
    }
    return;
  }
  const auto r = attend::multi_head_attention_with_lse(p.q, p.k, p.v, p.heads, p.options);
  compare(p, e, r.out, "multi_head_attention_with_lse");
  compare_lse(p, e, r.lse, "multi_head_attention_with_lse lse");
  const Matrix<T> out = attend::multi_head_attention(p.q, p.k, p.v, p.heads, p.options);
  check(out.rows() == r.out.rows() && out.cols() == r.out.cols(), "multi_head_attention shape");
  compare(p, e, out, "multi_head_attention");
  if (p.heads.query == 1) {
    compare(p, e, attend::scaled_dot_product_attention(p.q, p.k, p.v, p.options), "scaled_dot_product_attention");
    if (!non_finite)
      compare(p, e, Matrix<T>(attend::attention_weights(p.q, p.k, p.options) * p.v), "attention_weights * v", 2);
  }
  // Exact merging over a split of the keys (mask-free rows only: masks are relative to the whole row).
  if (p.options.mask == Mask::none() && p.lk >= 2 && !non_finite) {
    const Index cut = 1 + Index(flags) % (p.lk - 1);
    const auto a = attend::multi_head_attention_with_lse(p.q, p.k.topRows(cut), p.v.topRows(cut), p.heads, p.options);
    const auto b = attend::multi_head_attention_with_lse(p.q, p.k.bottomRows(p.lk - cut), p.v.bottomRows(p.lk - cut),
                                                         p.heads, p.options);
    const auto merged = attend::merge_attention(a, b);
    compare(p, e, merged.out, "merge_attention", 2);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Arbitrary shapes (mode 3): shape_error or a correct result, nothing else.

Index dim(Reader& in) { return in.byte() % 7; }

template <class F>
bool throws_shape_error(F&& f) {
  try {
    f();
    return false;
  } catch (const attend::shape_error&) {
    return true;
  }
}

void valid_call_variants(Reader& in, const Matrix<float>& q, const Matrix<float>& k, const Matrix<float>& v, Heads h,
                         const Options& o);

void run_arbitrary_kernels(Reader& in) {
  using T = float;
  const Index lq = dim(in), dq = dim(in), lk = dim(in), dk = dim(in), lkv = dim(in), dv = dim(in);
  const Index br = dim(in), bc = dim(in), orow = dim(in), ocol = in.byte() % 13;
  const Heads h{in.signed_byte() % 7, in.signed_byte() % 5};
  Options o;
  const std::uint8_t ob = in.byte();
  if (ob & 1) o.scale = (ob & 2) ? -1.0 : (ob & 4) ? 0.0 : (ob & 8) ? std::numeric_limits<double>::quiet_NaN() : 0.5;
  if (ob & 16) o.softcap = (ob & 32) ? -1.0 : 3.0;
  if (ob & 64) o.mask = Mask::sliding_window(Index(in.signed_byte()) % 4);
  if (ob & 128) o.mask = o.mask.with_diagonal(in.signed_byte() % 5);
  const auto fill = [&](Index r, Index c) {
    Matrix<T> m(r, c);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = value<T>(in, 1.0, false);
    return m;
  };
  const Matrix<T> q = fill(lq, dq), k = fill(lk, dk), v = fill(lkv, dv), bias = fill(br, bc);
  const Matrix<double> bias_d = bias.cast<double>();
  Matrix<T> out = Matrix<T>::Constant(orow, ocol, T(7));
  const Matrix<T> out_before = out;

  const auto near = [](const auto& got, const Matrix<double>& want) {
    if (got.rows() != want.rows() || got.cols() != want.cols()) fail("result shape differs from the reference");
    if (got.size() && !((got.template cast<double>() - want).cwiseAbs().maxCoeff() <= 1e-4)) fail("value");
  };
  // Each public kernel: either it throws shape_error (and the reference agrees the arguments are wrong where
  // it takes the same ones) or its result matches the reference.
  Matrix<double> want;
  const bool ref_single =
      throws_shape_error([&] { want = attend::reference::scaled_dot_product_attention(q, k, v, o); });
  Matrix<T> got;
  const bool single = throws_shape_error([&] { got = attend::scaled_dot_product_attention(q, k, v, o); });
  check(single == ref_single, "scaled_dot_product_attention and the reference disagree on validity");
  if (!single) near(got, want);
  const bool with_lse =
      throws_shape_error([&] { got = attend::scaled_dot_product_attention_with_lse(q, k, v, o).out; });
  check(with_lse == single, "scaled_dot_product_attention_with_lse validity");
  const bool into = throws_shape_error([&] { attend::scaled_dot_product_attention_into(q, k, v, out, o); });
  if (into) {
    check(out == out_before, "scaled_dot_product_attention_into wrote before throwing");
  } else {
    check(!single, "scaled_dot_product_attention_into accepted invalid arguments");
    near(out, want);
  }
  const bool biased = throws_shape_error([&] { got = attend::scaled_dot_product_attention(q, k, v, bias, o); });
  const bool ref_biased =
      throws_shape_error([&] { want = attend::reference::scaled_dot_product_attention(q, k, v, o, &bias_d); });
  check(biased == ref_biased, "biased scaled_dot_product_attention and the reference disagree on validity");
  if (!biased) near(got, want);
  const bool weights = throws_shape_error([&] { got = attend::attention_weights(q, k, o); });
  const bool ref_weights = throws_shape_error([&] { want = attend::reference::attention_weights(q, k, o); });
  check(weights == ref_weights, "attention_weights validity");
  if (!weights) near(got, want);
  throws_shape_error([&] { got = attend::attention_weights(q, k, bias, o); });

  const bool multi = throws_shape_error([&] { got = attend::multi_head_attention(q, k, v, h, o); });
  const bool ref_multi = throws_shape_error([&] { want = attend::reference::multi_head_attention(q, k, v, h, o); });
  check(multi == ref_multi, "multi_head_attention and the reference disagree on validity");
  if (!multi) near(got, want);
  Matrix<T> out2 = out;
  const bool multi_into = throws_shape_error([&] { attend::multi_head_attention_into(q, k, v, h, out2, o); });
  if (multi_into) check(out2 == out, "multi_head_attention_into wrote before throwing");
  if (!multi_into) near(out2, want);
  const bool multi_lse = throws_shape_error([&] {
    const auto r = attend::multi_head_attention_with_lse(q, k, v, h, o);
    check(r.lse.rows() == q.rows() && r.lse.cols() == h.query, "lse shape");
  });
  check(multi_lse == multi, "multi_head_attention_with_lse validity");
  check(throws_shape_error([&] { attend::grouped_query_attention(q, k, v, h.query, h.kv, o); }) == multi,
        "grouped_query_attention validity");
  const bool mqa = throws_shape_error([&] { got = attend::multi_query_attention(q, k, v, h.query, o); });
  if (!mqa) near(got, attend::reference::multi_head_attention(q, k, v, Heads{h.query, 1}, o));

  // merge_attention of parts of fuzzed shapes.
  std::vector<attend::AttentionResult<T>> parts;
  const int n = in.byte() % 4;
  for (int i = 0; i < n; ++i) parts.push_back({fill(dim(in), dim(in)), fill(dim(in), dim(in))});
  throws_shape_error([&] {
    const auto m = attend::merge_attention(parts);
    check(m.out.rows() == parts[0].out.rows() && m.out.cols() == parts[0].out.cols(), "merge_attention out shape");
  });
  // apply_rope with fuzzed head dims and theta.
  const Index rope_dim = in.signed_byte() % 9;
  const double theta = (in.byte() & 1) ? 10000.0 : -1.0;
  throws_shape_error([&] {
    const Matrix<T> y = attend::apply_rope(q, rope_dim, in.byte(), theta);
    check(y.rows() == q.rows() && y.cols() == q.cols(), "apply_rope shape");
  });
  if (!multi) valid_call_variants(in, q, k, v, h, o);
}

// Variants of a valid multi_head_attention call (bytes read after every other, so older inputs keep their
// meaning): a diagonal and window at the ends of Index against the reference; q as a Map with a zero, padded or
// negative stride, and out sharing q's memory, each against the call on plain inputs, bit for bit.
void valid_call_variants(Reader& in, const Matrix<float>& q, const Matrix<float>& k, const Matrix<float>& v, Heads h,
                         const Options& o) {
  using T = float;
  constexpr Index max = std::numeric_limits<Index>::max(), min = std::numeric_limits<Index>::min();
  const std::uint8_t b = in.byte();
  const Matrix<T> want = attend::multi_head_attention(q, k, v, h, o);
  if (b & 1) {
    Options e = o;
    const Index diagonal = (b & 2) ? max - Index(in.byte() % 8) : min + Index(in.byte() % 8);
    const Index window = (b & 8) ? max - Index(in.byte() % 8) : 1 + Index(in.byte() % 8);
    e.mask = (b & 4) ? Mask::sliding_window(window).with_diagonal(diagonal) : Mask::causal().with_diagonal(diagonal);
    const Matrix<T> got = attend::multi_head_attention(q, k, v, h, e);
    const Matrix<double> ref = attend::reference::multi_head_attention(q, k, v, h, e);
    if (got.size() && !((got.cast<double>() - ref).cwiseAbs().maxCoeff() <= 1e-4)) fail("extreme mask");
  }
  if (q.rows() > 0 && q.cols() > 0) {
    const Index r = q.rows(), c = q.cols();
    std::vector<T> buf(static_cast<std::size_t>(r * (c + 2)));
    for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = q.data()[i % static_cast<std::size_t>(q.size())];
    using Map = Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>>;
    const Index stride = (b >> 4) % 3 == 0 ? 0 : (b >> 4) % 3 == 1 ? c + 2 : -c;
    const Map view(buf.data() + (stride < 0 ? (r - 1) * c : 0), r, c, Eigen::OuterStride<>(stride));
    const Matrix<T> plain = view;
    check(attend::multi_head_attention(view, k, v, h, o) == attend::multi_head_attention(plain, k, v, h, o),
          "q as a strided Map");
  }
  if (want.cols() == q.cols()) {  // out can be q's own memory
    Matrix<T> x = q;
    attend::multi_head_attention_into(x, k, v, h, x, o);
    check(x == want, "multi_head_attention_into in place");
  }
}

// Layers with fuzzed sizes and weights of fuzzed (often wrong) shapes: shape_error or a finite result.
void run_arbitrary_layers(Reader& in) {
  using T = float;
  const auto fill = [&](Index r, Index c) {
    Matrix<T> m(r, c);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = value<T>(in, 0.5, false);
    return m;
  };
  const auto vec = [&](Index n) { return attend::Vector<T>(fill(n, 1)); };
  const auto maybe = [&](Index good) {  // mostly the right size, sometimes off by one, sometimes empty
    const std::uint8_t b = in.byte();
    return b % 8 == 0 ? Index(0) : b % 8 == 1 ? good + 1 : b % 8 == 2 ? std::max<Index>(0, good - 1) : good;
  };
  const std::uint8_t which = in.byte();
  const int d_model = in.signed_byte() % 9, heads = in.signed_byte() % 5, kv = in.signed_byte() % 5;
  Options o;
  if (which & 2) o.mask = Mask::causal();
  if (which & 4) o.softcap = 5;
  const Matrix<T> x = fill(dim(in), maybe(std::max(0, d_model)));
  if (which & 1) {
    const int head_dim = in.signed_byte() % 5;
    std::optional<attend::MultiHeadAttention<T>> m;
    if (throws_shape_error([&] { m.emplace(d_model, heads, kv, head_dim); })) return;
    const Index qw = Index(heads) * head_dim, kw = Index(kv) * head_dim;
    m->q_proj.weight = fill(maybe(qw), maybe(d_model));
    m->k_proj.weight = fill(maybe(kw), maybe(d_model));
    m->v_proj.weight = fill(maybe(kw), maybe(d_model));
    m->o_proj.weight = fill(maybe(d_model), maybe(qw));
    if (in.byte() & 1) m->o_proj.bias = vec(maybe(d_model));
    attend::KVCache<T> cache;
    for (int step = 0; step < 3; ++step)
      throws_shape_error([&] {
        const Matrix<T> y = m->forward(x, cache, o);
        check(y.rows() == x.rows() && y.cols() == d_model && y.allFinite(), "MultiHeadAttention::forward(cache)");
      });
    throws_shape_error([&] { check(m->forward(x, o).allFinite(), "MultiHeadAttention::forward"); });
    throws_shape_error([&] { attend::to_grouped(*m, in.signed_byte() % 4); });
    throws_shape_error([&] { attend::to_latent(*m, in.signed_byte() % 10); });
  } else {
    typename attend::MultiHeadLatentAttention<T>::Config c{d_model,
                                                           heads,
                                                           in.signed_byte() % 4,
                                                           in.signed_byte() % 5,
                                                           in.signed_byte() % 4,
                                                           in.signed_byte() % 5,
                                                           in.signed_byte() % 4};
    std::optional<attend::MultiHeadLatentAttention<T>> m;
    if (throws_shape_error([&] { m.emplace(c); })) return;
    const Index qk = Index(c.qk_nope_head_dim) + c.qk_rope_head_dim, h = c.heads;
    if (c.q_lora_rank == 0) {
      m->q_proj.weight = fill(maybe(h * qk), maybe(d_model));
    } else {
      m->q_a_proj.weight = fill(maybe(c.q_lora_rank), maybe(d_model));
      m->q_b_proj.weight = fill(maybe(h * qk), maybe(c.q_lora_rank));
      m->q_a_layernorm.weight = vec(maybe(c.q_lora_rank));
    }
    m->kv_a_proj_with_mqa.weight = fill(maybe(c.kv_lora_rank + c.qk_rope_head_dim), maybe(d_model));
    m->kv_a_layernorm.weight = vec(maybe(c.kv_lora_rank));
    m->kv_b_proj.weight = fill(maybe(h * (c.qk_nope_head_dim + c.v_head_dim)), maybe(c.kv_lora_rank));
    if (in.byte() & 1) m->kv_b_proj.bias = vec(maybe(h * (c.qk_nope_head_dim + c.v_head_dim)));
    m->o_proj.weight = fill(maybe(d_model), maybe(h * c.v_head_dim));
    attend::LatentCache<T> cache;
    for (int step = 0; step < 3; ++step)
      throws_shape_error([&] {
        const Matrix<T> y = m->forward(x, cache, o);
        check(y.rows() == x.rows() && y.cols() == d_model && y.allFinite(), "MultiHeadLatentAttention::forward(cache)");
      });
    throws_shape_error([&] { check(m->forward(x, o).allFinite(), "MultiHeadLatentAttention::forward"); });
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Reader in{data, size};
  const std::uint8_t flags = in.byte();
  try {
    switch (flags & 3) {
      case 0:
      case 1:
        if (flags & 4)
          run_valid<double>(in, flags, false);
        else
          run_valid<float>(in, flags, false);
        break;
      case 2:
        if (flags & 4)
          run_valid<double>(in, flags, true);
        else
          run_valid<float>(in, flags, true);
        break;
      default:
        if (flags & 4)
          run_arbitrary_layers(in);
        else
          run_arbitrary_kernels(in);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kernel_fuzz: unexpected exception: %s\n", e.what());
    std::abort();
  }
  return 0;
}
