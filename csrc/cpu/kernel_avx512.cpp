// The CPU kernels compiled for one instruction set; CMake sets CPU_CAPABILITY and the flags.
#include "masked_dwconv_kernel.h"
