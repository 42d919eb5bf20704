# Builds one compile-fail target and checks that it does not compile, for the expected reason.
#
#   cmake -DBUILD_DIR=<attend build dir> -DTARGET=<target> -DEXPECTED=<static_assert text> [-DCONFIG=Release]
#         -P run_compile_fail.cmake
#
# Passes only when the build fails and one line of its output that reports a failed static_assert (GCC: "static
# assertion failed: ...", clang: "static_assert failed ..." or "static assertion failed ...") contains EXPECTED.
cmake_minimum_required(VERSION 3.16)

foreach(_var BUILD_DIR TARGET EXPECTED)
  if(NOT DEFINED ${_var} OR "${${_var}}" STREQUAL "")
    message(FATAL_ERROR "run_compile_fail.cmake: -D${_var}=... is required")
  endif()
endforeach()
set(_config_args "")
if(CONFIG)
  set(_config_args --config "${CONFIG}")
endif()

execute_process(COMMAND "${CMAKE_COMMAND}" --build "${BUILD_DIR}" --target "${TARGET}" ${_config_args}
  RESULT_VARIABLE _rv
  OUTPUT_VARIABLE _out
  ERROR_VARIABLE _out)

if(_rv EQUAL 0)
  message("${_out}")
  message(FATAL_ERROR "${TARGET} compiled (output above), but must not: it must fail with the static_assert "
                      "\"${EXPECTED}\".")
endif()

string(REPLACE ";" "\\;" _lines "${_out}")
string(REPLACE "\n" ";" _lines "${_lines}")
foreach(_line IN LISTS _lines)
  if(_line MATCHES "static.assert(ion)? failed")
    string(FIND "${_line}" "${EXPECTED}" _pos)
    if(NOT _pos EQUAL -1)
      string(STRIP "${_line}" _line)
      message(STATUS "${TARGET} does not compile, as expected: ${_line}")
      return()
    endif()
  endif()
endforeach()
message("${_out}")
message(FATAL_ERROR "${TARGET} failed to compile (output above), but no failed static_assert in the output says "
                    "\"${EXPECTED}\".")
