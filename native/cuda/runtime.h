// CUDA host side: device discovery, memory, copies and error handling.
// Every function throws std::runtime_error carrying CUDA's own message instead of aborting.
#pragma once
#include <cstddef>
#include <string>

namespace mote::cuda {

struct DeviceInfo {
  bool available = false;
  std::string reason;  // why not, when unavailable
  std::string name;
  int device = 0, major = 0, minor = 0, sms = 0;
  size_t total_mem = 0;
  int runtime_version = 0, driver_version = 0;
};

DeviceInfo probe();
void* alloc(size_t bytes);
void free(void* p);
void upload(void* dst, const void* src, size_t bytes);
void download(void* dst, const void* src, size_t bytes);
void memset0(void* dst, size_t bytes);
void synchronize();
// Throws with the kernel's name when a launcher returned a CUDA error code.
void check(int code, const char* what);

}  // namespace mote::cuda
