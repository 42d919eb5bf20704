// Ring attention over MPI (attend/mpi.hpp), run by ctest through mpiexec -n 2, 3, 4 and 5.
//
// Every rank builds the same whole sequence from one seed, takes its rows of a layout, runs ring_attention,
// and rank 0 compares the gathered output with single-process multi_head_attention on the whole sequence
// (relative error: float 1e-5, double 1e-12); the same calls at 1 and 2 OpenMP threads per rank must agree bit
// for bit. Then the inconsistent-argument cases: every rank must throw attend::shape_error (never hang; an alarm
// kills a hung run). Plain main: prints "N passed, M failed" from rank 0 and returns non-zero on any failure.
#include <mpi.h>

#include <attend/attend.hpp>
#include <attend/mpi.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

using attend::Heads;
using attend::Index;
using attend::Mask;
using attend::Matrix;
using attend::Options;
using attend::RowLayout;
using attend::RowRange;

namespace {

int g_rank = 0, g_size = 1, g_passed = 0, g_failed = 0;

// Collective: the check passes only if it passed on every rank. Ranks that failed print why.
void report(const std::string& name, bool ok, const std::string& why = {}) {
  if (!ok) std::fprintf(stderr, "[rank %d] FAILED %s: %s\n", g_rank, name.c_str(), why.c_str());
  int mine = ok ? 1 : 0, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (all)
    ++g_passed;
  else
    ++g_failed;
}

template <class T>
Matrix<T> random_matrix(Index rows, Index cols, std::mt19937& rng) {
  std::normal_distribution<double> dist(0.0, 1.0);
  Matrix<T> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(dist(rng));
  return m;
}

// The rows `layout` gives this rank, in its local order.
template <class T>
Matrix<T> local_rows(const Matrix<T>& full, const RowLayout& layout, int rank) {
  Matrix<T> m(layout.local_rows(rank), full.cols());
  Index at = 0;
  for (const RowRange& p : layout.pieces(rank)) {
    m.middleRows(at, p.size()) = full.middleRows(p.begin, p.size());
    at += p.size();
  }
  return m;
}

template <class T>
double relative_error(const Matrix<T>& got, const Matrix<T>& want) {
  if (got.rows() != want.rows() || got.cols() != want.cols()) return INFINITY;
  if (want.size() == 0) return 0;
  const double diff = (got.template cast<double>() - want.template cast<double>()).cwiseAbs().maxCoeff();
  const double scale = std::max(1e-30, want.template cast<double>().cwiseAbs().maxCoeff());
  if (!std::isfinite(diff)) return INFINITY;
  return diff / scale;
}

template <class T>
constexpr double tolerance() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-12;
}

std::string mask_name(const Mask& m) {
  std::ostringstream os;
  os << m;
  return os.str();
}

struct Layouts {
  std::string name;
  RowLayout layout;
  bool contiguous;  // also run the overload without a layout (offsets gathered by ring_attention)
};

std::vector<Layouts> layouts_for(Index length, int ranks) {
  std::vector<Layouts> out;
  out.push_back({"even", RowLayout::even(length, ranks), true});
  // Uneven blocks: rank 0 holds most rows (many 16-row query slabs in the double cases), rank 1 none.
  std::vector<Index> rows(static_cast<std::size_t>(ranks), 0);
  Index left = length;
  for (int r = ranks - 1; r >= 1; --r) {
    rows[r] = r == 1 ? 0 : std::min<Index>(left, 3 + 2 * r);
    left -= rows[r];
  }
  rows[0] = left;
  out.push_back({"uneven", RowLayout::contiguous(rows), true});
  out.push_back({"zigzag", RowLayout::zigzag(length, ranks), false});
  // Three pieces per rank in scrambled order: rank r holds chunks r, 2P + r and P + r of 3P (last one first).
  std::vector<std::vector<RowRange>> pieces(static_cast<std::size_t>(ranks));
  const auto cut = [&](Index c) { return c * length / (3 * ranks); };
  for (int r = 0; r < ranks; ++r)
    pieces[r] = {RowRange{cut(2 * ranks + r), cut(2 * ranks + r + 1)}, RowRange{cut(r), cut(r + 1)},
                 RowRange{cut(ranks + r), cut(ranks + r + 1)}};
  out.push_back({"scattered", RowLayout(pieces), false});
  return out;
}

// Every ring call here passes `tuning` (the double cases cut each block into many kernel calls).
template <class T>
void equivalence_cases(const attend::RingTuning& tuning = {}) {
  attend::RingWorkspace workspace;  // reused by every call below (and grown as sizes change)
  const char* tname = std::is_same_v<T, float> ? "float" : "double";
  struct HeadCase {
    Heads heads;
    Index d, dv;
    const char* name;
  };
  const std::vector<HeadCase> head_cases = {
      {{4, 4}, 8, 8, "MHA 4/4"}, {{4, 2}, 8, 6, "GQA 4/2 dv=6"}, {{6, 1}, 4, 4, "MQA 6/1"}};
  std::vector<Options> option_cases;
  // Diagonals and windows at the ends of Index too: the ring adds the blocks' offsets to the diagonal.
  constexpr Index max = std::numeric_limits<Index>::max(), min = std::numeric_limits<Index>::min();
  for (const Mask& m :
       {Mask::none(), Mask::causal(), Mask::causal_top_left(), Mask::sliding_window(1), Mask::sliding_window(7),
        Mask::sliding_window(100), Mask::causal().with_diagonal(-3), Mask::causal().with_diagonal(-20),
        Mask::causal().with_diagonal(max), Mask::causal().with_diagonal(min), Mask::sliding_window(max),
        Mask::sliding_window(max - 3).with_diagonal(max), Mask::sliding_window(5).with_diagonal(min + 2)}) {
    Options o;
    o.mask = m;
    option_cases.push_back(o);
  }
  Options capped;
  capped.mask = Mask::causal();
  capped.scale = 0.3;
  capped.softcap = 5;
  option_cases.push_back(capped);

  for (const Index length : {Index(37), Index(300)}) {
    std::mt19937 rng(1234 + static_cast<unsigned>(length));
    for (const HeadCase& hc : head_cases) {
      const Matrix<T> q = random_matrix<T>(length, hc.heads.query * hc.d, rng);
      const Matrix<T> k = random_matrix<T>(length, hc.heads.kv * hc.d, rng);
      const Matrix<T> v = random_matrix<T>(length, hc.heads.kv * hc.dv, rng);
      for (const Layouts& lc : layouts_for(length, g_size)) {
        const Matrix<T> ql = local_rows(q, lc.layout, g_rank), kl = local_rows(k, lc.layout, g_rank),
                        vl = local_rows(v, lc.layout, g_rank);
        // Sinks and ALiBi, one per query head: ALiBi on global positions, the sinks applied after the merge.
        std::vector<Options> with_heads = option_cases;
        for (const Mask& m :
             {Mask::none(), Mask::causal(), Mask::sliding_window(7), Mask::causal().with_diagonal(max - 1)}) {
          Options o;
          o.mask = m;
          o.alibi_slopes = attend::geometric_alibi_slopes(hc.heads.query);
          for (int h = 0; h < hc.heads.query; ++h) o.sinks.push_back(0.5 * h - 1.0);
          with_heads.push_back(o);
        }
        for (const Options& o : with_heads) {
          std::ostringstream name;
          name << tname << " L=" << length << ' ' << hc.name << ' ' << lc.name << ' ' << mask_name(o.mask)
               << (o.softcap > 0 ? " softcap+scale" : "") << (o.sinks.empty() ? "" : " sinks+alibi");
          attend::RingStats stats;
          const Matrix<T> out =
              attend::ring_attention(ql, kl, vl, hc.heads, o, lc.layout, MPI_COMM_WORLD, &stats, &workspace, tuning);
          const Matrix<T> got = attend::gather_rows(out, lc.layout, 0, MPI_COMM_WORLD);
          double err = 0;
          if (g_rank == 0) err = relative_error(got, attend::multi_head_attention(q, k, v, hc.heads, o));
          MPI_Bcast(&err, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
          report(name.str(), err <= tolerance<T>(), "relative error " + std::to_string(err));

          // Bytes per step: the block's rows * G * (d + dv) * sizeof(T).
          bool bytes_ok = stats.ranks == g_size && static_cast<int>(stats.bytes_sent.size()) == stats.steps;
          for (int s = 0; bytes_ok && s < stats.steps; ++s) {
            const int owner = (g_rank - s + g_size) % g_size;
            bytes_ok = stats.bytes_sent[s] ==
                       static_cast<std::size_t>(lc.layout.local_rows(owner) * hc.heads.kv * (hc.d + hc.dv)) * sizeof(T);
          }
          bool all_hold_rows = true;
          for (int r = 0; r < g_size; ++r) all_hold_rows = all_hold_rows && lc.layout.local_rows(r) > 0;
          if (!o.mask.hides_future() && all_hold_rows) bytes_ok = bytes_ok && stats.steps == g_size - 1;
          if (o.mask == Mask::sliding_window(1)) bytes_ok = bytes_ok && stats.steps == 0;  // own block only
          report(name.str() + " stats", bytes_ok, "steps " + std::to_string(stats.steps));

          if (lc.contiguous) {  // the overload that gathers the offsets itself
            const Matrix<T> out2 =
                attend::ring_attention(ql, kl, vl, hc.heads, o, MPI_COMM_WORLD, nullptr, nullptr, tuning);
            report(name.str() + " (offsets gathered)", relative_error(out2, out) == 0, "differs from layout overload");
          }
        }
      }
    }
  }

  // Whole pipeline: zigzag_scatter from rank 0, ring attention, lse, zigzag_gather back.
  {
    const Index length = 123;
    std::mt19937 rng(99);
    const Heads h{4, 2};
    const Matrix<T> q = random_matrix<T>(length, 4 * 16, rng), k = random_matrix<T>(length, 2 * 16, rng),
                    v = random_matrix<T>(length, 2 * 16, rng);
    const Matrix<T> empty;
    const Matrix<T> ql = attend::zigzag_scatter(g_rank == 0 ? q : empty, 0, MPI_COMM_WORLD);
    const Matrix<T> kl = attend::zigzag_scatter(g_rank == 0 ? k : empty, 0, MPI_COMM_WORLD);
    const Matrix<T> vl = attend::zigzag_scatter(g_rank == 0 ? v : empty, 0, MPI_COMM_WORLD);
    const RowLayout z = RowLayout::zigzag(length, g_size);
    report(std::string(tname) + " zigzag_scatter rows", relative_error(ql, local_rows(q, z, g_rank)) == 0);
    Options o;
    o.mask = Mask::causal();
    const auto r = attend::ring_attention_with_lse(ql, kl, vl, h, o, z, MPI_COMM_WORLD, nullptr, nullptr, tuning);
    const Matrix<T> out = attend::zigzag_gather(r.out, 0, MPI_COMM_WORLD);
    const Matrix<T> lse = attend::zigzag_gather(r.lse, 0, MPI_COMM_WORLD);
    double err = 0, lse_err = 0;
    if (g_rank == 0) {
      const auto want = attend::multi_head_attention_with_lse(q, k, v, h, o);
      err = relative_error(out, want.out);
      lse_err = relative_error(lse, want.lse);
    } else if (out.rows() != 0) {
      err = INFINITY;
    }
    MPI_Allreduce(MPI_IN_PLACE, &err, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    MPI_Bcast(&lse_err, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    report(std::string(tname) + " zigzag scatter/ring/gather", err <= tolerance<T>() && lse_err <= tolerance<T>(),
           "errors " + std::to_string(err) + ", lse " + std::to_string(lse_err));
  }
}

#if defined(_OPENMP)
// The same ring call at 1 and 2 OpenMP threads per rank gives the same bits on every rank. The query slabs used to
// grow with the thread count (RingTuning was work per thread), which moved their boundaries and with them the
// rounding (up to 6e-8 in float). With slab_work = 1e5 and no row minimum the slabs here are a few rows, so a
// thread-dependent size would show; the default tuning must hold too.
template <class T>
void thread_count_cases() {
  const char* tname = std::is_same_v<T, float> ? "float" : "double";
  attend::RingTuning small;
  small.slab_work = 1e5;
  small.slab_min_rows = 1;
  const Index length = 300;
  std::mt19937 rng(77);
  const Heads h{4, 2};
  const Matrix<T> q = random_matrix<T>(length, 4 * 16, rng), k = random_matrix<T>(length, 2 * 16, rng),
                  v = random_matrix<T>(length, 2 * 16, rng);
  const RowLayout layout = RowLayout::zigzag(length, g_size);
  const Matrix<T> ql = local_rows(q, layout, g_rank), kl = local_rows(k, layout, g_rank),
                  vl = local_rows(v, layout, g_rank);
  const int saved = omp_get_max_threads();
  for (const Mask& m : {Mask::causal(), Mask::none(), Mask::sliding_window(40)})
    for (const bool small_slabs : {true, false}) {
      Options o;
      o.mask = m;
      o.alibi_slopes = attend::geometric_alibi_slopes(4);
      attend::AttentionResult<T> r[2];
      for (int t : {0, 1}) {
        omp_set_num_threads(t + 1);
        r[t] = attend::ring_attention_with_lse(ql, kl, vl, h, o, layout, MPI_COMM_WORLD, nullptr, nullptr,
                                               small_slabs ? small : attend::RingTuning{});
      }
      const bool same = r[0].out == r[1].out && r[0].lse == r[1].lse;
      std::ostringstream why;
      why << "relative difference " << relative_error(r[1].out, r[0].out);
      report(std::string(tname) + " 1 and 2 threads per rank agree bit for bit, " + mask_name(m) +
                 (small_slabs ? ", small slabs" : ", default tuning"),
             same, why.str());
    }
  omp_set_num_threads(saved);
}
#endif

// Runs `call` on every rank; passes if every rank threw attend::shape_error whose message contains each fragment.
void expect_everywhere(const std::string& name, const std::function<void()>& call,
                       const std::vector<std::string>& fragments) {
  std::string why;
  bool ok = false;
  try {
    call();
    why = "no exception";
  } catch (const attend::shape_error& e) {
    const std::string what = e.what();
    ok = true;
    for (const auto& f : fragments)
      if (what.find(f) == std::string::npos) {
        ok = false;
        why = "'" + f + "' not in: " + what;
      }
    if (ok && g_rank == 0 && std::getenv("ATTEND_TEST_VERBOSE")) std::printf("  %s: %s\n", name.c_str(), what.c_str());
  } catch (const std::exception& e) {
    why = std::string("other exception: ") + e.what();
  }
  report("error: " + name, ok, why);
  MPI_Barrier(MPI_COMM_WORLD);
}

void error_cases() {
  const int last = g_size - 1;
  const bool odd = g_rank == last;  // the rank that disagrees
  const Index n = 5 + g_rank;       // uneven blocks
  std::mt19937 rng(7 + static_cast<unsigned>(g_rank));
  const auto mat = [&](Index rows, Index cols) { return random_matrix<float>(rows, cols, rng); };
  Options causal;
  causal.mask = Mask::causal();
  const std::string last_s = std::to_string(last);

  expect_everywhere("heads differ",
                    [&] {
                      const Heads h = odd ? Heads{4, 4} : Heads{4, 2};
                      attend::ring_attention(mat(n, 32), mat(n, h.kv * 8), mat(n, h.kv * 8), h, causal, MPI_COMM_WORLD);
                    },
                    {"attend::ring_attention", "heads", "Heads{4, 2}", "Heads{4, 4}", "rank " + last_s});
  expect_everywhere(
      "head dim differs",
      [&] {
        const Index d = odd ? 4 : 8;
        attend::ring_attention(mat(n, 4 * d), mat(n, 2 * d), mat(n, 16), Heads{4, 2}, causal, MPI_COMM_WORLD);
      },
      {"attend::ring_attention", "q has 32 columns on rank 0", "head dim 8 vs 4"});
  expect_everywhere(
      "value dim differs",
      [&] {
        attend::ring_attention(mat(n, 32), mat(n, 16), mat(n, odd ? 12 : 16), Heads{4, 2}, causal, MPI_COMM_WORLD);
      },
      {"attend::ring_attention", "v has 16 columns on rank 0"});
  expect_everywhere("mask kind differs",
                    [&] {
                      Options o;
                      o.mask = odd ? Mask::none() : Mask::causal();
                      attend::ring_attention(mat(n, 32), mat(n, 16), mat(n, 16), Heads{4, 2}, o, MPI_COMM_WORLD);
                    },
                    {"attend::ring_attention", "options.mask", "causal()", "none()"});
  expect_everywhere("window differs",
                    [&] {
                      Options o;
                      o.mask = Mask::sliding_window(odd ? 4 : 3);
                      attend::ring_attention(mat(n, 32), mat(n, 16), mat(n, 16), Heads{4, 2}, o, MPI_COMM_WORLD);
                    },
                    {"attend::ring_attention", "sliding_window(3)", "sliding_window(4)"});
  expect_everywhere("scale differs",
                    [&] {
                      Options o;
                      if (odd) o.scale = 0.5;
                      attend::ring_attention(mat(n, 32), mat(n, 16), mat(n, 16), Heads{4, 2}, o, MPI_COMM_WORLD);
                    },
                    {"attend::ring_attention", "options.scale", "the default", "0.5"});
  expect_everywhere("softcap differs",
                    [&] {
                      Options o;
                      o.softcap = odd ? 30 : 50;
                      attend::ring_attention(mat(n, 32), mat(n, 16), mat(n, 16), Heads{4, 2}, o, MPI_COMM_WORLD);
                    },
                    {"attend::ring_attention", "options.softcap", "50", "30"});
  expect_everywhere("sinks differ",
                    [&] {
                      Options o;
                      o.sinks = {0.5, 0.5, 0.5, odd ? 1.0 : 0.5};
                      attend::ring_attention(mat(n, 32), mat(n, 16), mat(n, 16), Heads{4, 2}, o, MPI_COMM_WORLD);
                    },
                    {"attend::ring_attention", "options.sinks", "of other values"});
  expect_everywhere("alibi slopes differ",
                    [&] {
                      Options o;
                      if (odd) o.alibi_slopes = attend::geometric_alibi_slopes(4);
                      attend::ring_attention(mat(n, 32), mat(n, 16), mat(n, 16), Heads{4, 2}, o, MPI_COMM_WORLD);
                    },
                    {"attend::ring_attention", "options.alibi_slopes: rank 0 has 0 entries", "has 4"});
  expect_everywhere("scalar type differs",
                    [&] {
                      if (odd) {
                        const Matrix<double> q = mat(n, 32).cast<double>(), kv = mat(n, 16).cast<double>();
                        attend::ring_attention(q, kv, kv, Heads{4, 2}, causal, MPI_COMM_WORLD);
                      } else {
                        attend::ring_attention(mat(n, 32), mat(n, 16), mat(n, 16), Heads{4, 2}, causal, MPI_COMM_WORLD);
                      }
                    },
                    {"attend::ring_attention", "scalar type", "float", "double"});
  expect_everywhere(
      "bad k on one rank",
      [&] {
        attend::ring_attention(mat(n, 32), mat(n, odd ? 12 : 16), mat(n, 16), Heads{4, 2}, causal, MPI_COMM_WORLD);
      },
      {"attend::ring_attention", "rank " + last_s + " of", "k has 12 columns",
       "expected kv heads (2) * head dim (8) = 16"});
  expect_everywhere("q and k rows differ on one rank",
                    [&] {
                      attend::ring_attention(mat(n, 32), mat(odd ? n + 1 : n, 16), mat(odd ? n + 1 : n, 16),
                                             Heads{4, 2}, causal, MPI_COMM_WORLD);
                    },
                    {"attend::ring_attention", "rank " + last_s, "rows but k has"});
  expect_everywhere("bad window everywhere",
                    [&] {
                      Options o;
                      o.mask = Mask::sliding_window(0);
                      attend::ring_attention(mat(n, 32), mat(n, 16), mat(n, 16), Heads{4, 2}, o, MPI_COMM_WORLD);
                    },
                    {"attend::ring_attention", "rank 0 of", "sliding_window(0)"});
  expect_everywhere(
      "layout rows differ",
      [&] {
        const RowLayout z = RowLayout::zigzag(40, g_size);
        const Index rows = z.local_rows(g_rank) + (odd ? 1 : 0);
        attend::ring_attention(mat(rows, 32), mat(rows, 16), mat(rows, 16), Heads{4, 2}, causal, z, MPI_COMM_WORLD);
      },
      {"attend::ring_attention", "layout gives rank " + last_s});
  expect_everywhere(
      "layouts differ",
      [&] {
        const RowLayout z = odd ? RowLayout::even(40, g_size) : RowLayout::zigzag(40, g_size);
        const Index rows = z.local_rows(g_rank);
        attend::ring_attention(mat(rows, 32), mat(rows, 16), mat(rows, 16), Heads{4, 2}, causal, z, MPI_COMM_WORLD);
      },
      {"attend::ring_attention", "layout"});
  expect_everywhere(
      "layout of another rank count",
      [&] {
        const RowLayout z = RowLayout::even(40, g_size + 1);
        attend::ring_attention(mat(8, 32), mat(8, 16), mat(8, 16), Heads{4, 2}, causal, z, MPI_COMM_WORLD);
      },
      {"attend::ring_attention", "layout has " + std::to_string(g_size + 1) + " ranks"});
  expect_everywhere("with_lse names itself",
                    [&] {
                      attend::ring_attention_with_lse(mat(n, 32), mat(n, odd ? 12 : 16), mat(n, 16), Heads{4, 2},
                                                      causal, MPI_COMM_WORLD);
                    },
                    {"attend::ring_attention_with_lse", "k has 12 columns"});
  expect_everywhere(
      "scatter_rows: root rows differ from the layout",
      [&] { attend::scatter_rows(mat(g_rank == 0 ? 30 : 0, 4), RowLayout::even(31, g_size), 0, MPI_COMM_WORLD); },
      {"attend::scatter_rows", "rank 0", "full has 30 rows on the root, the layout 31 rows"});
  expect_everywhere("gather_rows: columns differ",
                    [&] {
                      const RowLayout e = RowLayout::even(20, g_size);
                      attend::gather_rows(mat(e.local_rows(g_rank), odd ? 3 : 4), e, 0, MPI_COMM_WORLD);
                    },
                    {"attend::gather_rows", "columns"});
  expect_everywhere("zigzag_gather: rows off the zigzag layout",
                    [&] { attend::zigzag_gather(mat(g_rank == 0 ? 10 : 1, 4), 0, MPI_COMM_WORLD); },
                    {"attend::zigzag_gather", "zigzag layout"});

  // The communicator still works after all of that.
  {
    const RowLayout e = RowLayout::even(20, g_size);
    const Matrix<float> q = mat(e.local_rows(g_rank), 32), kv = mat(e.local_rows(g_rank), 16);
    bool ok = true;
    try {
      attend::ring_attention(q, kv, kv, Heads{4, 2}, causal, e, MPI_COMM_WORLD);
    } catch (const std::exception& ex) {
      ok = false;
    }
    report("valid call after the errors", ok);
  }

  // Local-only errors of RowLayout itself.
  bool threw = false;
  try {
    RowLayout({{RowRange{0, 5}}, {RowRange{4, 9}}});
  } catch (const attend::shape_error&) {
    threw = true;
  }
  report("RowLayout rejects overlapping pieces", threw);
  report("RowLayout::zigzag rows", RowLayout::zigzag(10, 2).global_rows(0) == std::vector<Index>{0, 1, 7, 8, 9} &&
                                       RowLayout::zigzag(10, 2).global_rows(1) == std::vector<Index>{2, 3, 4, 5, 6});
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
#if defined(__unix__) || defined(__APPLE__)
  // A hang must fail, not block CI: SIGALRM ends this rank and mpiexec then stops the others.
  const char* limit = std::getenv("ATTEND_MPI_TEST_TIMEOUT");
  alarm(limit ? static_cast<unsigned>(std::atoi(limit)) : 240u);
#endif
  const double t0 = MPI_Wtime();
  equivalence_cases<float>();
  // Double with many small kernel calls per block (the ring polls MPI between them): 16-row query slabs.
  attend::RingTuning small_slabs;
  small_slabs.slab_work = 1;
  small_slabs.slab_min_rows = 16;
  equivalence_cases<double>(small_slabs);
#if defined(_OPENMP)
  thread_count_cases<float>();
  thread_count_cases<double>();
#endif
  error_cases();
  if (g_rank == 0)
    std::printf("ring_attention_test on %d ranks: %d passed, %d failed (%.1f s)\n", g_size, g_passed, g_failed,
                MPI_Wtime() - t0);
  MPI_Finalize();
  return g_failed == 0 ? 0 : 1;
}
