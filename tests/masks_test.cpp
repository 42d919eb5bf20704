// The mask rules of the contract, checked entry by entry against their definitions.
#include <gtest/gtest.h>

#include <attend/attend.hpp>

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

}  // namespace
