# Builds and runs tests/consumer against attend, as a downstream project would.
#
#   cmake -DMODE=package|buildtree|subdirectory|fetchcontent -DATTEND_SOURCE_DIR=... -DATTEND_BINARY_DIR=...
#         -DCONSUMER_SOURCE_DIR=... -DWORK_DIR=... [-DCONFIG=Release] [-DGENERATOR=...]
#         [-DCXX_COMPILER=...] [-DUSE_OPENMP=ON] -P run_consumer.cmake
#
# package:      cmake --install <ATTEND_BINARY_DIR> --prefix <WORK_DIR>/prefix, then find_package(attend)
#               with CMAKE_PREFIX_PATH=<WORK_DIR>/prefix.
# buildtree:    find_package(attend) with attend_DIR=<ATTEND_BINARY_DIR> (no install).
# subdirectory: add_subdirectory(<ATTEND_SOURCE_DIR>); fetchcontent: FetchContent from the source tree.
# Any failing step stops the script with that step's output.
cmake_minimum_required(VERSION 3.16)

foreach(_var MODE ATTEND_SOURCE_DIR ATTEND_BINARY_DIR CONSUMER_SOURCE_DIR WORK_DIR)
  if(NOT DEFINED ${_var} OR "${${_var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: -D${_var}=... is required")
  endif()
endforeach()
if(NOT CONFIG)
  set(CONFIG Release)
endif()

function(run_step name)
  string(REPLACE ";" " " _printable "${ARGN}")
  message(STATUS "[${MODE}] ${name}: ${_printable}")
  execute_process(COMMAND ${ARGN}
    RESULT_VARIABLE _rv
    OUTPUT_VARIABLE _out
    ERROR_VARIABLE _out)
  if(NOT _rv EQUAL 0)
    message(FATAL_ERROR "[${MODE}] ${name} failed (${_rv}):\n  ${_printable}\n${_out}")
  endif()
  set(STEP_OUTPUT "${_out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
set(_build "${WORK_DIR}/build")

set(_configure "${CMAKE_COMMAND}" -S "${CONSUMER_SOURCE_DIR}" -B "${_build}"
    "-DCMAKE_BUILD_TYPE=${CONFIG}"
    "-DATTEND_CONSUMER_MODE=${MODE}"
    -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON)
if(GENERATOR)
  list(APPEND _configure -G "${GENERATOR}")
endif()
if(CXX_COMPILER)
  list(APPEND _configure "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()

if(MODE STREQUAL "package")
  set(_prefix "${WORK_DIR}/prefix")
  run_step("install" "${CMAKE_COMMAND}" --install "${ATTEND_BINARY_DIR}" --prefix "${_prefix}" --config "${CONFIG}")
  foreach(_f include/attend/attend.hpp include/attend/version.hpp)
    if(NOT EXISTS "${_prefix}/${_f}")
      message(FATAL_ERROR "[package] ${_f} was not installed under ${_prefix}")
    endif()
  endforeach()
  list(APPEND _configure "-DCMAKE_PREFIX_PATH=${_prefix}" "-DATTEND_EXPECTED_PREFIX=${_prefix}")
elseif(MODE STREQUAL "buildtree")
  list(APPEND _configure "-Dattend_DIR=${ATTEND_BINARY_DIR}" "-DATTEND_EXPECTED_PREFIX=${ATTEND_BINARY_DIR}")
elseif(MODE STREQUAL "subdirectory" OR MODE STREQUAL "fetchcontent")
  list(APPEND _configure "-DATTEND_SOURCE_DIR=${ATTEND_SOURCE_DIR}")
  if(DEFINED USE_OPENMP AND NOT USE_OPENMP STREQUAL "")
    list(APPEND _configure "-DATTEND_USE_OPENMP=${USE_OPENMP}")
  endif()
else()
  message(FATAL_ERROR "run_consumer.cmake: unknown MODE '${MODE}'")
endif()

run_step("configure" ${_configure})
message("${STEP_OUTPUT}")
run_step("build" "${CMAKE_COMMAND}" --build "${_build}" --config "${CONFIG}")
run_step("run" "${_build}/bin/attend_consumer")
message("${STEP_OUTPUT}")
message(STATUS "[${MODE}] consumer built and ran OK")
