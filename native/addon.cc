// Node-API entry: buffers, device info, threads. Kernel bindings live in bind_<family>.cc.
#include <napi.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>
#include <utility>
#include <vector>
#ifndef _WIN32
#include <fcntl.h>
#include <unistd.h>
#endif

#include "bind.h"
#include "cpu/kernels.h"
#include "cpu/threads.h"
#ifdef MOTE_HAVE_CUDA
#include "cuda/runtime.h"
#include "../kernels/cuda/kernels.h"
#endif

namespace mote {

// Freed host buffers of ≥ 1 MiB kept for reuse by exact size: a training step allocates the same
// large temporaries (logits, their gradient, activations) every step, and a fresh aligned_alloc of
// that size is an mmap whose pages fault in (and are zeroed by the kernel) again each time. At
// most MOTE_HOST_CACHE_MB (default 256) are held, oldest released first. Buffers are only ever
// touched on the JS thread (allocs, frees and finalizers), so no lock.
struct HostCache {
  std::vector<std::pair<size_t, void*>> held;  // oldest first
  size_t bytes = 0, cap = 0;
  bool init = false;
  size_t limit() {
    if (!init) {
      init = true;
      const char* e = std::getenv("MOTE_HOST_CACHE_MB");
      const long mb = e ? std::strtol(e, nullptr, 10) : 256;
      cap = mb > 0 ? size_t(mb) << 20 : 0;
    }
    return cap;
  }
  void* take(size_t sz) {
    for (size_t i = held.size(); i-- > 0;)
      if (held[i].first == sz) {
        void* p = held[i].second;
        held.erase(held.begin() + ptrdiff_t(i));
        bytes -= sz;
        return p;
      }
    return nullptr;
  }
  void give(size_t sz, void* p) {
    if (sz < (size_t(1) << 20) || sz > limit()) {
      std::free(p);
      return;
    }
    held.push_back({sz, p});
    bytes += sz;
    while (bytes > limit()) {
      std::free(held.front().second);
      bytes -= held.front().first;
      held.erase(held.begin());
    }
  }
} host_cache;

size_t host_alloc_size(size_t bytes) { return bytes ? (bytes + 63) / 64 * 64 : 64; }

void free_buffer(Napi::Env env, NativeBuffer* b) {
  if (!b->ptr) return;
  if (b->device == Device::CPU) {
    host_cache.give(host_alloc_size(b->bytes), b->ptr);
  } else {
#ifdef MOTE_HAVE_CUDA
    cuda::free(b->ptr);
#endif
  }
  Napi::MemoryManagement::AdjustExternalMemory(env, -int64_t(b->bytes));
  b->ptr = nullptr;
}

std::string num_str(double d) {
  char b[32];
  std::snprintf(b, sizeof b, "%.17g", d);
  return b;
}

NativeBuffer* buffer_arg(const Napi::CallbackInfo& info, size_t i, const char* name, size_t min_bytes) {
  if (i >= info.Length() || !info[i].IsExternal())
    throw Napi::TypeError::New(info.Env(), std::string(name) + ": expected a native buffer");
  auto* b = info[i].As<Napi::External<NativeBuffer>>().Data();
  if (!b->ptr) throw Napi::Error::New(info.Env(), std::string(name) + ": buffer was already freed");
  if (b->bytes < min_bytes)
    throw Napi::RangeError::New(info.Env(), std::string(name) + ": buffer holds " + std::to_string(b->bytes) +
                                                " bytes, kernel needs " + std::to_string(min_bytes));
  return b;
}

double num_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (i >= info.Length() || !info[i].IsNumber())
    throw Napi::TypeError::New(info.Env(), std::string(name) + ": expected a number");
  return info[i].As<Napi::Number>().DoubleValue();
}

namespace {
// d is an integer in [lo, hi]: the range test comes first, so NaN and ±inf fail it before the floor.
bool integer_in(double d, int64_t lo, int64_t hi) { return d >= double(lo) && d <= double(hi) && d == std::floor(d); }

std::string range_str(int64_t lo, int64_t hi) { return "[" + std::to_string(lo) + ", " + std::to_string(hi) + "]"; }
}  // namespace

int64_t integer_arg(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t lo, int64_t hi) {
  if (i >= info.Length() || !info[i].IsNumber())
    throw Napi::TypeError::New(info.Env(), std::string(name) + ": expected an integer");
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!integer_in(d, lo, hi))
    throw Napi::RangeError::New(
        info.Env(), std::string(name) + ": expected an integer in " + range_str(lo, hi) + ", got " + num_str(d));
  return int64_t(d);
}

int index_arg(const Napi::CallbackInfo& info, size_t i, const char* name, int lo, int hi) {
  return int(integer_arg(info, i, name, lo, hi));
}

int int_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return index_arg(info, i, name, -kMaxInt - 1, kMaxInt);
}

size_t size_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return size_t(integer_arg(info, i, name, 0, int64_t(kMaxSafeInt)));
}

size_t offset_arg(const Napi::CallbackInfo& info, size_t i, const char* name) { return size_arg(info, i, name); }

int field_int(Napi::Env env, const Napi::Object& o, const char* name, int lo, int hi) {
  Napi::Value v = o.Get(name);
  if (!v.IsNumber()) throw Napi::TypeError::New(env, std::string("args.") + name + ": expected an integer");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!integer_in(d, lo, hi))
    throw Napi::RangeError::New(
        env, std::string("args.") + name + ": expected an integer in " + range_str(lo, hi) + ", got " + num_str(d));
  return int(d);
}

NativeBuffer* field_buffer(Napi::Env env, const Napi::Object& o, const char* name, size_t min_bytes) {
  Napi::Value v = o.Get(name);
  if (!v.IsExternal()) throw Napi::TypeError::New(env, std::string("args.") + name + ": expected a native buffer");
  auto* b = v.As<Napi::External<NativeBuffer>>().Data();
  if (!b->ptr) throw Napi::Error::New(env, std::string("args.") + name + ": buffer was already freed");
  if (b->bytes < min_bytes)
    throw Napi::RangeError::New(env, std::string("args.") + name + ": buffer holds " + std::to_string(b->bytes) +
                                         " bytes, kernel needs " + std::to_string(min_bytes));
  return b;
}

size_t bytes_of(Napi::Env env, const char* what, std::initializer_list<size_t> factors) {
  const size_t cap = size_t(kMaxSafeInt);
  size_t p = 1;
  for (size_t f : factors) {
    if (f != 0 && p > cap / f)
      throw Napi::RangeError::New(env, std::string(what) + ": its dims give a byte size past 2^53");
    p *= f;
  }
  return p;
}

bool bool_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (i >= info.Length() || !info[i].IsBoolean())
    throw Napi::TypeError::New(info.Env(), std::string(name) + ": expected a boolean");
  return info[i].As<Napi::Boolean>().Value();
}

namespace {
Device common_device(NativeBuffer* const* b, size_t n) {
  const Device d = b[0]->device;
  for (size_t i = 1; i < n; i++)
    if (b[i]->device != d) throw std::invalid_argument("buffers of one kernel call live on different devices");
  return d;
}
}  // namespace

Device same_device(std::initializer_list<NativeBuffer*> bufs) { return common_device(bufs.begin(), bufs.size()); }
Device Collector::device() const { return common_device(bufs.data(), bufs.size()); }

#ifdef MOTE_HAVE_CUDA
void cuda_check(int code, const char* what) { cuda::check(code, what); }
#endif

namespace {

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto p = line.find(':');
      if (p != std::string::npos) return line.substr(p + 2);
    }
  }
  return "unknown CPU";
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto out = Napi::Object::New(env);
  auto cpu = Napi::Object::New(env);
  cpu.Set("model", cpu_model());
  cpu.Set("threads", cpu::num_threads());
  cpu.Set("hardwareThreads", double(std::thread::hardware_concurrency()));
  auto feats = Napi::Array::New(env);
  uint32_t nf = 0;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) feats.Set(nf++, "avx2");
  if (__builtin_cpu_supports("fma")) feats.Set(nf++, "fma");
  if (__builtin_cpu_supports("avx512f")) feats.Set(nf++, "avx512f");
#endif
  // f32 base matmuls with ≥ 16 rows go through cblas_sgemm when OpenBLAS was found at load
  if (cpu::blas_loaded()) feats.Set(nf++, "openblas");
  cpu.Set("features", feats);
  cpu.Set("simd", cpu::simd_variant());  // kernels' SIMD level (native/cpu/dispatch.cc)
  out.Set("cpu", cpu);
  auto cu = Napi::Object::New(env);
#ifdef MOTE_HAVE_CUDA
  cu.Set("built", true);
  auto d = cuda::probe();
  cu.Set("available", d.available);
  cu.Set("reason", d.reason);
  cu.Set("name", d.name);
  cu.Set("computeCapability", std::to_string(d.major) + "." + std::to_string(d.minor));
  cu.Set("multiprocessors", d.sms);
  cu.Set("memoryBytes", double(d.total_mem));
  cu.Set("runtimeVersion", d.runtime_version);
  cu.Set("driverVersion", d.driver_version);
#else
  cu.Set("built", false);
  cu.Set("available", false);
  cu.Set("reason", "the native addon was built without CUDA (nvcc not found at build time, or MOTE_CUDA=0)");
#endif
  out.Set("cuda", cu);
  return out;
}

Napi::Value Alloc(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    int dev = index_arg(info, 0, "device", 0, 1);
    size_t bytes = size_arg(info, 1, "bytes");
    auto* b = new NativeBuffer();
    b->bytes = bytes;
    if (dev == int(Device::CPU)) {
      const size_t sz = host_alloc_size(b->bytes);
      b->ptr = host_cache.take(sz);
      if (!b->ptr) b->ptr = std::aligned_alloc(64, sz);
      if (!b->ptr) {
        delete b;
        throw Napi::Error::New(env, "out of host memory allocating " + std::to_string(bytes) + " bytes");
      }
      b->device = Device::CPU;
    } else {
#ifdef MOTE_HAVE_CUDA
      try {
        b->ptr = cuda::alloc(b->bytes);
      } catch (...) {
        delete b;
        throw;
      }
      b->device = Device::CUDA;
#else
      delete b;
      throw Napi::Error::New(env, "device: CUDA buffers need an addon built with CUDA");
#endif
    }
    Napi::MemoryManagement::AdjustExternalMemory(env, int64_t(b->bytes));
    return Napi::External<NativeBuffer>::New(env, b, [](Napi::Env env, NativeBuffer* b) {
      free_buffer(env, b);
      delete b;
    });
  });
}

Napi::Value Free(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsExternal())
    throw Napi::TypeError::New(info.Env(), "buffer: expected a native buffer");
  free_buffer(info.Env(), info[0].As<Napi::External<NativeBuffer>>().Data());
  return info.Env().Undefined();
}

// write(buffer, Uint8Array, byteOffset) and read(buffer, Uint8Array, byteOffset): no copies on the JS side.
Napi::Value Transfer(const Napi::CallbackInfo& info, bool toDevice) {
  return guarded(info, [&]() -> Napi::Value {
    if (info.Length() < 2 || !info[1].IsTypedArray())
      throw Napi::TypeError::New(info.Env(), "data: expected a Uint8Array");
    auto arr = info[1].As<Napi::TypedArray>();
    // an absent offset is 0; a present one must be a valid offset (undefined counts as absent)
    size_t off = info.Length() > 2 && !info[2].IsUndefined() ? offset_arg(info, 2, "byteOffset") : 0;
    NativeBuffer* b = buffer_arg(info, 0, "buffer", off + arr.ByteLength());
    uint8_t* host = static_cast<uint8_t*>(arr.ArrayBuffer().Data()) + arr.ByteOffset();
    uint8_t* dev = static_cast<uint8_t*>(b->ptr) + off;
    if (b->device == Device::CPU) {
      if (toDevice)
        std::memcpy(dev, host, arr.ByteLength());
      else
        std::memcpy(host, dev, arr.ByteLength());
    } else {
#ifdef MOTE_HAVE_CUDA
      if (toDevice)
        cuda::upload(dev, host, arr.ByteLength());
      else
        cuda::download(host, dev, arr.ByteLength());
#endif
    }
    return info.Env().Undefined();
  });
}

Napi::Value Write(const Napi::CallbackInfo& info) { return Transfer(info, true); }
Napi::Value Read(const Napi::CallbackInfo& info) { return Transfer(info, false); }

Napi::Value Sync(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
#ifdef MOTE_HAVE_CUDA
    if (index_arg(info, 0, "device", 0, 1) == int(Device::CUDA)) cuda::synchronize();
#else
    index_arg(info, 0, "device", 0, 1);
#endif
    return info.Env().Undefined();
  });
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    int n = index_arg(info, 0, "threads", 1, 4096);
    cpu::set_num_threads(n);
    return info.Env().Undefined();
  });
}

Napi::Value Copy(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const size_t n = size_arg(info, 2, "n");
    auto* d = buffer_arg(info, 0, "dst", bytes_of(info.Env(), "dst", {n, 4}));
    auto* s = buffer_arg(info, 1, "src", bytes_of(info.Env(), "src", {n, 4}));
    if (same_device({d, s}) == Device::CPU) {
      cpu::copy(static_cast<float*>(d->ptr), static_cast<const float*>(s->ptr), int64_t(n));
    } else {
#ifdef MOTE_HAVE_CUDA
      cuda_check(mote_cuda_copy(static_cast<float*>(d->ptr), static_cast<const float*>(s->ptr), int64_t(n), nullptr),
                 "copy");
#endif
    }
    return info.Env().Undefined();
  });
}

// quietStderr(on): points fd 2 at /dev/null (on) or back (off). Dawn prints its own warnings
// ("maxDynamic… artificially reduced") straight to fd 2 when an adapter is created; mote's
// webgpu host silences them around that call unless MOTE_DEBUG is set. No-op on Windows.
static int g_saved_stderr = -1;
Napi::Value QuietStderr(const Napi::CallbackInfo& info) {
#ifndef _WIN32
  const bool on = info.Length() > 0 && info[0].ToBoolean().Value();
  std::fflush(stderr);
  if (on && g_saved_stderr < 0) {
    const int null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (null_fd >= 0) {
      g_saved_stderr = dup(2);
      if (g_saved_stderr >= 0) dup2(null_fd, 2);
      close(null_fd);
    }
  } else if (!on && g_saved_stderr >= 0) {
    dup2(g_saved_stderr, 2);
    close(g_saved_stderr);
    g_saved_stderr = -1;
  }
#endif
  return info.Env().Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("info", Napi::Function::New(env, Info));
  exports.Set("alloc", Napi::Function::New(env, Alloc));
  exports.Set("free", Napi::Function::New(env, Free));
  exports.Set("write", Napi::Function::New(env, Write));
  exports.Set("read", Napi::Function::New(env, Read));
  exports.Set("sync", Napi::Function::New(env, Sync));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads));
  exports.Set("copy", Napi::Function::New(env, Copy));
  exports.Set("quietStderr", Napi::Function::New(env, QuietStderr));
#ifdef MOTE_HAVE_CUDA
  exports.Set("cudaBuilt", true);
#else
  exports.Set("cudaBuilt", false);
#endif
  register_matmul(env, exports);
  register_lora(env, exports);
  register_model(env, exports);
  register_adamw(env, exports);
  return exports;
}

}  // namespace

}  // namespace mote

static Napi::Object InitMote(Napi::Env env, Napi::Object exports) { return mote::Init(env, exports); }
NODE_API_MODULE(mote, InitMote)
