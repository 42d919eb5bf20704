#pragma once
/// \file
/// The collective argument check of ring attention and scatter/gather: every rank checks its own arguments,
/// then all ranks exchange a small signature of them (one MPI_Allgather) and compare, so that every rank throws
/// the same attend::shape_error before any exchange when any rank failed or ranks disagree; none hangs. Part of
/// `<attend/mpi.hpp>`.

#include <mpi.h>

#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "attend/errors.hpp"
#include "attend/masks.hpp"
#include "attend/mpi/comm.hpp"
#include "attend/options.hpp"
#include "attend/shapes.hpp"

namespace attend::detail {

/// What every rank tells the others before any exchange, as raw bytes (the same layout on every rank).
struct MpiSignature {
  std::int32_t failed = 0;  ///< this rank's local check failed; `message` says why
  std::int32_t scalar_bytes = 0;
  std::int32_t heads_query = 0, heads_kv = 0;
  std::int32_t mask_kind = 0, has_diagonal = 0, has_scale = 0, root = 0;
  std::int64_t q_rows = 0, q_cols = 0, k_rows = 0, k_cols = 0, v_rows = 0, v_cols = 0;
  std::int64_t window = 0, diagonal = 0, layout_length = 0;
  double scale = 0, softcap = 0;
  std::uint64_t layout_fingerprint = 0;
  std::int64_t sinks = 0, alibi_slopes = 0;                    ///< entries of Options::sinks, alibi_slopes
  std::uint64_t sinks_fingerprint = 0, alibi_fingerprint = 0;  ///< their values' bits, hashed
  char message[416] = {};
};

/// FNV-1a over the bits of a vector of doubles: equal on every rank that passes equal values.
inline std::uint64_t fingerprint_of(const std::vector<double>& values) {
  std::uint64_t h = 1469598103934665603ull;
  for (double x : values) {
    std::uint64_t bits = 0;
    std::memcpy(&bits, &x, sizeof bits);
    for (int b = 0; b < 8; ++b) {
      h ^= (bits >> (8 * b)) & 0xffu;
      h *= 1099511628211ull;
    }
  }
  return h;
}

/// The option fields of a signature that are vectors: their sizes and fingerprints.
inline void set_per_head_options(MpiSignature& s, const Options& o) {
  s.sinks = static_cast<std::int64_t>(o.sinks.size());
  s.alibi_slopes = static_cast<std::int64_t>(o.alibi_slopes.size());
  s.sinks_fingerprint = fingerprint_of(o.sinks);
  s.alibi_fingerprint = fingerprint_of(o.alibi_slopes);
}

inline void set_message(MpiSignature& s, const std::string& what, const char* fn) {
  // Drop the "attend::<fn>: " prefix: the collective message adds it back once.
  std::string text = what;
  const std::string prefix = std::string("attend::") + fn + ": ";
  if (text.compare(0, prefix.size(), prefix) == 0) text.erase(0, prefix.size());
  s.failed = 1;
  std::strncpy(s.message, text.c_str(), sizeof(s.message) - 1);
}

/// Writes `mask` into the signature's mask fields; mask_of() reads it back.
inline void set_mask(MpiSignature& s, const Mask& mask) {
  s.mask_kind = static_cast<std::int32_t>(mask.kind());
  s.window = mask.window();
  s.has_diagonal = mask.diagonal().has_value();
  s.diagonal = mask.diagonal().value_or(0);
}

/// The mask of a signature, rebuilt with Mask's own factories (messages print it with Mask's operator<<).
inline Mask mask_of(const MpiSignature& s) {
  Mask mask;
  switch (static_cast<Mask::Kind>(s.mask_kind)) {
    case Mask::Kind::none:
      mask = Mask::none();
      break;
    case Mask::Kind::causal:
      mask = Mask::causal();
      break;
    case Mask::Kind::causal_top_left:
      mask = Mask::causal_top_left();
      break;
    case Mask::Kind::sliding_window:
      mask = Mask::sliding_window(s.window);
      break;
  }
  return s.has_diagonal ? mask.with_diagonal(s.diagonal) : mask;
}

/// Local preconditions that make no collective call possible: MPI initialized, a real communicator.
inline void check_mpi_usable(const char* fn, MPI_Comm comm) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) fail(fn, "MPI is not initialized (call MPI_Init first) or already finalized");
  if (comm == MPI_COMM_NULL) fail(fn, "comm is MPI_COMM_NULL");
}

/// Allgathers every rank's signature. If any rank's local check failed, every rank throws shape_error naming
/// the first failing rank and its reason.
inline std::vector<MpiSignature> agree(const char* fn, const MpiSignature& mine, MPI_Comm comm) {
  const int size = comm_size(comm);
  std::vector<MpiSignature> all(static_cast<std::size_t>(size));
  MPI_Allgather(&mine, sizeof(MpiSignature), MPI_BYTE, all.data(), sizeof(MpiSignature), MPI_BYTE, comm);
  int failed = 0, first = -1;
  for (int r = 0; r < size; ++r)
    if (all[r].failed) {
      ++failed;
      if (first < 0) first = r;
    }
  if (failed) {
    all[first].message[sizeof(all[first].message) - 1] = '\0';
    fail(fn, "rank ", first, " of ", size, ": ", all[first].message,
         failed > 1 ? " (and " + std::to_string(failed - 1) + " other rank(s) failed their checks)" : std::string());
  }
  return all;
}

inline std::string shapes_text(const MpiSignature& s) {
  std::ostringstream os;
  os << "q " << Shape{s.q_rows, s.q_cols} << ", k " << Shape{s.k_rows, s.k_cols} << ", v " << Shape{s.v_rows, s.v_cols};
  return os.str();
}

inline const char* scalar_text(std::int32_t bytes) { return bytes == 4 ? "float" : bytes == 8 ? "double" : "?"; }

/// Throws (on every rank alike: all see the same signatures) when rank `r`'s signature differs from rank 0's in
/// what all ranks of a ring must share.
inline void check_ring_signatures(const char* fn, const std::vector<MpiSignature>& all) {
  const MpiSignature& a = all[0];
  for (std::size_t r = 1; r < all.size(); ++r) {
    const MpiSignature& b = all[r];
    std::ostringstream what;
    if (b.scalar_bytes != a.scalar_bytes)
      what << "scalar type: rank 0 has " << scalar_text(a.scalar_bytes) << ", rank " << r << " has "
           << scalar_text(b.scalar_bytes);
    else if (b.heads_query != a.heads_query || b.heads_kv != a.heads_kv)
      what << "heads: rank 0 has Heads{" << a.heads_query << ", " << a.heads_kv << "}, rank " << r << " has Heads{"
           << b.heads_query << ", " << b.heads_kv << '}';
    else if (b.q_cols != a.q_cols)
      what << "the head dim: q has " << a.q_cols << " columns on rank 0 but " << b.q_cols << " on rank " << r
           << " (head dim " << a.q_cols / a.heads_query << " vs " << b.q_cols / b.heads_query << ')';
    else if (b.k_cols != a.k_cols)
      what << "k's columns: k has " << a.k_cols << " columns on rank 0 but " << b.k_cols << " on rank " << r;
    else if (b.v_cols != a.v_cols)
      what << "the value head dim: v has " << a.v_cols << " columns on rank 0 but " << b.v_cols << " on rank " << r
           << " (value head dim " << a.v_cols / a.heads_kv << " vs " << b.v_cols / b.heads_kv << ')';
    else if (mask_of(b) != mask_of(a))
      what << "options.mask: rank 0 has " << mask_of(a) << ", rank " << r << " has " << mask_of(b);
    else if (b.has_scale != a.has_scale || (a.has_scale && b.scale != a.scale)) {
      what.precision(17);
      what << "options.scale: rank 0 has ";
      a.has_scale ? (what << a.scale) : (what << "the default");
      what << ", rank " << r << " has ";
      b.has_scale ? (what << b.scale) : (what << "the default");
    } else if (b.softcap != a.softcap) {
      what.precision(17);
      what << "options.softcap: rank 0 has " << a.softcap << ", rank " << r << " has " << b.softcap;
    } else if (b.sinks != a.sinks || b.sinks_fingerprint != a.sinks_fingerprint) {
      what << "options.sinks: rank 0 has " << a.sinks << " entries, rank " << r << " has " << b.sinks
           << (b.sinks == a.sinks ? " of other values" : "");
    } else if (b.alibi_slopes != a.alibi_slopes || b.alibi_fingerprint != a.alibi_fingerprint) {
      what << "options.alibi_slopes: rank 0 has " << a.alibi_slopes << " entries, rank " << r << " has "
           << b.alibi_slopes << (b.alibi_slopes == a.alibi_slopes ? " of other values" : "");
    } else if (b.layout_fingerprint != a.layout_fingerprint || b.layout_length != a.layout_length)
      what << "layout: rank 0 and rank " << r << " pass different RowLayouts (lengths " << a.layout_length << " and "
           << b.layout_length << ')';
    else
      continue;
    what << " (rank 0: " << shapes_text(a) << "; rank " << r << ": " << shapes_text(b)
         << "); every rank must pass the same heads, head dims, options, scalar type and layout";
    fail(fn, "ranks disagree on ", what.str());
  }
}

/// Throws (on every rank alike) when ranks disagree on what scatter and gather share: the scalar type, the root
/// and the layout.
inline void check_rows_signatures(const char* fn, const std::vector<MpiSignature>& all) {
  for (std::size_t r = 1; r < all.size(); ++r) {
    if (all[r].scalar_bytes != all[0].scalar_bytes)
      fail(fn, "ranks disagree on the scalar type: rank 0 has ", scalar_text(all[0].scalar_bytes), ", rank ", r,
           " has ", scalar_text(all[r].scalar_bytes));
    if (all[r].root != all[0].root)
      fail(fn, "ranks disagree on root: rank 0 has ", all[0].root, ", rank ", r, " has ", all[r].root);
    if (all[r].layout_fingerprint != all[0].layout_fingerprint || all[r].layout_length != all[0].layout_length)
      fail(fn, "ranks disagree on the layout: rank 0 and rank ", r, " pass different RowLayouts (lengths ",
           all[0].layout_length, " and ", all[r].layout_length, ')');
  }
}

}  // namespace attend::detail
