# CMake toolchain file: cross build for 64-bit Arm Linux (aarch64) on an
# x86-64 Debian/Ubuntu host with gcc-aarch64-linux-gnu and an arm64 sysroot
# (scripts/test-aarch64.sh makes one; docs/arm.md).
#   cmake -S . -B build/aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake \
#         -DLOWBIT_ARM_SYSROOT=/path/to/sysroot -Dpybind11_DIR=$(python3 -m pybind11 --cmakedir)
# The sysroot must hold the target's CPython headers and libstdc++; FindPython
# is pointed at them here, and is never asked to run the target interpreter.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

if(NOT LOWBIT_ARM_SYSROOT AND DEFINED ENV{LOWBIT_ARM_SYSROOT})
  set(LOWBIT_ARM_SYSROOT "$ENV{LOWBIT_ARM_SYSROOT}")
endif()
if(NOT LOWBIT_ARM_SYSROOT)
  message(FATAL_ERROR "aarch64 cross build: set LOWBIT_ARM_SYSROOT (cache variable or environment) to an arm64 sysroot")
endif()
set(LOWBIT_ARM_SYSROOT "${LOWBIT_ARM_SYSROOT}" CACHE PATH "arm64 sysroot with CPython headers")
# try_compile projects re-read this file: hand them the sysroot too
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES LOWBIT_ARM_SYSROOT)

set(CMAKE_SYSROOT "${LOWBIT_ARM_SYSROOT}")
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)

# The target CPython (3.11 in Debian 12's arm64 packages unless told otherwise)
if(NOT LOWBIT_ARM_PYTHON_VERSION)
  set(LOWBIT_ARM_PYTHON_VERSION "3.11")
endif()
set(_pyver "${LOWBIT_ARM_PYTHON_VERSION}")
string(REPLACE "." "" _pyver_nodot "${_pyver}")
set(Python_INCLUDE_DIR "${LOWBIT_ARM_SYSROOT}/usr/include/python${_pyver}" CACHE PATH "")
set(Python_LIBRARY "${LOWBIT_ARM_SYSROOT}/usr/lib/aarch64-linux-gnu/libpython${_pyver}.so" CACHE FILEPATH "")
set(Python_SOABI "cpython-${_pyver_nodot}-aarch64-linux-gnu" CACHE STRING "")
# pybind11 >= 2.13: find Python without running an interpreter
set(PYBIND11_USE_CROSSCOMPILING ON CACHE BOOL "")
