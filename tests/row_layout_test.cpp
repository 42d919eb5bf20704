// RowRange and RowLayout (attend/mpi/row_layout.hpp): which rows of one sequence each rank holds. The header has
// no MPI dependency, so the layouts are tested here as plain data, without mpiexec.
#include <attend/mpi/row_layout.hpp>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "test_util.hpp"

using attend::Index;
using attend::RowLayout;
using attend::RowRange;
using attend_test::expect_error;

namespace {

using Pieces = std::vector<RowRange>;

// Chunk c of `parts` (nearly) equal chunks of [0, length): [c L / parts, (c+1) L / parts), rounded down.
RowRange chunk(Index length, Index parts, Index c) { return {c * length / parts, (c + 1) * length / parts}; }

// Whether the pieces of all ranks cover [0, length) exactly once.
bool partitions(const RowLayout& layout, Index length) {
  std::vector<int> hits(static_cast<std::size_t>(length), 0);
  for (int r = 0; r < layout.ranks(); ++r)
    for (Index i : layout.global_rows(r)) {
      if (i < 0 || i >= length) return false;
      ++hits[static_cast<std::size_t>(i)];
    }
  for (int h : hits)
    if (h != 1) return false;
  return true;
}

TEST(RowRange, SizeIsEndMinusBeginAndZeroWhenEmptyOrReversed) {
  EXPECT_EQ((RowRange{3, 8}.size()), 5);
  EXPECT_EQ((RowRange{4, 4}.size()), 0);
  EXPECT_EQ((RowRange{9, 2}.size()), 0);
  EXPECT_EQ(RowRange{}.size(), 0);
  EXPECT_TRUE((RowRange{1, 2} == RowRange{1, 2}));
  EXPECT_FALSE((RowRange{1, 2} == RowRange{1, 3}));
}

TEST(RowLayout, DefaultHasNoRanksAndNoRows) {
  const RowLayout empty;
  EXPECT_EQ(empty.ranks(), 0);
  EXPECT_EQ(empty.length(), 0);
  EXPECT_EQ(empty, RowLayout(std::vector<Pieces>{}));
}

TEST(RowLayout, ContiguousGivesEachRankItsRowsAfterThoseOfLowerRanks) {
  const RowLayout l = RowLayout::contiguous({3, 0, 5});
  EXPECT_EQ(l.ranks(), 3);
  EXPECT_EQ(l.length(), 8);
  EXPECT_EQ(l.pieces(0), (Pieces{{0, 3}}));
  EXPECT_EQ(l.pieces(1), (Pieces{{3, 3}}));
  EXPECT_EQ(l.pieces(2), (Pieces{{3, 8}}));
  EXPECT_EQ(l.local_rows(0), 3);
  EXPECT_EQ(l.local_rows(1), 0);
  EXPECT_EQ(l.local_rows(2), 5);
  EXPECT_EQ(l.global_rows(2), (std::vector<Index>{3, 4, 5, 6, 7}));
  EXPECT_TRUE(l.global_rows(1).empty());
}

TEST(RowLayout, ContiguousRejectsNegativeRowCounts) {
  expect_error([] { RowLayout::contiguous({4, -2, 1}); }, {"attend::RowLayout::contiguous: rank 1 has -2 rows"});
}

TEST(RowLayout, EvenGivesRankRRowsRLOverPToRPlusOneLOverP) {
  const RowLayout l = RowLayout::even(10, 3);
  EXPECT_EQ(l.pieces(0), (Pieces{{0, 3}}));
  EXPECT_EQ(l.pieces(1), (Pieces{{3, 6}}));
  EXPECT_EQ(l.pieces(2), (Pieces{{6, 10}}));
  for (Index length : {0, 1, 7, 37, 300, 1001})
    for (int ranks : {1, 2, 3, 4, 7, 16}) {
      const RowLayout e = RowLayout::even(length, ranks);
      ASSERT_EQ(e.ranks(), ranks);
      EXPECT_EQ(e.length(), length);
      EXPECT_TRUE(partitions(e, length)) << "L=" << length << " P=" << ranks;
      for (int r = 0; r < ranks; ++r) {
        EXPECT_EQ(e.pieces(r), (Pieces{chunk(length, ranks, r)})) << "L=" << length << " P=" << ranks << " r=" << r;
        EXPECT_LE(e.local_rows(r), length / ranks + 1);
        EXPECT_GE(e.local_rows(r), length / ranks);
      }
    }
}

TEST(RowLayout, EvenRejectsNegativeLengthsAndFewerThanOneRank) {
  expect_error([] { RowLayout::even(-1, 2); }, {"attend::RowLayout::even: length is -1, expected >= 0"});
  expect_error([] { RowLayout::even(10, 0); }, {"attend::RowLayout::even: ranks is 0, expected >= 1"});
}

TEST(RowLayout, ZigzagGivesEachRankChunksRAndTwoPMinusOneMinusR) {
  // 10 rows, 4 chunks: [0, 2), [2, 5), [5, 7), [7, 10).
  const RowLayout l = RowLayout::zigzag(10, 2);
  EXPECT_EQ(l.pieces(0), (Pieces{{0, 2}, {7, 10}}));
  EXPECT_EQ(l.pieces(1), (Pieces{{2, 5}, {5, 7}}));
  EXPECT_EQ(l.global_rows(0), (std::vector<Index>{0, 1, 7, 8, 9}));
  EXPECT_EQ(l.global_rows(1), (std::vector<Index>{2, 3, 4, 5, 6}));
  for (Index length : {0, 1, 3, 10, 37, 300, 1001})
    for (int ranks : {1, 2, 3, 4, 7, 16}) {
      const RowLayout z = RowLayout::zigzag(length, ranks);
      ASSERT_EQ(z.ranks(), ranks);
      EXPECT_EQ(z.length(), length);
      EXPECT_TRUE(partitions(z, length)) << "L=" << length << " P=" << ranks;
      for (int r = 0; r < ranks; ++r)
        EXPECT_EQ(z.pieces(r), (Pieces{chunk(length, 2 * ranks, r), chunk(length, 2 * ranks, 2 * ranks - 1 - r)}))
            << "L=" << length << " P=" << ranks << " r=" << r;
    }
}

TEST(RowLayout, ZigzagGivesEveryRankTheSameCausalWorkWhenTwoPDividesL) {
  // Under a causal mask row i sees i + 1 keys; chunks r and 2P-1-r together always see C (C + 1) + (2P-1) C^2.
  for (int ranks : {1, 2, 3, 4, 8}) {
    const Index length = 2 * ranks * 50;
    const RowLayout z = RowLayout::zigzag(length, ranks);
    std::vector<Index> work;
    for (int r = 0; r < ranks; ++r) {
      Index pairs = 0;
      for (Index i : z.global_rows(r)) pairs += i + 1;
      work.push_back(pairs);
    }
    for (int r = 1; r < ranks; ++r) EXPECT_EQ(work[r], work[0]) << "P=" << ranks << " r=" << r;
  }
}

TEST(RowLayout, ZigzagOfFewerRowsThanChunksLeavesSomePiecesEmpty) {
  const RowLayout z = RowLayout::zigzag(3, 4);  // 8 chunks for 3 rows
  EXPECT_EQ(z.length(), 3);
  Index total = 0;
  for (int r = 0; r < 4; ++r) total += z.local_rows(r);
  EXPECT_EQ(total, 3);
  EXPECT_TRUE(partitions(z, 3));
}

TEST(RowLayout, ZigzagRejectsNegativeLengthsAndFewerThanOneRank) {
  expect_error([] { RowLayout::zigzag(-5, 2); }, {"attend::RowLayout::zigzag: length is -5, expected >= 0"});
  expect_error([] { RowLayout::zigzag(10, -1); }, {"attend::RowLayout::zigzag: ranks is -1, expected >= 1"});
}

TEST(RowLayout, PiecesKeepTheirLocalOrder) {
  const RowLayout l(std::vector<Pieces>{{{6, 9}, {0, 3}}, {{3, 6}}});
  EXPECT_EQ(l.length(), 9);
  EXPECT_EQ(l.local_rows(0), 6);
  EXPECT_EQ(l.local_rows(1), 3);
  EXPECT_EQ(l.global_rows(0), (std::vector<Index>{6, 7, 8, 0, 1, 2}));
  EXPECT_EQ(l.global_rows(1), (std::vector<Index>{3, 4, 5}));
}

TEST(RowLayout, EmptyPiecesAndRanksWithoutPiecesAreAllowed) {
  const RowLayout l(std::vector<Pieces>{{{0, 0}}, {{0, 3}, {3, 3}}, {}, {{50, 50}}});
  EXPECT_EQ(l.ranks(), 4);
  EXPECT_EQ(l.length(), 3);
  EXPECT_EQ(l.local_rows(0), 0);
  EXPECT_EQ(l.local_rows(1), 3);
  EXPECT_EQ(l.local_rows(2), 0);
  EXPECT_EQ(l.local_rows(3), 0);
  EXPECT_TRUE(partitions(l, 3));
}

TEST(RowLayout, RejectsPiecesThatOverlap) {
  expect_error(
      [] {
        RowLayout(std::vector<Pieces>{{{0, 5}}, {{4, 9}}});
      },
      {"attend::RowLayout: the row ranges do not partition [0, L): rows overlap at 4"});
  expect_error([] { RowLayout(std::vector<Pieces>{{{0, 5}, {2, 3}}}); }, {"rows overlap at 2"});
}

TEST(RowLayout, RejectsPiecesThatLeaveRowsOut) {
  expect_error(
      [] {
        RowLayout(std::vector<Pieces>{{{0, 5}}, {{6, 9}}});
      },
      {"attend::RowLayout: the row ranges do not partition [0, L): rows are missing from 5"});
  expect_error([] { RowLayout(std::vector<Pieces>{{{2, 4}}}); }, {"rows are missing from 0"});
}

TEST(RowLayout, RejectsReversedOrNegativeRanges) {
  expect_error(
      [] {
        RowLayout(std::vector<Pieces>{{{0, 3}}, {{5, 4}}});
      },
      {"attend::RowLayout: rank 1 has the row range [5, 4), expected 0 <= begin <= end"});
  expect_error(
      [] {
        RowLayout(std::vector<Pieces>{{{-2, 3}}});
      },
      {"attend::RowLayout: rank 0 has the row range [-2, 3), expected 0 <= begin <= end"});
}

TEST(RowLayout, PiecesOfARankOutsideTheLayoutThrowOutOfRange) {
  const RowLayout l = RowLayout::even(10, 2);
  EXPECT_THROW(l.pieces(2), std::out_of_range);
  EXPECT_THROW(l.local_rows(-1), std::out_of_range);
}

TEST(RowLayout, EqualLayoutsHaveEqualFingerprintsHoweverBuilt) {
  const RowLayout even = RowLayout::even(37, 3), listed = RowLayout::contiguous({12, 12, 13}),
                  pieces(std::vector<Pieces>{{{0, 12}}, {{12, 24}}, {{24, 37}}});
  EXPECT_EQ(even, listed);
  EXPECT_EQ(even, pieces);
  EXPECT_EQ(even.fingerprint(), listed.fingerprint());
  EXPECT_EQ(even.fingerprint(), pieces.fingerprint());
  EXPECT_EQ(RowLayout::zigzag(300, 4).fingerprint(), RowLayout::zigzag(300, 4).fingerprint());
  EXPECT_EQ(RowLayout().fingerprint(), RowLayout(std::vector<Pieces>{}).fingerprint());
}

TEST(RowLayout, DifferentLayoutsHaveDifferentFingerprints) {
  const std::vector<RowLayout> layouts = {
      RowLayout::even(40, 3),
      RowLayout::zigzag(40, 3),
      RowLayout::even(41, 3),
      RowLayout::even(40, 4),
      RowLayout::contiguous({0, 5}),
      RowLayout::contiguous({5, 0}),
      RowLayout(std::vector<Pieces>{{{0, 3}, {3, 5}}}),  // the same rows in another local order ...
      RowLayout(std::vector<Pieces>{{{3, 5}, {0, 3}}}),
      RowLayout(std::vector<Pieces>{{{0, 5}}}),      // ... or as one piece
      RowLayout(std::vector<Pieces>{{{0, 5}}, {}}),  // rank 1 without pieces, not contiguous's empty [5, 5)
      RowLayout(),
  };
  for (std::size_t a = 0; a < layouts.size(); ++a)
    for (std::size_t b = 0; b < layouts.size(); ++b) {
      EXPECT_EQ(layouts[a] == layouts[b], a == b) << a << " vs " << b;
      EXPECT_EQ(layouts[a] != layouts[b], a != b) << a << " vs " << b;
      if (a != b) {
        EXPECT_NE(layouts[a].fingerprint(), layouts[b].fingerprint()) << a << " vs " << b;
      }
    }
}

}  // namespace
