// Bindings for the multi-LoRA family. Every function takes the call description first:
//   args = { slots, weight, order, segStart, segAdapter,      // routing buffers (i32/f32)
//            A, B, rank, scale,                               // adapter stack buffers
//            T, K, L, R, Hin, Hout, P, G, aDtype, bDtype, strategy }   // numbers
// then its outputs and inputs:
//   loraShrink(args, v, x)                loraExpand(args, y, v)
//   loraApply(args, y, v, x)              loraShrinkGrad(args, dv, dy)
//   loraInputGrad(args, dx, dv, accumulate)
//   loraWeightGrad(args, dA, dB, x, dy, v, dv, accumulate)
// Every buffer's size is checked against the dims before any kernel runs.
#include <cstdio>
#include <string>
#include <vector>

#include "bind.h"
#include "cpu/kernels.h"
#ifdef MOTE_HAVE_CUDA
#include "../kernels/cuda/kernels.h"
#endif

namespace mote {
namespace {

// The parsed call: the C args plus the buffers they point into (for the device check).
struct Call : Collector {
  mote_lora_args a{};

  size_t TK() const { return size_t(a.T) * a.K; }
  size_t v_bytes() const { return TK() * a.R * 4; }
  size_t x_bytes() const { return size_t(a.T) * a.Hin * 4; }
  size_t y_bytes() const { return size_t(a.T) * a.Hout * 4; }
  size_t dA_bytes() const { return size_t(a.L) * a.R * a.Hin * 4; }
  size_t dB_bytes() const { return size_t(a.L) * a.Hout * a.R * 4; }
};

Call parse(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject())
    throw Napi::TypeError::New(env, "args: expected an object of routing and stack buffers and dims");
  Napi::Object o = info[0].As<Napi::Object>();
  Call c;
  mote_lora_args& a = c.a;
  a.T = field_int(env, o, "T", 1, kMaxInt);
  a.K = field_int(env, o, "K", 1, kMaxInt);
  a.L = field_int(env, o, "L", 1, kMaxInt);
  a.R = field_int(env, o, "R", 1, kMaxInt);
  a.Hin = field_int(env, o, "Hin", 1, kMaxInt);
  a.Hout = field_int(env, o, "Hout", 1, kMaxInt);
  if (c.TK() > size_t(kMaxInt)) throw Napi::RangeError::New(env, "args: T·K must fit in a 32-bit integer");
  a.P = field_int(env, o, "P", 0, int(c.TK()));
  a.G = field_int(env, o, "G", 0, a.L);
  a.a_dtype = field_int(env, o, "aDtype", 0, 2);
  a.b_dtype = field_int(env, o, "bDtype", 0, 2);
  a.strategy = field_int(env, o, "strategy", 0, 1);
  // the sizes v_bytes() etc. compute unchecked must fit
  bytes_of(env, "args.T·K·R (v, dv)", {c.TK(), size_t(a.R), 4});
  bytes_of(env, "args.T·Hin (x, dx)", {size_t(a.T), size_t(a.Hin), 4});
  bytes_of(env, "args.T·Hout (y, dy)", {size_t(a.T), size_t(a.Hout), 4});
  bytes_of(env, "args.L·R·Hin (dA)", {size_t(a.L), size_t(a.R), size_t(a.Hin), 4});
  bytes_of(env, "args.L·Hout·R (dB)", {size_t(a.L), size_t(a.Hout), size_t(a.R), 4});
  const size_t as = dtype_size(to_dtype(a.a_dtype)), bs = dtype_size(to_dtype(a.b_dtype));
  auto* slots = c.field(env, o, "slots", bytes_of(env, "args.slots", {c.TK(), 4}));
  auto* weight = c.field(env, o, "weight", bytes_of(env, "args.weight", {c.TK(), 4}));
  auto* order = c.field(env, o, "order", bytes_of(env, "args.order", {size_t(a.P), 4}));
  auto* segStart = c.field(env, o, "segStart", size_t(a.G + 1) * 4);
  auto* segAdapter = c.field(env, o, "segAdapter", bytes_of(env, "args.segAdapter", {size_t(a.G), 4}));
  auto* A = c.field(env, o, "A", bytes_of(env, "args.A", {size_t(a.L), size_t(a.R), size_t(a.Hin), as}));
  auto* B = c.field(env, o, "B", bytes_of(env, "args.B", {size_t(a.L), size_t(a.Hout), size_t(a.R), bs}));
  auto* rank = c.field(env, o, "rank", bytes_of(env, "args.rank", {size_t(a.L), 4}));
  auto* scale = c.field(env, o, "scale", bytes_of(env, "args.scale", {size_t(a.L), 4}));
  a.slots = static_cast<const int*>(slots->ptr);
  a.weight = static_cast<const float*>(weight->ptr);
  a.order = static_cast<const int*>(order->ptr);
  a.seg_start = static_cast<const int*>(segStart->ptr);
  a.seg_adapter = static_cast<const int*>(segAdapter->ptr);
  a.A = A->ptr;
  a.B = B->ptr;
  a.rank = static_cast<const int*>(rank->ptr);
  a.scale = static_cast<const float*>(scale->ptr);
  return c;
}

Napi::Value LoraShrink(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Call c = parse(info);
    auto* v = c.arg(info, 1, "v", c.v_bytes());
    auto* x = c.arg(info, 2, "x", c.x_bytes());
    if (c.device() == Device::CPU)
      cpu::lora_shrink(c.a, F(v), F(x));
    else
      MOTE_CUDA_OR_THROW(mote_cuda_lora_shrink(&c.a, F(v), F(x), nullptr), "loraShrink");
    return info.Env().Undefined();
  });
}

Napi::Value LoraExpand(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Call c = parse(info);
    auto* y = c.arg(info, 1, "y", c.y_bytes());
    auto* v = c.arg(info, 2, "v", c.v_bytes());
    if (c.device() == Device::CPU)
      cpu::lora_expand(c.a, F(y), F(v));
    else
      MOTE_CUDA_OR_THROW(mote_cuda_lora_expand(&c.a, F(y), F(v), nullptr), "loraExpand");
    return info.Env().Undefined();
  });
}

Napi::Value LoraApply(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Call c = parse(info);
    auto* y = c.arg(info, 1, "y", c.y_bytes());
    auto* v = c.arg(info, 2, "v", c.v_bytes());
    auto* x = c.arg(info, 3, "x", c.x_bytes());
    if (c.device() == Device::CPU)
      cpu::lora_apply(c.a, F(y), F(v), F(x));
    else
      MOTE_CUDA_OR_THROW(mote_cuda_lora_apply(&c.a, F(y), F(v), F(x), nullptr), "loraApply");
    return info.Env().Undefined();
  });
}

Napi::Value LoraShrinkGrad(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Call c = parse(info);
    auto* dv = c.arg(info, 1, "dv", c.v_bytes());
    auto* dy = c.arg(info, 2, "dy", c.y_bytes());
    if (c.device() == Device::CPU)
      cpu::lora_shrink_grad(c.a, F(dv), F(dy));
    else
      MOTE_CUDA_OR_THROW(mote_cuda_lora_shrink_grad(&c.a, F(dv), F(dy), nullptr), "loraShrinkGrad");
    return info.Env().Undefined();
  });
}

Napi::Value LoraInputGrad(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Call c = parse(info);
    auto* dx = c.arg(info, 1, "dx", c.x_bytes());
    auto* dv = c.arg(info, 2, "dv", c.v_bytes());
    bool acc = bool_arg(info, 3, "accumulate");
    if (c.device() == Device::CPU)
      cpu::lora_input_grad(c.a, F(dx), F(dv), acc);
    else
      MOTE_CUDA_OR_THROW(mote_cuda_lora_input_grad(&c.a, F(dx), F(dv), acc, nullptr), "loraInputGrad");
    return info.Env().Undefined();
  });
}

Napi::Value LoraWeightGrad(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Call c = parse(info);
    auto* dA = c.arg(info, 1, "dA", c.dA_bytes());
    auto* dB = c.arg(info, 2, "dB", c.dB_bytes());
    auto* x = c.arg(info, 3, "x", c.x_bytes());
    auto* dy = c.arg(info, 4, "dy", c.y_bytes());
    auto* v = c.arg(info, 5, "v", c.v_bytes());
    auto* dv = c.arg(info, 6, "dv", c.v_bytes());
    bool acc = bool_arg(info, 7, "accumulate");
    if (c.device() == Device::CPU)
      cpu::lora_weight_grad(c.a, F(dA), F(dB), F(x), F(dy), F(v), F(dv), acc);
    else
      MOTE_CUDA_OR_THROW(mote_cuda_lora_weight_grad(&c.a, F(dA), F(dB), F(x), F(dy), F(v), F(dv), acc, nullptr),
                         "loraWeightGrad");
    return info.Env().Undefined();
  });
}

}  // namespace

void register_lora(Napi::Env env, Napi::Object exports) {
  exports.Set("loraShrink", Napi::Function::New(env, LoraShrink));
  exports.Set("loraExpand", Napi::Function::New(env, LoraExpand));
  exports.Set("loraApply", Napi::Function::New(env, LoraApply));
  exports.Set("loraShrinkGrad", Napi::Function::New(env, LoraShrinkGrad));
  exports.Set("loraInputGrad", Napi::Function::New(env, LoraInputGrad));
  exports.Set("loraWeightGrad", Napi::Function::New(env, LoraWeightGrad));
}

}  // namespace mote
