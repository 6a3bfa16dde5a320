#include "runtime.h"

#include <cuda_runtime.h>

#include <cstdlib>
#include <stdexcept>

namespace mote::cuda {

// MOTE_CUDA_SYNC=1: every launch is followed by a device synchronisation, so an asynchronous
// fault is reported at the op that caused it (named) instead of at a later download.
static const bool g_sync_each = [] {
  const char* v = std::getenv("MOTE_CUDA_SYNC");
  return v && v[0] == '1';
}();

void check(int code, const char* what) {
  if (code == 0 && g_sync_each) code = int(cudaDeviceSynchronize());
  if (code != 0) {
    cudaGetLastError();  // clear the sticky non-fatal error so later calls can proceed
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(cudaError_t(code)));
  }
}

DeviceInfo probe() {
  DeviceInfo info;
  cudaRuntimeGetVersion(&info.runtime_version);
  cudaDriverGetVersion(&info.driver_version);
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    info.reason = info.driver_version == 0 ? "no NVIDIA driver found (libcuda is not installed)"
                                           : std::string("no usable CUDA device (") + cudaGetErrorString(e) + ")";
    cudaGetLastError();
    return info;
  }
  if (count == 0) {
    info.reason = "no CUDA device found";
    return info;
  }
  cudaDeviceProp p{};
  e = cudaGetDeviceProperties(&p, 0);
  if (e != cudaSuccess) {
    info.reason = std::string("cannot query CUDA device 0: ") + cudaGetErrorString(e);
    return info;
  }
  info.available = true;
  info.name = p.name;
  info.major = p.major;
  info.minor = p.minor;
  info.sms = p.multiProcessorCount;
  info.total_mem = p.totalGlobalMem;
  return info;
}

void* alloc(size_t bytes) {
  void* p = nullptr;
  check(int(cudaMalloc(&p, bytes ? bytes : 4)), "cudaMalloc");
  return p;
}

void free(void* p) {
  if (p) cudaFree(p);
}

void upload(void* dst, const void* src, size_t bytes) {
  check(int(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice)), "upload");
}
void download(void* dst, const void* src, size_t bytes) {
  check(int(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost)), "download");
}
void memset0(void* dst, size_t bytes) { check(int(cudaMemset(dst, 0, bytes)), "cudaMemset"); }
void synchronize() { check(int(cudaDeviceSynchronize()), "synchronize"); }

}  // namespace mote::cuda
