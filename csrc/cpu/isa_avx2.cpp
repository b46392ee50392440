// The range loops compiled for the avx2 instruction set (flags in CMakeLists.txt).
#define FUSEDOPT_ISA_NAME "avx2"
#define FUSEDOPT_ISA_SYMBOL kIsaKernels_avx2
#include "cpu/isa_kernels.inc"
