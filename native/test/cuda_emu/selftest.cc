// Checks of the CUDA emulator itself (ctest mote_cuda_emu_selftest): shared memory and barriers,
// shuffles, and that each kind of misuse fails with the kernel's name instead of hanging.
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "../../../kernels/cuda/common.cuh"

namespace {

int g_failures = 0;

void report(const std::string& what, bool ok) {
  std::printf("%s  %s\n", what.c_str(), ok ? "ok" : "FAIL");
  if (!ok) g_failures++;
}

// out[block] = Σ in[block·n .. +n) through shared memory and a barrier tree (n = blockDim.x, a power of two)
__global__ void tree_sum(float* out, const float* in) {
  __shared__ float sh[256];
  const int n = blockDim.x, t = threadIdx.x;
  sh[t] = in[blockIdx.x * n + t];
  __syncthreads();
  for (int s = n / 2; s > 0; s >>= 1) {
    if (t < s) sh[t] += sh[t + s];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = sh[0];
}

// every lane gets the sum of the warp (xor butterfly), and lane i reads lane i + 1 (down)
__global__ void shuffles(float* sum, float* down) {
  float v = float(threadIdx.x);
  float s = v;
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  sum[threadIdx.x] = s;
  down[threadIdx.x] = __shfl_down_sync(0xffffffffu, v, 1);
}

__global__ void exit_before_barrier(float* out) {
  if (threadIdx.x == 5) return;
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

__global__ void divergent_barriers(float* out) {
  if (threadIdx.x < 64) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

__global__ void partial_shuffle(float* out) {
  float v = 1.f;
  if (threadIdx.x != 3) v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

// a float4 load one float past a 16-byte boundary
__global__ void misaligned_load(float* out) {
  const float4 v = __ldg(reinterpret_cast<const float4*>(out + 4 * threadIdx.x + 1));
  out[4 * threadIdx.x] = v.x;
}

// reads another thread's shared-memory write with no barrier between
__global__ void missing_barrier(float* out) {
  __shared__ float sh[64];
  sh[threadIdx.x] = float(threadIdx.x);
  out[threadIdx.x] = sh[63 - threadIdx.x];
}

void expect_failure(const char* name, void (*launch)(float*), const char* words) {
  std::vector<float> buf(1024);
  try {
    launch(buf.data());
    report(std::string("emulator: ") + name + " fails", false);
  } catch (const std::exception& ex) {
    const std::string m = ex.what();
    const bool ok = m.find(name) != std::string::npos && m.find(words) != std::string::npos;
    report(std::string("emulator: ") + name + " fails: " + m, ok);
  }
}

}  // namespace

int main() {
  {
    const int blocks = 3, n = 256;
    std::vector<float> in(blocks * n), out(blocks, -1.f);
    for (size_t i = 0; i < in.size(); i++) in[i] = float(i % 7);
    MOTE_LAUNCH(blocks, n, 0, nullptr, tree_sum)(out.data(), in.data());
    bool ok = cudaGetLastError() == cudaSuccess;
    for (int b = 0; b < blocks; b++) {
      float want = 0;
      for (int i = 0; i < n; i++) want += in[b * n + i];
      ok = ok && out[b] == want;
    }
    report("emulator: shared memory and barriers (tree_sum over 3 blocks)", ok);
  }
  {
    std::vector<float> sum(64), down(64);
    MOTE_LAUNCH(1, 64, 0, nullptr, shuffles)(sum.data(), down.data());
    bool ok = true;
    for (int i = 0; i < 64; i++) {
      const int w = i / 32 * 32;
      ok = ok && sum[i] == float(32 * w + 496) && down[i] == float(i % 32 == 31 ? i : i + 1);
    }
    report("emulator: __shfl_xor_sync / __shfl_down_sync in two warps", ok);
  }
  {
    std::vector<float> out(4);
    MOTE_LAUNCH(dim3(1, 70000), 32, 0, nullptr, exit_before_barrier)(out.data());
    const bool e1 = cudaGetLastError() == cudaErrorInvalidConfiguration;
    MOTE_LAUNCH(0, 32, 0, nullptr, exit_before_barrier)(out.data());
    const bool e2 = cudaGetLastError() == cudaErrorInvalidConfiguration;
    MOTE_LAUNCH(1, 2048, 0, nullptr, exit_before_barrier)(out.data());
    const bool e3 = cudaGetLastError() == cudaErrorInvalidConfiguration;
    report("emulator: invalid launch configurations (gridDim.y > 65535, empty grid, 2048 threads) set the error",
           e1 && e2 && e3);
  }
  {
    // the same launch twice: the thread order flips between launches, so the race shows
    std::vector<float> a(64), b(64);
    MOTE_LAUNCH(1, 64, 0, nullptr, missing_barrier)(a.data());
    MOTE_LAUNCH(1, 64, 0, nullptr, missing_barrier)(b.data());
    report("emulator: a missing __syncthreads makes two runs differ", a != b);
  }
  expect_failure(
      "exit_before_barrier",
      [](float* o) {
        MOTE_LAUNCH(2, 128, 0, nullptr, exit_before_barrier)
        (o);
      },
      "never reaches");
  expect_failure(
      "divergent_barriers",
      [](float* o) {
        MOTE_LAUNCH(1, 128, 0, nullptr, divergent_barriers)
        (o);
      },
      "different barriers");
  expect_failure(
      "partial_shuffle",
      [](float* o) {
        MOTE_LAUNCH(1, 32, 0, nullptr, partial_shuffle)
        (o);
      },
      "shuffle");
  expect_failure(
      "misaligned_load",
      [](float* o) {
        MOTE_LAUNCH(1, 32, 0, nullptr, misaligned_load)
        (o);
      },
      "misaligned");
  std::printf("%d failed\n", g_failures);
  return g_failures ? 1 : 0;
}
