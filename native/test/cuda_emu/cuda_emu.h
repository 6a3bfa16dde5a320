// CUDA on the CPU, for the C++ test driver (mote_cuda_emu_tests): the .cu files of kernels/cuda
// compile as C++ against this header (through the cuda_runtime.h / cuda_fp16.h / cuda_bf16.h shims
// next to it) and their launches (MOTE_LAUNCH, kernels/cuda/common.cuh) run here.
//
// What it checks: indexing, reductions, barriers and warp shuffles, launch configurations. Each
// block's threads run as fibers (ucontext) on one OS thread; __syncthreads and __shfl_*_sync are
// switch points, so shared memory and barriers behave as on a GPU: a barrier releases only when
// every thread of the block has reached the same __syncthreads, a shuffle only when every lane of
// the mask has reached it. A barrier or shuffle that some thread never reaches (it exited or waits
// elsewhere) fails the launch with the kernel's name instead of hanging; so does a launch that
// runs longer than MOTE_EMU_TIMEOUT seconds (default 120: an unbounded loop).
// Threads of a block run in turn between switch points, first to last on one launch and last to
// first on the next, so a missing barrier shows as a rerun that differs.
// What it does not check: speed, the memory model (blocks run one after another, so races
// between blocks go unseen; neither order of threads is that of a GPU), float
// rounding of --use_fast_math intrinsics (they are the exact libm functions here), alignment
// of vector loads and stores through plain pointers (those through __ldg are checked). Device
// pointers are host pointers.
#pragma once
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#define MOTE_CUDA_EMU 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One copy per OS thread; the emulator runs a block's fibers on one OS thread, one block at a time.
#define __shared__ static thread_local

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

// ---- runtime API subset ------------------------------------------------------

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorNoDevice = 100,
  cudaErrorLaunchFailure = 719,
  cudaErrorNotSupported = 801,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
typedef struct CUstream_st* cudaStream_t;
struct cudaDeviceProp {
  char name[256];
  int major, minor, multiProcessorCount;
  size_t totalGlobalMem;
};

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaDriverGetVersion(int* v);
cudaError_t cudaRuntimeGetVersion(int* v);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device);
cudaError_t cudaMalloc(void** p, size_t bytes);
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t s);
cudaError_t cudaFreeAsync(void* p, cudaStream_t s);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s = nullptr);
cudaError_t cudaMemset(void* dst, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t s = nullptr);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaStreamSynchronize(cudaStream_t s);

// ---- the emulator ------------------------------------------------------------

namespace mote_emu {

struct Thread {  // what a running fiber sees
  uint3 idx;
};
struct Block {
  uint3 idx;
  dim3 dim, grid;
  unsigned char* dynamic_shared;
};
extern thread_local Thread* g_thread;
extern thread_local Block* g_block;

// Runs body once per thread of every block; throws std::runtime_error naming the kernel on a
// deadlock, a bad shuffle or a timeout. A bad configuration sets the sticky error instead (as a
// real launch does) and runs nothing.
void run_grid(const char* kernel, dim3 grid, dim3 block, size_t shmem, void (*body)(void*), void* ctx);

void syncthreads(const char* file, int line);
// kind 0: xor, 1: down, 2: up, 3: idx. Exchanges 8 bytes between the lanes of `mask`.
uint64_t shuffle(const char* file, int line, int kind, unsigned mask, uint64_t value, int arg, int width);

template <typename T>
T shfl_at(const char* file, int line, int kind, unsigned mask, T v, int arg, int width = 32) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a value wider than 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  u = shuffle(file, line, kind, mask, u, arg, width);
  std::memcpy(&v, &u, sizeof(T));
  return v;
}

template <typename... P>
struct Launcher {
  const char* name;
  dim3 grid, block;
  size_t shmem;
  void (*kernel)(P...);
  template <typename... A>
  void operator()(A&&... args) const {
    struct Ctx {
      void (*kernel)(P...);
      std::tuple<std::decay_t<P>...> args;
    } ctx{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
    // every thread gets its own copy of the arguments, as every GPU thread does
    run_grid(
        name, grid, block, shmem,
        [](void* c) {
          Ctx* x = static_cast<Ctx*>(c);
          std::tuple<std::decay_t<P>...> own = x->args;
          std::apply(x->kernel, own);
        },
        &ctx);
  }
};
template <typename... P>
Launcher<P...> launcher(const char* name, dim3 grid, dim3 block, size_t shmem, cudaStream_t, void (*kernel)(P...)) {
  return Launcher<P...>{name, grid, block, shmem, kernel};
}

template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(g_block->dynamic_shared);
}

}  // namespace mote_emu

#define threadIdx (::mote_emu::g_thread->idx)
#define blockIdx (::mote_emu::g_block->idx)
#define blockDim (::mote_emu::g_block->dim)
#define gridDim (::mote_emu::g_block->grid)
#define warpSize 32
#define __syncthreads() ::mote_emu::syncthreads(__FILE__, __LINE__)

// Macros, so that a shuffle knows its source line (lanes of a warp must meet at the same one).
#define __shfl_xor_sync(...) ::mote_emu::shfl_at(__FILE__, __LINE__, 0, __VA_ARGS__)
#define __shfl_down_sync(...) ::mote_emu::shfl_at(__FILE__, __LINE__, 1, __VA_ARGS__)
#define __shfl_up_sync(...) ::mote_emu::shfl_at(__FILE__, __LINE__, 2, __VA_ARGS__)
#define __shfl_sync(...) ::mote_emu::shfl_at(__FILE__, __LINE__, 3, __VA_ARGS__)

// ---- device functions --------------------------------------------------------

// A GPU load of a vector type (float2/float4/uint2/uint4) needs an address aligned to its size
// ("misaligned address" on a GPU); x86 would load it anyway, so the emulator checks.
template <typename T>
inline T __ldg(const T* p) {
  if (sizeof(T) > 4 && reinterpret_cast<uintptr_t>(p) % sizeof(T) != 0)
    throw std::runtime_error("misaligned __ldg: a " + std::to_string(sizeof(T)) + "-byte load from an address " +
                             std::to_string(reinterpret_cast<uintptr_t>(p) % sizeof(T)) + " bytes past alignment");
  return *p;
}

template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) {
  return b < a ? std::common_type_t<A, B>(b) : std::common_type_t<A, B>(a);
}
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) {
  return a < b ? std::common_type_t<A, B>(b) : std::common_type_t<A, B>(a);
}

template <typename To, typename From>
inline To mote_emu_bits(From f) {
  static_assert(sizeof(To) == sizeof(From), "bit cast of different sizes");
  To t;
  std::memcpy(&t, &f, sizeof t);
  return t;
}
inline float __int_as_float(int i) { return mote_emu_bits<float>(i); }
inline float __uint_as_float(unsigned u) { return mote_emu_bits<float>(u); }
inline int __float_as_int(float f) { return mote_emu_bits<int>(f); }
inline unsigned __float_as_uint(float f) { return mote_emu_bits<unsigned>(f); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.f / a; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline float __expf(float a) { return expf(a); }
inline float __logf(float a) { return logf(a); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float a) { return 1.f / sqrtf(a); }

// ---- f16 / bf16 --------------------------------------------------------------

struct __half {
  uint16_t x;
};
struct __nv_bfloat16 {
  uint16_t x;
};
inline float __half2float(__half h) {
  const uint32_t sign = uint32_t(h.x & 0x8000u) << 16, e = (h.x >> 10) & 0x1fu, m = h.x & 0x3ffu;
  if (e == 0x1f) return __uint_as_float(sign | 0x7f800000u | (m << 13));  // inf / nan
  if (e == 0) {                                                           // zero / subnormal
    const float f = float(m) * 5.9604644775390625e-8f;                    // m · 2^-24, exact
    return sign ? -f : f;
  }
  return __uint_as_float(sign | ((e + 112u) << 23) | (m << 13));
}
inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline unsigned short __half_as_ushort(__half h) { return h.x; }
inline float __bfloat162float(__nv_bfloat16 b) { return __uint_as_float(uint32_t(b.x) << 16); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16{u}; }
