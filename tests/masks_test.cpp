// The mask rules of the contract, checked entry by entry against their definitions, also for diagonals and windows
// at the ends of Index.
#include <gtest/gtest.h>

#include <algorithm>
#include <attend/attend.hpp>
#include <limits>
#include <random>
#include <vector>

#include "test_util.hpp"

using attend::Index;
using attend::Mask;

namespace {

bool rule(const Mask& m, Index i, Index j, Index lq, Index lk) {
  switch (m.kind()) {
    case Mask::Kind::none:
      return true;
    case Mask::Kind::causal:
      return j <= i + (lk - lq);
    case Mask::Kind::causal_top_left:
      return j <= i;
    case Mask::Kind::sliding_window:
      return j <= i + (lk - lq) && j > i + (lk - lq) - m.window();
  }
  return false;
}

TEST(Mask, DefaultIsNone) {
  EXPECT_EQ(Mask(), Mask::none());
  EXPECT_EQ(attend::Options().mask, Mask::none());
  EXPECT_FALSE(attend::Options().scale.has_value());
  EXPECT_EQ(attend::Options().softcap, 0.0);
}

TEST(Mask, KeysMatchTheContractRules) {
  for (const Mask& m : {Mask::none(), Mask::causal(), Mask::causal_top_left(), Mask::sliding_window(1),
                        Mask::sliding_window(3), Mask::sliding_window(100)})
    for (Index lq : {0, 1, 2, 5, 9})
      for (Index lk : {0, 1, 3, 5, 12})
        for (Index i = 0; i < lq; ++i) {
          const attend::KeyRange r = m.keys(i, lq, lk);
          EXPECT_LE(0, r.begin);
          EXPECT_LE(r.end, lk);
          for (Index j = 0; j < lk; ++j)
            EXPECT_EQ(m.visible(i, j, lq, lk), rule(m, i, j, lq, lk))
                << m << " i=" << i << " j=" << j << " lq=" << lq << " lk=" << lk;
        }
}

TEST(Mask, RangesNeverMoveLeftAsRowsAdvance) {  // the blocked kernel bounds a tile by its first and last rows
  for (const Mask& m : {Mask::none(), Mask::causal(), Mask::causal_top_left(), Mask::sliding_window(2)})
    for (Index lq : {1, 4, 9})
      for (Index lk : {1, 4, 11})
        for (Index i = 1; i < lq; ++i) {
          EXPECT_LE(m.keys(i - 1, lq, lk).begin, m.keys(i, lq, lk).begin);
          EXPECT_LE(m.keys(i - 1, lq, lk).end, m.keys(i, lq, lk).end);
        }
}

// A block of queries at offset qo and a block of keys at offset ko of one sequence see each other exactly as
// the whole sequence's causal mask says, with diagonal qo - ko.
TEST(Mask, WithDiagonalPlacesBlocksOfOneSequence) {
  const Index n = 12;
  for (const Mask& whole : {Mask::causal(), Mask::causal_top_left(), Mask::sliding_window(3)})
    for (Index qo : {0, 4, 8})
      for (Index ko : {0, 4, 8})
        for (Index i = 0; i < 4; ++i)
          for (Index j = 0; j < 4; ++j)
            EXPECT_EQ(whole.with_diagonal(qo - ko).visible(i, j, 4, 4), whole.visible(qo + i, ko + j, n, n))
                << whole << " qo=" << qo << " ko=" << ko << " i=" << i << " j=" << j;
  EXPECT_EQ(Mask::none().with_diagonal(3), Mask::none());
  EXPECT_NE(Mask::causal().with_diagonal(0), Mask::causal());
  EXPECT_EQ(Mask::causal().with_diagonal(2).keys(0, 1, 9).end, 3);  // fixed: not bottom-right any more
}

TEST(Mask, CausalAlignments) {
  // 2 queries, 4 keys: bottom-right puts the last query on the last key; top-left on the first keys.
  EXPECT_EQ(Mask::causal().keys(0, 2, 4).end, 3);
  EXPECT_EQ(Mask::causal().keys(1, 2, 4).end, 4);
  EXPECT_EQ(Mask::causal_top_left().keys(0, 2, 4).end, 1);
  EXPECT_EQ(Mask::causal_top_left().keys(1, 2, 4).end, 2);
  // More queries than keys: bottom-right leaves the first rows with no key at all.
  EXPECT_TRUE(Mask::causal().keys(0, 4, 2).empty());
  EXPECT_TRUE(Mask::causal().keys(1, 4, 2).empty());
  EXPECT_EQ(Mask::causal().keys(2, 4, 2).end, 1);
  // A window of w sees exactly w keys once enough exist, itself included.
  EXPECT_EQ(Mask::sliding_window(3).keys(5, 6, 6).begin, 3);
  EXPECT_EQ(Mask::sliding_window(3).keys(5, 6, 6).size(), 3);
  EXPECT_EQ(Mask::sliding_window(3).keys(1, 6, 6).size(), 2);
}

// Diagonals and windows anywhere in Index, the ends included (Mask::with_diagonal() and sliding_window() take any):
// the range is the exact one, as computed in 128 bits. i + diagonal + 1 - window used to overflow (undefined
// behaviour, which UBSan reports under the asan preset) and give wrong ranges.
#if defined(__SIZEOF_INT128__)
__extension__ typedef __int128 Wide;  // __extension__: -Wpedantic knows no 128-bit integers
#endif

TEST(Mask, ExtremeDiagonalsAndWindowsGiveTheExactRange) {
#if defined(__SIZEOF_INT128__)
  constexpr Index max = std::numeric_limits<Index>::max(), min = std::numeric_limits<Index>::min();
  const std::vector<Index> diagonals = {min, min + 1, min + 7,        min / 2, -(Index(1) << 40), -9,      -3, 0,
                                        2,   11,      Index(1) << 40, max / 2, max - 7,           max - 1, max};
  const std::vector<Index> windows = {1, 2, 5, 13, Index(1) << 40, max / 2, max - 7, max - 1, max};
  int checked = 0;
  for (Index lq : {1, 4, 9})
    for (Index lk : {0, 1, 6, 12})
      for (Index diagonal : diagonals) {
        std::vector<Mask> masks = {Mask::causal().with_diagonal(diagonal),
                                   Mask::causal_top_left().with_diagonal(diagonal)};
        for (Index w : windows) masks.push_back(Mask::sliding_window(w).with_diagonal(diagonal));
        for (const Mask& m : masks)
          for (Index i = 0; i < lq; ++i) {
            const Wide end = Wide(i) + diagonal + 1;
            const Wide begin = m.kind() == Mask::Kind::sliding_window ? end - m.window() : 0;
            const auto clamp = [lk](Wide x) { return Index(x < 0 ? 0 : x > lk ? lk : x); };
            const attend::KeyRange r = m.keys(i, lq, lk);
            ASSERT_EQ(r.begin, clamp(begin)) << m << " i=" << i << " lq=" << lq << " lk=" << lk;
            ASSERT_EQ(r.end, clamp(end)) << m << " i=" << i << " lq=" << lq << " lk=" << lk;
            ++checked;
          }
      }
  // Without a fixed diagonal: windows up to the end of Index.
  for (Index w : windows)
    for (Index i = 0; i < 5; ++i) {
      const attend::KeyRange r = Mask::sliding_window(w).keys(i, 5, 7);
      EXPECT_EQ(r.end, i + 3);
      EXPECT_EQ(r.begin, std::max<Index>(0, i + 3 - std::min<Index>(w, 100)));
    }
  EXPECT_GT(checked, 9000);
#else
  GTEST_SKIP() << "no 128-bit integers for the exact reference";
#endif
}

// The kernels and the reference under the same extreme masks, with ALiBi on (its distance |i + D - j| was formed
// in Index too): the same outputs, finite, and zero rows where no key is visible.
TEST(Mask, KernelsWithExtremeMasksMatchTheReference) {
  constexpr Index max = std::numeric_limits<Index>::max(), min = std::numeric_limits<Index>::min();
  std::mt19937 rng(130);
  const auto q = attend_test::random_matrix<double>(6, 2 * 4, rng),
             k = attend_test::random_matrix<double>(9, 2 * 4, rng);
  const auto v = attend_test::random_matrix<double>(9, 2 * 3, rng);
  for (const Mask& m : {Mask::causal().with_diagonal(max), Mask::causal().with_diagonal(min),
                        Mask::causal_top_left().with_diagonal(max - 3), Mask::sliding_window(max),
                        Mask::sliding_window(max).with_diagonal(max), Mask::sliding_window(max - 3).with_diagonal(max),
                        Mask::sliding_window(4).with_diagonal(min + 2), Mask::sliding_window(max).with_diagonal(min)})
    for (const bool alibi : {false, true}) {
      attend::Options o;
      o.mask = m;
      if (alibi) o.alibi_slopes = {0.5, 0.25};
      const attend::Matrix<double> got = attend::multi_head_attention(q, k, v, attend::Heads{2, 2}, o);
      const attend::Matrix<double> want = attend::reference::multi_head_attention(q, k, v, attend::Heads{2, 2}, o);
      ASSERT_TRUE(got.allFinite()) << m;
      EXPECT_LE(attend_test::max_abs_diff(got, want), 1e-12) << m << (alibi ? " with ALiBi" : "");
      for (Index i = 0; i < 6; ++i)
        EXPECT_TRUE(!m.keys(i, 6, 9).empty() || got.row(i).isZero(0)) << m << " row " << i << " sees no key";
    }
}

}  // namespace
