// Bindings for the adamw family (src/ops/adamw.ts, AdamwKernels). JS names are the method names:
//   adamw(p, g, m, v, n, lr, beta1, beta2, eps, weightDecay, bc1, bc2, gradScale)   p, m, v in place
//   sumSquares(out, g, n)                                                         out: 1 f32
// Every buffer's byte size is checked against n and every scalar is checked (finite; β in
// [0, 1); eps, bc1, bc2 > 0) before any kernel runs; all buffers of a call live on one device.
#include <cmath>
#include <cstdio>
#include <string>

#include "bind.h"
#include "cpu/kernels.h"
#ifdef MOTE_HAVE_CUDA
#include "../kernels/cuda/kernels.h"
#endif

namespace mote {
namespace {

constexpr size_t f4 = sizeof(float);

// A scalar that must be finite as an f32 and lie in [lo, hi) (or (lo, hi) when lo_open).
float scalar_arg(const Napi::CallbackInfo& info, size_t i, const char* name, double lo, bool lo_open, double hi) {
  double d = num_arg(info, i, name);
  const float f = float(d);
  const bool ok = std::isfinite(d) && std::isfinite(f) && (lo_open ? d > lo : d >= lo) && d < hi &&
                  (!lo_open || f > 0.f || lo != 0.0);
  if (!ok) {
    std::string range = std::string(lo_open ? "(" : "[") + num_str(lo) + ", " +
                        (std::isinf(hi) ? std::string("inf") : num_str(hi)) + ")";
    throw Napi::RangeError::New(info.Env(),
                                std::string(name) + ": expected a finite f32 in " + range + ", got " + num_str(d));
  }
  return f;
}

constexpr double kInf = INFINITY;

Napi::Value Adamw(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const size_t n = size_arg(info, 4, "n");
    const double lr_d = num_arg(info, 5, "lr"), b1_d = num_arg(info, 6, "beta1"), b2_d = num_arg(info, 7, "beta2"),
                 wd_d = num_arg(info, 9, "weightDecay");
    float lr = scalar_arg(info, 5, "lr", 0.0, false, kInf);
    float beta1 = scalar_arg(info, 6, "beta1", 0.0, false, 1.0);
    float beta2 = scalar_arg(info, 7, "beta2", 0.0, false, 1.0);
    float eps = scalar_arg(info, 8, "eps", 0.0, true, kInf);
    scalar_arg(info, 9, "weightDecay", 0.0, false, kInf);
    // formed in double, as torch does, then rounded once
    const float c1 = float(1.0 - b1_d), c2 = float(1.0 - b2_d), decay = float(1.0 - lr_d * wd_d);
    if (!std::isfinite(decay))
      throw Napi::RangeError::New(
          info.Env(), "lr, weightDecay: 1 − lr·weightDecay = " + num_str(1.0 - lr_d * wd_d) + " is not a finite f32");
    float bc1 = scalar_arg(info, 10, "bc1", 0.0, true, 1.0 + 1e-12);
    float bc2 = scalar_arg(info, 11, "bc2", 0.0, true, 1.0 + 1e-12);
    float gs = scalar_arg(info, 12, "gradScale", -kInf, false, kInf);
    auto* p = sized_arg(info, 0, "p", {n, f4});
    auto* g = sized_arg(info, 1, "g", {n, f4});
    auto* m = sized_arg(info, 2, "m", {n, f4});
    auto* v = sized_arg(info, 3, "v", {n, f4});
    if (p == m || p == v || m == v || g == p || g == m || g == v)
      throw Napi::Error::New(info.Env(), "adamw: p, g, m and v must be four distinct buffers");
    if (same_device({p, g, m, v}) == Device::CPU)
      cpu::adamw(F(p), F(g), F(m), F(v), n, lr, beta1, c1, beta2, c2, eps, decay, bc1, bc2, gs);
    else
      MOTE_CUDA_OR_THROW(
          mote_cuda_adamw(F(p), F(g), F(m), F(v), n, lr, beta1, c1, beta2, c2, eps, decay, bc1, bc2, gs, nullptr),
          "adamw");
    return info.Env().Undefined();
  });
}

Napi::Value SumSquares(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const size_t n = size_arg(info, 2, "n");
    auto* out = sized_arg(info, 0, "out", {f4});
    auto* g = sized_arg(info, 1, "g", {n, f4});
    if (out == g) throw Napi::Error::New(info.Env(), "sumSquares: out must not be g");
    if (same_device({out, g}) == Device::CPU)
      cpu::sum_squares(F(out), F(g), n);
    else
      MOTE_CUDA_OR_THROW(mote_cuda_sum_squares(F(out), F(g), n, nullptr), "sumSquares");
    return info.Env().Undefined();
  });
}

}  // namespace

void register_adamw(Napi::Env env, Napi::Object exports) {
  exports.Set("adamw", Napi::Function::New(env, Adamw));
  exports.Set("sumSquares", Napi::Function::New(env, SumSquares));
}

}  // namespace mote
