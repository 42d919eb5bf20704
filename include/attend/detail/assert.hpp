#pragma once
/// \file
/// ATTEND_DASSERT(condition, what): the third tier of attend's checks. Argument errors are the user's and throw
/// attend::shape_error before any work, in every build; type errors are static_asserts. ATTEND_DASSERT guards the
/// kernel's *internal* invariants (tiles on panel boundaries, rows within a workspace, mask ranges that only move
/// right): a failure is a bug in attend, never in the caller's arguments.
///
/// It is active unless NDEBUG is defined (debug builds), and costs nothing otherwise. Define ATTEND_DASSERT before
/// including attend to route failures elsewhere (a test may throw, a service may log): it receives the condition
/// and a string literal naming the invariant.

#include <cstdio>
#include <cstdlib>

namespace attend::detail {

/// Reports a broken internal invariant and aborts: the kernel's state is no longer trustworthy.
[[noreturn]] inline void dassert_failed(const char* condition, const char* what, const char* file, int line) {
  std::fprintf(stderr, "attend: internal invariant broken at %s:%d: %s (%s)\n", file, line, what, condition);
  std::abort();
}

}  // namespace attend::detail

#if !defined(ATTEND_DASSERT)
#if defined(NDEBUG)
#define ATTEND_DASSERT(condition, what) static_cast<void>(0)
#else
#define ATTEND_DASSERT(condition, what) \
  ((condition) ? static_cast<void>(0) : ::attend::detail::dassert_failed(#condition, what, __FILE__, __LINE__))
#endif
#endif
