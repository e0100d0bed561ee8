# Runs one command line and checks how it ended (ctest: cmake -DCMD=prog|arg|arg -DSTATUS=2 -DMATCH=regex -P this):
# the exit status must be exactly STATUS (a signal is reported by CMake as a string, never a number,
# so it always fails here) and stderr must match MATCH (the message names the argument).
string(REPLACE "|" ";" CMD "${CMD}")
execute_process(COMMAND ${CMD} RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 120)
if(NOT "${status}" STREQUAL "${STATUS}")
  message(FATAL_ERROR "expected exit status ${STATUS}, got '${status}'\ncommand: ${CMD}\nstderr:\n${err}\nstdout:\n${out}")
endif()
if(DEFINED MATCH AND NOT "${err}" MATCHES "${MATCH}")
  message(FATAL_ERROR "stderr does not match '${MATCH}'\ncommand: ${CMD}\nstderr:\n${err}")
endif()
