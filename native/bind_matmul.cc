// Bindings for the matmul family: argument order (out, in..., wdtype, T, K, N, accumulate).
#include "bind.h"
#include "cpu/kernels.h"
#ifdef MOTE_HAVE_CUDA
#include "../kernels/cuda/kernels.h"
#endif

namespace mote {
namespace {

struct Dims {
  int T, K, N;
};

Dims dims_arg(const Napi::CallbackInfo& info, size_t i) {
  return Dims{index_arg(info, i, "T", 1), index_arg(info, i + 1, "K", 1), index_arg(info, i + 2, "N", 1)};
}

Napi::Value Matmul(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    int wd = index_arg(info, 3, "wdtype", 0, 2);
    Dims d = dims_arg(info, 4);
    bool acc = bool_arg(info, 7, "accumulate");
    auto* y = sized_arg(info, 0, "y", {size_t(d.T), size_t(d.N), 4});
    auto* x = sized_arg(info, 1, "x", {size_t(d.T), size_t(d.K), 4});
    auto* w = sized_arg(info, 2, "w", {size_t(d.N), size_t(d.K), dtype_size(to_dtype(wd))});
    if (same_device({y, x, w}) == Device::CPU) {
      cpu::matmul(static_cast<float*>(y->ptr), static_cast<const float*>(x->ptr), w->ptr, wd, d.T, d.K, d.N, acc);
    } else {
      MOTE_CUDA_OR_THROW(mote_cuda_matmul(static_cast<float*>(y->ptr), static_cast<const float*>(x->ptr), w->ptr, wd,
                                          d.T, d.K, d.N, acc, nullptr),
                         "matmul");
    }
    return info.Env().Undefined();
  });
}

Napi::Value MatmulGradInput(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    int wd = index_arg(info, 3, "wdtype", 0, 2);
    Dims d = dims_arg(info, 4);
    bool acc = bool_arg(info, 7, "accumulate");
    auto* dx = sized_arg(info, 0, "dx", {size_t(d.T), size_t(d.K), 4});
    auto* dy = sized_arg(info, 1, "dy", {size_t(d.T), size_t(d.N), 4});
    auto* w = sized_arg(info, 2, "w", {size_t(d.N), size_t(d.K), dtype_size(to_dtype(wd))});
    if (same_device({dx, dy, w}) == Device::CPU) {
      cpu::matmul_grad_input(static_cast<float*>(dx->ptr), static_cast<const float*>(dy->ptr), w->ptr, wd, d.T, d.K,
                             d.N, acc);
    } else {
      MOTE_CUDA_OR_THROW(mote_cuda_matmul_grad_input(static_cast<float*>(dx->ptr), static_cast<const float*>(dy->ptr),
                                                     w->ptr, wd, d.T, d.K, d.N, acc, nullptr),
                         "matmulGradInput");
    }
    return info.Env().Undefined();
  });
}

Napi::Value MatmulGradWeight(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Dims d = dims_arg(info, 3);
    bool acc = bool_arg(info, 6, "accumulate");
    auto* dw = sized_arg(info, 0, "dw", {size_t(d.N), size_t(d.K), 4});
    auto* dy = sized_arg(info, 1, "dy", {size_t(d.T), size_t(d.N), 4});
    auto* x = sized_arg(info, 2, "x", {size_t(d.T), size_t(d.K), 4});
    if (same_device({dw, dy, x}) == Device::CPU) {
      cpu::matmul_grad_weight(static_cast<float*>(dw->ptr), static_cast<const float*>(dy->ptr),
                              static_cast<const float*>(x->ptr), d.T, d.K, d.N, acc);
    } else {
      MOTE_CUDA_OR_THROW(mote_cuda_matmul_grad_weight(static_cast<float*>(dw->ptr), static_cast<const float*>(dy->ptr),
                                                      static_cast<const float*>(x->ptr), d.T, d.K, d.N, acc, nullptr),
                         "matmulGradWeight");
    }
    return info.Env().Undefined();
  });
}

}  // namespace

void register_matmul(Napi::Env env, Napi::Object exports) {
  exports.Set("matmul", Napi::Function::New(env, Matmul));
  exports.Set("matmulGradInput", Napi::Function::New(env, MatmulGradInput));
  exports.Set("matmulGradWeight", Napi::Function::New(env, MatmulGradWeight));
}

}  // namespace mote
