// Shared by the kernel files of kernels/cuda.
#pragma once
#include <cuda_runtime.h>

// MOTE_LAUNCH(grid, block, shmem, stream, kernel)(args...) is kernel<<<grid, block, shmem, stream>>>(args...)
// under nvcc; the C++ test driver's CUDA emulator (native/test/cuda_emu) runs the same launch on
// the CPU. The kernel comes last so that a template's commas need no parentheses.
#ifdef MOTE_CUDA_EMU
#define MOTE_LAUNCH(grid, block, shmem, stream, ...) ::mote_emu::launcher(#__VA_ARGS__, grid, block, shmem, stream, __VA_ARGS__)
// dynamic shared memory of the running block
#define MOTE_DYNAMIC_SHARED(T, name) T* const name = ::mote_emu::dynamic_shared<T>()
#else
#define MOTE_LAUNCH(grid, block, shmem, stream, ...) __VA_ARGS__<<<grid, block, shmem, stream>>>
#define MOTE_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif
