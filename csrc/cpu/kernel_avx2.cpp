// The CPU kernels compiled for one instruction set; CMake sets CPU_CAPABILITY and the flags.
#include "kernels.h"
