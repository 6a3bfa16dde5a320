// Helpers shared by the Node-API binding files (addon.cc, bind_*.cc).
#pragma once
#include <napi.h>

#include <stdexcept>
#include <string>

#include "common.h"

namespace mote {

// Device memory owned by a JS object. ptr is null once freed.
struct NativeBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  Device device = Device::CPU;
};

void free_buffer(Napi::Env env, NativeBuffer* b);

// Argument readers: each throws a JS TypeError naming the argument.
NativeBuffer* buffer_arg(const Napi::CallbackInfo& info, size_t i, const char* name, size_t min_bytes);
int int_arg(const Napi::CallbackInfo& info, size_t i, const char* name);
double num_arg(const Napi::CallbackInfo& info, size_t i, const char* name);
bool bool_arg(const Napi::CallbackInfo& info, size_t i, const char* name);

// All buffers of one kernel call must live on the same device; returns it.
Device same_device(std::initializer_list<NativeBuffer*> bufs);

#ifdef MOTE_HAVE_CUDA
void cuda_check(int code, const char* what);
// A CUDA launcher call; without CUDA a CUDA buffer cannot exist, but say so rather than crash.
#define MOTE_CUDA_OR_THROW(call, what) cuda_check(call, what)
#else
#define MOTE_CUDA_OR_THROW(call, what) throw std::invalid_argument(std::string(what) + ": CUDA buffers need an addon built with CUDA")
#endif

// A buffer's data as floats.
inline float* F(NativeBuffer* b) { return static_cast<float*>(b->ptr); }

// Runs fn, turning C++ exceptions into JS exceptions so native code never aborts.
template <typename F>
Napi::Value guarded(const Napi::CallbackInfo& info, F&& fn) {
  try {
    return fn();
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Napi::Error::New(info.Env(), std::string("mote native: ") + e.what());
  }
}

void register_matmul(Napi::Env env, Napi::Object exports);
void register_lora(Napi::Env env, Napi::Object exports);
void register_model(Napi::Env env, Napi::Object exports);
void register_adamw(Napi::Env env, Napi::Object exports);

}  // namespace mote
