# ds_add_mpi_test: one GoogleTest binary run under mpiexec at several rank counts.
#
#   include(DeepshardMpiTest)
#   ds_add_mpi_test(NAME comm_mpi_test SOURCES mpi_communicator_test.cc
#                   LIBS deepshard_comm RANKS 2 4 [LABELS mpi] [THREADS 1]
#                   [TIMEOUT 120] [SKIP_RETURN_CODE 77] [ARGS --gtest_filter=...])
#
# Registers one CTest test per rank count, named <NAME>_np<N>, as
#   ${MPIEXEC_EXECUTABLE} --oversubscribe --allow-run-as-root --mca pml ob1
#       --bind-to none -n N <binary> [ARGS]
# with OMP_NUM_THREADS=THREADS (default 1), LABELS (default mpi) and TIMEOUT
# (default 120 s; a hung rank hangs mpirun, so this is the backstop) and
# SKIP_RETURN_CODE (default 77: the exit code when every test was skipped). The binary
# links tests/mpi_gtest_main.cc (MPI_Init, only rank 0 prints the full report,
# failures from other ranks are prefixed with their rank, the exit code is the max
# over ranks), GTest::gtest, GTest::gmock, MPI::MPI_CXX and LIBS.
include_guard(GLOBAL)

function(ds_add_mpi_test)
  cmake_parse_arguments(T "" "NAME;THREADS;TIMEOUT;SKIP_RETURN_CODE" "SOURCES;LIBS;RANKS;LABELS;ARGS" ${ARGN})
  if(NOT TARGET deepshard_mpi_gtest_main)
    add_library(deepshard_mpi_gtest_main STATIC ${PROJECT_SOURCE_DIR}/tests/mpi_gtest_main.cc)
    target_link_libraries(deepshard_mpi_gtest_main PUBLIC GTest::gtest GTest::gmock MPI::MPI_CXX)
  endif()
  if(NOT DEFINED T_THREADS)
    set(T_THREADS 1)
  endif()
  if(NOT DEFINED T_TIMEOUT)
    set(T_TIMEOUT 120)
  endif()
  if(NOT T_LABELS)
    set(T_LABELS mpi)
  endif()
  if(NOT T_RANKS)
    set(T_RANKS 2)
  endif()
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE deepshard_mpi_gtest_main ${T_LIBS})
  target_compile_definitions(${T_NAME} PRIVATE DS_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
                                                DS_BINARY_DIR="${PROJECT_BINARY_DIR}")
  foreach(n IN LISTS T_RANKS)
    set(test_name ${T_NAME}_np${n})
    add_test(NAME ${test_name}
             COMMAND ${MPIEXEC_EXECUTABLE} --oversubscribe --allow-run-as-root --mca pml ob1
                     --bind-to none ${MPIEXEC_NUMPROC_FLAG} ${n} $<TARGET_FILE:${T_NAME}> ${T_ARGS})
    set_tests_properties(${test_name} PROPERTIES
      LABELS "${T_LABELS}"
      ENVIRONMENT "OMP_NUM_THREADS=${T_THREADS}"
      TIMEOUT ${T_TIMEOUT}
      PROCESSORS ${n})
    if(NOT DEFINED T_SKIP_RETURN_CODE)
      set(T_SKIP_RETURN_CODE 77)
    endif()
    set_tests_properties(${test_name} PROPERTIES SKIP_RETURN_CODE ${T_SKIP_RETURN_CODE})
  endforeach()
endfunction()
