// Build-check stub, used only by .ci/compile_cuda.sh with a CPU-only torch wheel, which does not ship
// this CMake-generated header. A real CUDA build of torch provides the real one; never put this
// folder on the include path of an actual extension build.
#pragma once
#define C10_CUDA_BUILD_SHARED_LIBS
