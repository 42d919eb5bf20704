// Ring attention across MPI processes: one long causal sequence split over the ranks.
//
//   mpiexec -n 2 ./07_ring_attention [--quick] [--length L] [--heads H] [--kv-heads G] [--dim d] [--reps n]
//   (as root with Open MPI: mpiexec --allow-run-as-root ...; more ranks than cores: --oversubscribe;
//    one rank per core: OMP_NUM_THREADS=1)
//
// Rank 0 makes q, k, v for L tokens and scatters them (attend::scatter_rows) in two layouts:
//   contiguous  rank r holds the r-th block of L/P rows: under a causal mask the last rank has 2P-1 times
//               the work of the first;
//   zigzag      the sequence is cut into 2P chunks and rank r holds chunks r and 2P-1-r: every rank has the
//               same work.
// Each rank then runs attend::ring_attention: the key/value blocks travel around the ring (one block of
// rows * G * (d + dv) * sizeof(float) bytes per step, P - 1 steps) while the rank computes with the block it
// holds. For each layout the program prints, per rank, the time of the call, the time computing, the time in
// MPI (polling the exchange forward between kernel calls, and waiting in MPI_Waitall for the next block at
// the end of a step), the rest of the call ("other": the collective argument check, which also waits for the
// last rank to arrive, packing the local keys and values, the result), the bytes sent per step, and the
// fraction of the communication hidden behind compute: 1 - (time in MPI) / (time the same exchange takes
// alone, without compute), measured by a second, compute-free ring. Waiting also includes waiting for a
// slower rank to pass its block on, so load imbalance shows up there too. On one machine Open MPI moves a
// large message by a memory copy that the receiving process makes inside an MPI call (here: a poll), so that
// copy counts as not hidden; between hosts an RDMA network card moves the data while the ranks compute.
//
// Finally it gathers the outputs on rank 0 and checks them against single-process multi_head_attention on
// the whole sequence (exit code 1 on a mismatch).
#include <mpi.h>

#include <algorithm>
#include <attend/attend.hpp>
#include <attend/mpi.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

using attend::Index;
using attend::Matrix;
using attend::RowLayout;

struct Args {
  Index length = 8192;
  int heads = 8, kv_heads = 8, dim = 64, reps = 3;
};

// What each rank reports to rank 0 (doubles only: one MPI_Gather).
struct RankReport {
  double rows, total, compute, poll, wait, mpi, other, comm_alone, steps, bytes_min, bytes_max, bytes_total, computed,
      skipped;
};

// The same exchange as the ring, without computing: P - 1 (or `steps`) shifts of each rank's block. Returns
// this rank's time, the best of `reps`.
double exchange_alone(const RowLayout& layout, Index width, int steps, int reps, MPI_Comm comm) {
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  Index max_rows = 0;
  for (int r = 0; r < size; ++r) max_rows = std::max(max_rows, layout.local_rows(r));
  std::vector<float> buf[2] = {std::vector<float>(max_rows * width + 1), std::vector<float>(max_rows * width + 1)};
  double best = 1e30;
  for (int rep = 0; rep < reps; ++rep) {
    MPI_Barrier(comm);
    const double t0 = MPI_Wtime();
    int cur = 0;
    for (int s = 0; s < steps; ++s) {
      const int owner = (rank - s + size) % size, incoming = (rank - s - 1 + size) % size;
      MPI_Request req[2];
      MPI_Irecv(buf[1 - cur].data(), static_cast<int>(layout.local_rows(incoming) * width), MPI_FLOAT,
                (rank - 1 + size) % size, s, comm, &req[0]);
      MPI_Isend(buf[cur].data(), static_cast<int>(layout.local_rows(owner) * width), MPI_FLOAT, (rank + 1) % size, s,
                comm, &req[1]);
      MPI_Waitall(2, req, MPI_STATUSES_IGNORE);
      cur = 1 - cur;
    }
    best = std::min(best, MPI_Wtime() - t0);
  }
  return best;
}

std::string mib(double bytes) {
  char s[32];
  std::snprintf(s, sizeof s, "%.2f", bytes / (1024.0 * 1024.0));
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  const MPI_Comm comm = MPI_COMM_WORLD;
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);

  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() { return i + 1 < argc ? std::atol(argv[++i]) : 0L; };
    if (arg == "--quick") {
      a.length = 1024;
      a.reps = 1;
    } else if (arg == "--length") {
      a.length = value();
    } else if (arg == "--heads") {
      a.heads = static_cast<int>(value());
    } else if (arg == "--kv-heads") {
      a.kv_heads = static_cast<int>(value());
    } else if (arg == "--dim") {
      a.dim = static_cast<int>(value());
    } else if (arg == "--reps") {
      a.reps = std::max(1, static_cast<int>(value()));
    } else {
      if (rank == 0) std::fprintf(stderr, "unknown argument %s\n", arg.c_str());
      MPI_Finalize();
      return 2;
    }
  }
  const attend::Heads heads{a.heads, a.kv_heads};
  const Index d = a.dim, L = a.length, width = a.kv_heads * 2 * d;
  attend::Options causal;
  causal.mask = attend::Mask::causal();

  int threads = 1;
#if defined(_OPENMP)
  threads = omp_get_max_threads();
#endif
  if (rank == 0) {
    std::printf(
        "Ring attention: %d ranks x %d thread(s), causal, L = %ld tokens, %d query heads, %d kv heads, "
        "d = dv = %ld, float\n",
        size, threads, static_cast<long>(L), a.heads, a.kv_heads, static_cast<long>(d));
    std::printf("Each step sends one key/value block: rows * G * (d + dv) * 4 bytes = rows * %ld bytes.\n\n",
                static_cast<long>(width * 4));
  }

  // Rank 0 holds the whole sequence; the others receive their rows.
  Matrix<float> q, k, v;
  if (rank == 0) {
    std::mt19937 rng(2024);
    std::normal_distribution<float> n01(0.0f, 1.0f);
    q.resize(L, a.heads * d);
    k.resize(L, a.kv_heads * d);
    v.resize(L, a.kv_heads * d);
    for (Matrix<float>* m : {&q, &k, &v})
      for (Index i = 0; i < m->size(); ++i) m->data()[i] = n01(rng);
  }

  bool ok = true;
  double slowest[2] = {0, 0};
  const char* names[2] = {"contiguous", "zigzag"};
  for (int which = 0; which < 2; ++which) {
    const RowLayout layout = which == 0 ? RowLayout::even(L, size) : RowLayout::zigzag(L, size);
    const Matrix<float> ql = attend::scatter_rows(q, layout, 0, comm), kl = attend::scatter_rows(k, layout, 0, comm),
                        vl = attend::scatter_rows(v, layout, 0, comm);

    // Warm up once (which also sizes the workspace: the two key/value buffers, reused by every call), then
    // keep the repetition whose slowest rank was fastest.
    attend::RingWorkspace workspace;
    Matrix<float> out = attend::ring_attention(ql, kl, vl, heads, causal, layout, comm, nullptr, &workspace);
    attend::RingStats best;
    double best_max = 1e30;
    for (int rep = 0; rep < a.reps; ++rep) {
      MPI_Barrier(comm);
      attend::RingStats st;
      out = attend::ring_attention(ql, kl, vl, heads, causal, layout, comm, &st, &workspace);
      double mx = st.total_seconds;
      MPI_Allreduce(MPI_IN_PLACE, &mx, 1, MPI_DOUBLE, MPI_MAX, comm);
      if (mx < best_max) {
        best_max = mx;
        best = st;
      }
    }
    slowest[which] = best_max;
    const double alone = exchange_alone(layout, width, best.steps, std::max(3, a.reps), comm);

    RankReport mine{};
    mine.rows = static_cast<double>(ql.rows());
    mine.total = best.total_seconds;
    mine.compute = best.compute_seconds;
    mine.poll = best.poll_seconds;
    mine.wait = best.wait_seconds;
    mine.mpi = best.wait_seconds + best.poll_seconds;
    mine.other = best.total_seconds - best.compute_seconds - mine.mpi;  // argument check, buffers, assembly
    mine.comm_alone = alone;
    mine.steps = best.steps;
    mine.bytes_min = best.bytes_sent.empty() ? 0 : *std::min_element(best.bytes_sent.begin(), best.bytes_sent.end());
    mine.bytes_max = best.bytes_sent.empty() ? 0 : *std::max_element(best.bytes_sent.begin(), best.bytes_sent.end());
    mine.bytes_total = static_cast<double>(best.total_bytes_sent());
    mine.computed = best.blocks_computed;
    mine.skipped = best.blocks_skipped;
    std::vector<RankReport> all(static_cast<std::size_t>(size));
    constexpr int fields = sizeof(RankReport) / sizeof(double);
    MPI_Gather(&mine, fields, MPI_DOUBLE, all.data(), fields, MPI_DOUBLE, 0, comm);

    if (rank == 0) {
      std::printf("%s layout (best of %d):\n", names[which], a.reps);
      std::printf(
          "  rank   rows   time ms  compute ms  poll ms  wait ms  other ms  exchange alone ms  MiB/step  steps"
          "  hidden\n");
      double sum_mpi = 0, sum_wait = 0, sum_alone = 0, sum_total = 0, max_compute = 0, sum_compute = 0;
      for (int r = 0; r < size; ++r) {
        const RankReport& x = all[r];
        const double hidden = x.comm_alone > 0 ? std::clamp(1.0 - x.mpi / x.comm_alone, 0.0, 1.0) : 1.0;
        const std::string per_step =
            x.bytes_min == x.bytes_max ? mib(x.bytes_max) : mib(x.bytes_min) + "-" + mib(x.bytes_max);
        std::printf("  %4d %6.0f %9.1f %11.1f %8.2f %8.3f %9.2f %18.2f %9s %6.0f %6.0f%%\n", r, x.rows, 1e3 * x.total,
                    1e3 * x.compute, 1e3 * x.poll, 1e3 * x.wait, 1e3 * x.other, 1e3 * x.comm_alone, per_step.c_str(),
                    x.steps, 100 * hidden);
        sum_mpi += x.mpi;
        sum_wait += x.wait;
        sum_alone += x.comm_alone;
        sum_total += x.total;
        sum_compute += x.compute;
        max_compute = std::max(max_compute, x.compute);
      }
      const double hidden = sum_alone > 0 ? std::clamp(1.0 - sum_mpi / sum_alone, 0.0, 1.0) : 1.0;
      const double flops = 2.0 * double(L) * double(L + 1) / 2 * double(a.heads) * double(2 * d);
      std::printf("  slowest rank %.1f ms; compute imbalance (max / mean) %.2f; %.1f GFLOP/s over all ranks\n",
                  1e3 * best_max, max_compute / (sum_compute / size), flops / best_max * 1e-9);
      std::printf(
          "  waiting in MPI_Waitall: %.2f%% of the ranks' time; in MPI at all (polls + waits): %.2f%%;\n"
          "  communication hidden behind compute: %.0f%%\n\n",
          100 * sum_wait / sum_total, 100 * sum_mpi / sum_total, 100 * hidden);
    }

    // Check against one process on the whole sequence.
    const Matrix<float> got = attend::gather_rows(out, layout, 0, comm);
    int good = 1;
    if (rank == 0) {
      const Matrix<float> want = attend::multi_head_attention(q, k, v, heads, causal);
      const double err = (got - want).cwiseAbs().maxCoeff() / std::max(1e-30f, want.cwiseAbs().maxCoeff());
      good = err <= 1e-5;
      std::printf("  %s: gathered output vs single-process multi_head_attention: relative error %.1e (%s)\n\n",
                  names[which], err, good ? "ok" : "MISMATCH");
    }
    MPI_Bcast(&good, 1, MPI_INT, 0, comm);
    ok = ok && good;
  }
  if (rank == 0 && size > 1)
    std::printf("zigzag vs contiguous: slowest rank %.1f ms vs %.1f ms (%.2fx)\n", 1e3 * slowest[1], 1e3 * slowest[0],
                slowest[0] / slowest[1]);
  MPI_Finalize();
  return ok ? 0 : 1;
}
