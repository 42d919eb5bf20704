# Runs a libFuzzer binary for a fixed number of iterations from a fresh copy of the seed corpus, so the test
# never writes into the source tree and every run starts from the same inputs.
#
#   cmake -DFUZZER=<binary> -DCORPUS=<seed dir> -DWORK_DIR=<scratch dir> -DRUNS=<n> [-DSEED=<n>] -P run_fuzzer.cmake
cmake_minimum_required(VERSION 3.16)
foreach(_var FUZZER CORPUS WORK_DIR RUNS)
  if(NOT DEFINED ${_var} OR "${${_var}}" STREQUAL "")
    message(FATAL_ERROR "run_fuzzer.cmake: -D${_var}=... is required")
  endif()
endforeach()
if(NOT DEFINED SEED)
  set(SEED 1)
endif()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}/corpus" "${WORK_DIR}/artifacts")
file(GLOB _seeds "${CORPUS}/*")
file(COPY ${_seeds} DESTINATION "${WORK_DIR}/corpus")

execute_process(
  COMMAND "${FUZZER}" -runs=${RUNS} -seed=${SEED} -max_len=4096 -timeout=60 -rss_limit_mb=4096
          -print_final_stats=1 "-artifact_prefix=${WORK_DIR}/artifacts/" "${WORK_DIR}/corpus"
  RESULT_VARIABLE _rv)
if(NOT _rv EQUAL 0)
  file(GLOB _crashes "${WORK_DIR}/artifacts/*")
  message(FATAL_ERROR "${FUZZER} failed (${_rv}); reproducer(s): ${_crashes}\n"
                      "rerun one with: ${FUZZER} <file>")
endif()
