#pragma once
/// \file
/// Sequence-parallel attention across processes with MPI (ring attention). Not part of attend.hpp: include
/// `<attend/mpi.hpp>` and link `attend::mpi` (attend::attend plus MPI::MPI_CXX; only the MPI C API is used).
///
/// One long sequence of L tokens is split across the P ranks of a communicator: each rank holds some rows of
/// q, k and v (the same rows of all three). Key/value blocks travel around the ring of ranks, rank r sending to
/// r + 1 and receiving from r - 1, with non-blocking sends and receives that overlap the computation of the
/// block in hand (double buffering). Each step computes the local queries against the visiting block with
/// the kernel of multi_head_attention_with_lse() (called directly: the arguments are checked once per call),
/// the mask placed at the blocks' global positions (Mask::with_diagonal(q_offset - k_offset)), and merges the
/// partial result exactly into the accumulated one, in place (the merge of merge_attention()).
/// Blocks wholly hidden by a causal or sliding-window mask are not computed, and the ring stops early when no
/// rank needs the blocks further away (short sliding windows).
///
/// Rows per rank: contiguous blocks in rank order (ring_attention(q, k, v, heads, options, comm), blocks may
/// be uneven), or any RowLayout (ring_attention(..., layout, comm)), e.g. RowLayout::zigzag(L, P), which
/// balances causal work: the sequence is cut into 2P chunks and rank r holds chunks r and 2P-1-r.
/// scatter_rows()/gather_rows() (and zigzag_scatter()/zigzag_gather()) move a whole sequence from one rank
/// into a layout and back.
///
/// Arguments are checked on every rank and agreed collectively (one MPI_Allgather of a small signature)
/// before any exchange: if any rank's arguments are invalid or ranks disagree (heads, head dims, options,
/// scalar type, layout), every rank throws attend::shape_error with the same message; none hangs. (Failures past
/// that point, such as running out of memory on one rank, are not coordinated: MPI's error handler applies.)
///
/// Threads: the MPI calls are made by the calling thread only, outside OpenMP regions (MPI_THREAD_FUNNELED is
/// enough).
///
/// The parts, all included here:
///
///   mpi/row_layout.hpp         RowRange, RowLayout: which rows each rank holds (no MPI: usable without it)
///   mpi/comm.hpp               the MPI datatype of a scalar, a row datatype, a private duplicate communicator
///   mpi/collective_checks.hpp  the signature every rank sends, its collective agreement and its messages
///   mpi/ring.hpp               ring_attention(), ring_attention_with_lse()
///   mpi/ring_types.hpp         RingStats, RingWorkspace, RingTuning (MPI-free)
///   mpi/scatter_gather.hpp     scatter_rows(), gather_rows(), zigzag_scatter(), zigzag_gather()

#include "attend/mpi/collective_checks.hpp"
#include "attend/mpi/comm.hpp"
#include "attend/mpi/ring.hpp"
#include "attend/mpi/ring_types.hpp"
#include "attend/mpi/row_layout.hpp"
#include "attend/mpi/scatter_gather.hpp"

// Not used by the parts, but <attend/mpi.hpp> has always brought it: multi_head_attention(), the ring's reference.
#include "attend/multi_head.hpp"
