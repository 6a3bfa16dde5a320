// Helpers shared by the Node-API binding files (addon.cc, bind_*.cc).
#pragma once
#include <napi.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"

namespace mote {

// Device memory owned by a JS object. ptr is null once freed.
struct NativeBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  Device device = Device::CPU;
};

void free_buffer(Napi::Env env, NativeBuffer* b);

// Argument readers: each throws a JS TypeError (wrong type, missing) or RangeError (bad
// value) naming the argument. Every number is checked as a double before any cast, so NaN,
// ±inf, fractions and values past the target type never reach C++ arithmetic.
constexpr double kMaxSafeInt = 9007199254740991.0;  // 2^53 − 1: larger doubles skip integers
constexpr int kMaxInt = 2147483647;

std::string num_str(double d);
NativeBuffer* buffer_arg(const Napi::CallbackInfo& info, size_t i, const char* name, size_t min_bytes);
double num_arg(const Napi::CallbackInfo& info, size_t i, const char* name);
bool bool_arg(const Napi::CallbackInfo& info, size_t i, const char* name);
// An integer in [lo, hi] (bounds within ±2^53).
int64_t integer_arg(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t lo, int64_t hi);
// A 32-bit integer (dims, dtype codes, counts the kernels take as int) in [lo, hi].
int index_arg(const Napi::CallbackInfo& info, size_t i, const char* name, int lo = 0, int hi = kMaxInt);
int int_arg(const Napi::CallbackInfo& info, size_t i, const char* name);  // any 32-bit integer
// An element count or byte size: an integer in [0, 2^53).
size_t size_arg(const Napi::CallbackInfo& info, size_t i, const char* name);
// A byte offset into a buffer: an integer in [0, 2^53).
size_t offset_arg(const Napi::CallbackInfo& info, size_t i, const char* name);

// The same checks for fields of an object argument (named "args.<name>").
int field_int(Napi::Env env, const Napi::Object& o, const char* name, int lo, int hi = kMaxInt);
NativeBuffer* field_buffer(Napi::Env env, const Napi::Object& o, const char* name, size_t min_bytes);

// The byte size dims × element size of buffer `what`; a RangeError naming it when the
// product passes 2^53 (it would wrap in size_t and let a small buffer pass the size check).
size_t bytes_of(Napi::Env env, const char* what, std::initializer_list<size_t> factors);

// A positional buffer of at least bytes_of(name, factors) bytes: the usual size check.
inline NativeBuffer* sized_arg(const Napi::CallbackInfo& info, size_t i, const char* name,
                               std::initializer_list<size_t> factors) {
  return buffer_arg(info, i, name, bytes_of(info.Env(), name, factors));
}

// All buffers of one kernel call must live on the same device; returns it.
Device same_device(std::initializer_list<NativeBuffer*> bufs);

// Collects the buffers of a call whose arguments come in an object (args.<name>) and then in
// positions, so that one device check covers them all.
struct Collector {
  std::vector<NativeBuffer*> bufs;
  NativeBuffer* field(Napi::Env env, const Napi::Object& o, const char* name, size_t min_bytes) {
    return keep(field_buffer(env, o, name, min_bytes));
  }
  NativeBuffer* arg(const Napi::CallbackInfo& info, size_t i, const char* name, size_t min_bytes) {
    return keep(buffer_arg(info, i, name, min_bytes));
  }
  // the device of every collected buffer (throws when they differ)
  Device device() const;

 private:
  NativeBuffer* keep(NativeBuffer* b) {
    bufs.push_back(b);
    return b;
  }
};

#ifdef MOTE_HAVE_CUDA
void cuda_check(int code, const char* what);
// A CUDA launcher call; without CUDA a CUDA buffer cannot exist, but say so rather than crash.
#define MOTE_CUDA_OR_THROW(call, what) cuda_check(call, what)
#else
#define MOTE_CUDA_OR_THROW(call, what) \
  throw std::invalid_argument(std::string(what) + ": CUDA buffers need an addon built with CUDA")
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
