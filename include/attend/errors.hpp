#pragma once
/// \file
/// The one exception type attend throws for bad arguments, and the helper that formats its messages.

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

#include "attend/shapes.hpp"

namespace attend {

/// Thrown before any work when an argument's shape, count or value cannot be accepted. The message names the
/// function, the argument and the shapes involved, e.g.
/// `attend::multi_head_attention: k has 48 columns, expected kv heads (2) * head dim (32) = 64 (...)`.
class shape_error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

/// Throws shape_error with the message `attend::<function>: <parts...>`.
template <class... Parts>
[[noreturn]] void fail(const char* function, Parts&&... parts) {
  std::ostringstream os;
  os.precision(17);
  os << "attend::" << function << ": ";
  (os << ... << std::forward<Parts>(parts));
  throw shape_error(os.str());
}

}  // namespace detail
}  // namespace attend
