// The kernel's internal invariants (ATTEND_DASSERT): this test routes them to an exception, as the header allows
// a program to, and breaks each kind on purpose through the detail API. Release builds define NDEBUG, which turns
// the default ATTEND_DASSERT off; a definition before the first attend header takes precedence either way.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#define ATTEND_DASSERT(condition, what) \
  ((condition) ? static_cast<void>(0) : throw std::logic_error(std::string("invariant: ") + (what)))

#include <attend/attend.hpp>

namespace {

using attend::Heads;
using attend::Index;
using attend::Matrix;
using attend::Options;
namespace detail = attend::detail;

struct Inputs {
  Matrix<float> q = Matrix<float>::Random(40, 8), k = Matrix<float>::Random(50, 8), v = Matrix<float>::Random(50, 8);
  detail::ConstRowsRef<float> qr{q}, kr{k}, vr{v};
  detail::Problem<float> pb = detail::make_problem(qr, kr, vr, nullptr, Heads{1, 1}, Options{});
};

TEST(Invariants, AQueryTileHoldsAtLeastOnePosition) {
  const Inputs in;
  EXPECT_THROW(detail::QueryTile<float>(in.pb, 0, 5, 5), std::logic_error);
  EXPECT_NO_THROW(detail::QueryTile<float>(in.pb, 0, 5, 6));
}

TEST(Invariants, ATileMustFitItsWorkspace) {
  const Inputs in;
  const auto keys = detail::group_keys(in.pb);
  detail::RowsWorkspace<float> small(4, 16, 8, 8);
  EXPECT_THROW(detail::RowsTile<float>(in.pb, keys[0], 0, 0, 5, small), std::logic_error);
  detail::RowsTile<float> fits(in.pb, keys[0], 0, 0, 4, small);
  EXPECT_THROW(fits.absorb(0, 17), std::logic_error);  // a key tile wider than the workspace's scores
}

TEST(Invariants, KeyTilesOfKeysPackedWholeStartOnPanels) {
  const Inputs in;
  const auto keys = detail::group_keys(in.pb);
  detail::PackedKeys<float> packed;
  packed.pack(keys[0], 0);
  detail::PackedWorkspace<float> ws(40, 64, 8, 8);
  detail::PackedTile<float> tile(in.pb, keys[0], &packed, 0, 0, 40, ws);
  const Index nr = detail::PackedGemm<float>::nr;
  EXPECT_THROW(tile.absorb(1, nr), std::logic_error);
  EXPECT_NO_THROW(tile.absorb(0, nr));
}

TEST(Invariants, ARowStoreHoldingRowsKeepsItsWidth) {
  detail::RowStore<float> store;
  store.append(Matrix<float>::Ones(3, 4));
  EXPECT_THROW(store.reserve(10, 5), std::logic_error);
  store.clear();
  EXPECT_NO_THROW(store.reserve(10, 5));
}

}  // namespace
