// Benchmark of attend::ring_attention under MPI (a plain program: Google Benchmark does not fit mpiexec).
//
//   mpiexec -n P ./ring_attention_mpi [--length L] [--heads H] [--kv-heads G] [--dim d] [--type float|double]
//                                     [--mask causal|none|window=W] [--layout contiguous|zigzag|both]
//                                     [--reps n] [--reference]
//   (Open MPI as root: --allow-run-as-root; more ranks than cores: --oversubscribe; OMP_NUM_THREADS per rank)
//
// For each layout it runs `reps` timed calls (after one warm-up) and prints, per rank, one line of key=value
// pairs (medians over the repetitions): the call's time, its compute time, the time in MPI (polling between
// kernel calls plus waiting at the end of each step, also given apart), the same exchange timed alone without
// compute (best of reps), the bytes sent per step and the fraction of the communication hidden behind
// compute, 1 - MPI time / exchange alone (clamped to [0, 1]; waiting for a slower rank also counts as MPI
// time). A summary line per layout gives the slowest rank's time and the achieved GFLOP/s (4 * visible
// (query, key) pairs * H * d flops, d = dv). --reference also times single-process multi_head_attention over
// the whole sequence on rank 0 alone.
#include <mpi.h>

#include <algorithm>
#include <attend/attend.hpp>
#include <attend/mpi.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

using attend::Index;
using attend::Matrix;
using attend::RowLayout;

struct Config {
  Index length = 8192;
  int heads = 8, kv_heads = 8, dim = 64, reps = 5;
  std::string type = "float", mask = "causal", layout = "both";
  bool reference = false;
};

double median(std::vector<double> x) {
  if (x.empty()) return 0;
  std::sort(x.begin(), x.end());
  const std::size_t n = x.size();
  return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

// Visible (query, key) pairs of the whole sequence under the mask.
double visible_pairs(const attend::Mask& m, Index L) {
  double pairs = 0;
  for (Index i = 0; i < L; ++i) pairs += static_cast<double>(m.keys(i, L, L).size());
  return pairs;
}

template <class T>
MPI_Datatype mpi_scalar() {
  return std::is_same_v<T, float> ? MPI_FLOAT : MPI_DOUBLE;
}

// The ring's exchange alone: the same messages, no compute. This rank's best time over `reps`.
template <class T>
double exchange_alone(const RowLayout& layout, Index width, int steps, int reps, MPI_Comm comm) {
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  Index max_rows = 0;
  for (int r = 0; r < size; ++r) max_rows = std::max(max_rows, layout.local_rows(r));
  MPI_Datatype row;
  MPI_Type_contiguous(static_cast<int>(width), mpi_scalar<T>(), &row);
  MPI_Type_commit(&row);
  std::vector<T> buf[2] = {std::vector<T>(max_rows * width + 1), std::vector<T>(max_rows * width + 1)};
  double best = 1e30;
  for (int rep = 0; rep < reps; ++rep) {
    MPI_Barrier(comm);
    const double t0 = MPI_Wtime();
    int cur = 0;
    for (int s = 0; s < steps; ++s) {
      const int owner = (rank - s + size) % size, incoming = (rank - s - 1 + size) % size;
      MPI_Request req[2];
      MPI_Irecv(buf[1 - cur].data(), static_cast<int>(layout.local_rows(incoming)), row, (rank - 1 + size) % size, s,
                comm, &req[0]);
      MPI_Isend(buf[cur].data(), static_cast<int>(layout.local_rows(owner)), row, (rank + 1) % size, s, comm, &req[1]);
      MPI_Waitall(2, req, MPI_STATUSES_IGNORE);
      cur = 1 - cur;
    }
    best = std::min(best, MPI_Wtime() - t0);
  }
  MPI_Type_free(&row);
  return best;
}

template <class T>
int run(const Config& c, const attend::Mask& mask, MPI_Comm comm) {
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  const attend::Heads heads{c.heads, c.kv_heads};
  const Index L = c.length, d = c.dim, width = Index(c.kv_heads) * 2 * d;
  attend::Options options;
  options.mask = mask;
  const double flops = 4.0 * visible_pairs(mask, L) * c.heads * d;

  Matrix<T> q, k, v;
  if (rank == 0) {
    std::mt19937 rng(7);
    std::normal_distribution<double> n01(0.0, 1.0);
    q.resize(L, Index(c.heads) * d);
    k.resize(L, Index(c.kv_heads) * d);
    v.resize(L, Index(c.kv_heads) * d);
    for (Matrix<T>* m : {&q, &k, &v})
      for (Index i = 0; i < m->size(); ++i) m->data()[i] = static_cast<T>(n01(rng));
    if (c.reference) {
      attend::multi_head_attention(q.topRows(std::min<Index>(L, 512)), k.topRows(std::min<Index>(L, 512)),
                                   v.topRows(std::min<Index>(L, 512)), heads, options);  // warm-up
      std::vector<double> times;
      for (int rep = 0; rep < c.reps; ++rep) {
        const double t0 = MPI_Wtime();
        const Matrix<T> out = attend::multi_head_attention(q, k, v, heads, options);
        times.push_back(MPI_Wtime() - t0);
      }
      const double t = median(times);
      std::printf("ring_attention_mpi reference=single_process time_ms=%.2f gflops=%.2f\n", 1e3 * t, flops / t * 1e-9);
    }
  }
  MPI_Barrier(comm);

  std::vector<std::string> layouts;
  if (c.layout == "both" || c.layout == "contiguous") layouts.push_back("contiguous");
  if (c.layout == "both" || c.layout == "zigzag") layouts.push_back("zigzag");
  for (const std::string& name : layouts) {
    const RowLayout layout = name == "zigzag" ? RowLayout::zigzag(L, size) : RowLayout::even(L, size);
    const Matrix<T> ql = attend::scatter_rows(q, layout, 0, comm), kl = attend::scatter_rows(k, layout, 0, comm),
                    vl = attend::scatter_rows(v, layout, 0, comm);
    attend::RingWorkspace workspace;  // the key/value buffers, kept between calls as a layer loop would
    attend::ring_attention(ql, kl, vl, heads, options, layout, comm, nullptr, &workspace);  // warm-up
    std::vector<double> total, compute, mpi, poll, wait, slowest;
    attend::RingStats st;
    for (int rep = 0; rep < c.reps; ++rep) {
      MPI_Barrier(comm);
      attend::ring_attention(ql, kl, vl, heads, options, layout, comm, &st, &workspace);
      total.push_back(st.total_seconds);
      compute.push_back(st.compute_seconds);
      mpi.push_back(st.wait_seconds + st.poll_seconds);
      poll.push_back(st.poll_seconds);
      wait.push_back(st.wait_seconds);
      double mx = st.total_seconds;
      MPI_Allreduce(MPI_IN_PLACE, &mx, 1, MPI_DOUBLE, MPI_MAX, comm);
      slowest.push_back(mx);
    }
    const double alone = exchange_alone<T>(layout, width, st.steps, std::max(3, c.reps), comm);
    const double mpi_med = median(mpi);
    const double hidden = alone > 0 ? std::clamp(1.0 - mpi_med / alone, 0.0, 1.0) : 1.0;
    const std::size_t bytes = st.bytes_sent.empty() ? 0 : *std::max_element(st.bytes_sent.begin(), st.bytes_sent.end());
    char line[512];
    std::snprintf(
        line, sizeof line,
        "ring_attention_mpi layout=%s rank=%d rows=%ld time_ms=%.2f compute_ms=%.2f mpi_ms=%.3f "
        "poll_ms=%.3f wait_ms=%.3f exchange_alone_ms=%.3f bytes_per_step=%zu steps=%d blocks=%d skipped=%d hidden=%.3f",
        name.c_str(), rank, static_cast<long>(ql.rows()), 1e3 * median(total), 1e3 * median(compute), 1e3 * mpi_med,
        1e3 * median(poll), 1e3 * median(wait), 1e3 * alone, bytes, st.steps, st.blocks_computed, st.blocks_skipped,
        hidden);
    // Print in rank order from rank 0.
    std::vector<char> lines(rank == 0 ? sizeof line * size : 1);
    MPI_Gather(line, sizeof line, MPI_CHAR, lines.data(), sizeof line, MPI_CHAR, 0, comm);
    double sums[3] = {mpi_med, alone, median(total)};
    MPI_Allreduce(MPI_IN_PLACE, sums, 3, MPI_DOUBLE, MPI_SUM, comm);
    if (rank == 0) {
      for (int r = 0; r < size; ++r) std::printf("%s\n", lines.data() + r * sizeof line);
      const double t = median(slowest);
      std::printf(
          "ring_attention_mpi layout=%s summary ranks=%d slowest_ms=%.2f gflops=%.2f mpi_fraction=%.3f "
          "hidden=%.3f\n",
          name.c_str(), size, 1e3 * t, flops / t * 1e-9, sums[0] / sums[2],
          sums[1] > 0 ? std::clamp(1.0 - sums[0] / sums[1], 0.0, 1.0) : 1.0);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  Config c;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--length")
      c.length = std::atol(next().c_str());
    else if (a == "--heads")
      c.heads = std::atoi(next().c_str());
    else if (a == "--kv-heads")
      c.kv_heads = std::atoi(next().c_str());
    else if (a == "--dim")
      c.dim = std::atoi(next().c_str());
    else if (a == "--reps")
      c.reps = std::max(1, std::atoi(next().c_str()));
    else if (a == "--type")
      c.type = next();
    else if (a == "--mask")
      c.mask = next();
    else if (a == "--layout")
      c.layout = next();
    else if (a == "--reference")
      c.reference = true;
    else if (a == "--help" || a == "-h") {
      if (rank == 0)
        std::printf(
            "usage: mpiexec -n P ring_attention_mpi [--length L] [--heads H] [--kv-heads G] [--dim d]\n"
            "         [--type float|double] [--mask causal|none|window=W] [--layout contiguous|zigzag|both]\n"
            "         [--reps n] [--reference]\n");
      MPI_Finalize();
      return 0;
    } else {
      if (rank == 0)
        std::fprintf(stderr, "unknown argument %s (see the comment at the top of ring_attention_mpi.cpp)\n", a.c_str());
      MPI_Finalize();
      return 2;
    }
  }
  attend::Mask mask = attend::Mask::causal();
  if (c.mask == "none")
    mask = attend::Mask::none();
  else if (c.mask.rfind("window=", 0) == 0)
    mask = attend::Mask::sliding_window(std::atol(c.mask.c_str() + 7));
  int threads = 1;
#if defined(_OPENMP)
  threads = omp_get_max_threads();
#endif
  if (rank == 0)
    std::printf(
        "ring_attention_mpi config ranks=%d threads_per_rank=%d length=%ld heads=%d kv_heads=%d dim=%d type=%s "
        "mask=%s reps=%d\n",
        size, threads, static_cast<long>(c.length), c.heads, c.kv_heads, c.dim, c.type.c_str(), c.mask.c_str(), c.reps);
  int rc = 0;
  try {
    rc = c.type == "double" ? run<double>(c, mask, MPI_COMM_WORLD) : run<float>(c, mask, MPI_COMM_WORLD);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[rank %d] %s\n", rank, e.what());
    rc = 1;
  }
  MPI_Finalize();
  return rc;
}
