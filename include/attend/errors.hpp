#pragma once
/// \file
/// The one exception type attend throws for bad arguments, and the helper that formats its messages.

#include <limits>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
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

/// Writes a number with the fewest digits (at least the stream default, 6) that read back as the same value
/// (1e+300, not 1.0000000000000001e+300), so messages quote what the user wrote; anything else as operator<<.
template <class X>
void put(std::ostream& os, const X& x) {
  if constexpr (std::is_floating_point_v<std::decay_t<X>>) {
    using F = std::decay_t<X>;
    std::ostringstream s;
    for (int digits = 6; digits <= std::numeric_limits<F>::max_digits10; ++digits) {
      s.str("");
      s.precision(digits);
      s << x;
      std::istringstream back(s.str());
      F y{};
      if ((back >> y) && y == x) break;  // inf and nan never compare equal: they end at max_digits10, as is
    }
    os << s.str();
  } else {
    os << x;
  }
}

/// Throws shape_error with the message `attend::<function>: <parts...>`.
template <class... Parts>
[[noreturn]] void fail(const char* function, Parts&&... parts) {
  std::ostringstream os;
  os << "attend::" << function << ": ";
  (put(os, std::forward<Parts>(parts)), ...);
  throw shape_error(os.str());
}

}  // namespace detail
}  // namespace attend
