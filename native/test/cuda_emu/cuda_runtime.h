// Shim: the CUDA emulator (cuda_emu.h) stands in for <cuda_runtime.h> in mote_cuda_emu_tests.
#pragma once
#include "cuda_emu.h"
