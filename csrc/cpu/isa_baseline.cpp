// The range loops compiled for the baseline instruction set (flags in CMakeLists.txt).
#define FUSEDOPT_ISA_NAME "baseline"
#define FUSEDOPT_ISA_SYMBOL kIsaKernels_baseline
#include "cpu/isa_kernels.inc"
