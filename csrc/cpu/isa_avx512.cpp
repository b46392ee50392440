// The range loops compiled for the avx512 instruction set (flags in CMakeLists.txt).
#define FUSEDOPT_ISA_NAME "avx512"
#define FUSEDOPT_ISA_SYMBOL kIsaKernels_avx512
#include "cpu/isa_kernels.inc"
