// SPDX-License-Identifier: MIT
/// \file version.hpp
/// \brief Version of the attend library.
///
/// This header is the single source of truth for the version: the top-level
/// CMakeLists.txt reads the three ATTEND_VERSION_* macros below with a regex
/// and uses them as the CMake project VERSION (and the installed package's
/// version). Change the version here only.
#ifndef ATTEND_VERSION_HPP
#define ATTEND_VERSION_HPP

#define ATTEND_VERSION_MAJOR 0
#define ATTEND_VERSION_MINOR 1
#define ATTEND_VERSION_PATCH 0
#define ATTEND_VERSION_STRING "0.1.0"

namespace attend {

/// Major version (incompatible API changes).
inline constexpr int version_major = ATTEND_VERSION_MAJOR;
/// Minor version (backwards-compatible additions).
inline constexpr int version_minor = ATTEND_VERSION_MINOR;
/// Patch version (backwards-compatible fixes).
inline constexpr int version_patch = ATTEND_VERSION_PATCH;
/// The full version, "MAJOR.MINOR.PATCH".
inline constexpr const char* version_string = ATTEND_VERSION_STRING;

}  // namespace attend

#endif  // ATTEND_VERSION_HPP
