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
//
// Prepared form (what the backend uses): parsing that object (20 named fields, 9 buffers) is
// most of a small call's fixed cost, and its two halves change at different rates, so each is
// parsed and size-checked once into a handle and reused:
//   loraRoutingHandle({ slots, weight, order, segStart, segAdapter, T, K, L, P, G })   one per batch
//   loraStackHandle({ A, B, rank, scale, L, R, Hin, Hout, aDtype, bDtype })           one per layer
//   loraRun(op, routingHandle, stackHandle, strategy, accumulate, ...buffers)
// op 0..5 = shrink, expand, apply, shrinkGrad, inputGrad, weightGrad, with the buffers of the
// per-op functions above. A handle keeps its buffers' handles alive; a freed buffer is
// refused at the call, as everywhere, and buffer contents are checked by the kernels every
// call, as with the object form.
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

// ---------------------------------------------------------------------------
// Prepared halves

const napi_type_tag kRoutingTag = {0x6d6f74656c6f7261ULL, 0x726f7574696e6731ULL};
const napi_type_tag kStackTag = {0x6d6f74656c6f7261ULL, 0x737461636b000001ULL};

struct RoutingHandle {
  int T, K, L, P, G;
  NativeBuffer* buf[5];  // slots, weight, order, segStart, segAdapter
};
struct StackHandle {
  int L, R, Hin, Hout, a_dtype, b_dtype;
  NativeBuffer* buf[4];  // A, B, rank, scale
};

// The handle object: type-tagged, wrapping the struct, holding the buffers' handles in a
// frozen, non-writable property so they outlive it.
// A buffer field of a handle's args object, read once: checked as field_buffer does, and its
// handle kept for the handle object.
NativeBuffer* take(Napi::Env env, const Napi::Object& o, const char* name, size_t min_bytes, Collector& c,
                   std::vector<Napi::Value>& keep) {
  Napi::Value v = o.Get(name);
  if (!v.IsExternal()) throw Napi::TypeError::New(env, std::string("args.") + name + ": expected a native buffer");
  auto* b = v.As<Napi::External<NativeBuffer>>().Data();
  if (!b->ptr) throw Napi::Error::New(env, std::string("args.") + name + ": buffer was already freed");
  if (b->bytes < min_bytes)
    throw Napi::RangeError::New(env, std::string("args.") + name + ": buffer holds " + std::to_string(b->bytes) +
                                         " bytes, kernel needs " + std::to_string(min_bytes));
  c.bufs.push_back(b);
  keep.push_back(v);
  return b;
}

template <typename H>
Napi::Value make_handle(Napi::Env env, H* h, const napi_type_tag& tag, const std::vector<Napi::Value>& values) {
  Napi::Object obj = Napi::Object::New(env);
  Napi::Array keep = Napi::Array::New(env, values.size());
  for (size_t i = 0; i < values.size(); i++) keep.Set(uint32_t(i), values[i]);
  NAPI_THROW_IF_FAILED(env, napi_object_freeze(env, keep), Napi::Value());
  obj.DefineProperty(Napi::PropertyDescriptor::Value("buffers", keep, napi_default));
  napi_status st = napi_wrap(
      env, obj, h, [](napi_env, void* p, void*) { delete static_cast<H*>(p); }, nullptr, nullptr);
  if (st != napi_ok) {
    delete h;
    NAPI_THROW_IF_FAILED(env, st, Napi::Value());
  }
  NAPI_THROW_IF_FAILED(env, napi_type_tag_object(env, obj, &tag), Napi::Value());
  return obj;
}

template <typename H>
H* handle_arg(const Napi::CallbackInfo& info, size_t i, const char* name, const napi_type_tag& tag) {
  Napi::Env env = info.Env();
  bool ok = false;
  if (i < info.Length() && info[i].IsObject()) napi_check_object_type_tag(env, info[i], &tag, &ok);
  if (!ok) throw Napi::TypeError::New(env, std::string(name) + ": expected a handle from " + name + "Handle()");
  void* p = nullptr;
  NAPI_THROW_IF_FAILED(env, napi_unwrap(env, info[i], &p), nullptr);
  return static_cast<H*>(p);
}

Napi::Value LoraRoutingHandle(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject())
      throw Napi::TypeError::New(env, "args: expected an object of routing buffers and dims");
    Napi::Object o = info[0].As<Napi::Object>();
    Collector c;
    std::vector<Napi::Value> keep;
    auto* h = new RoutingHandle();
    try {
      h->T = field_int(env, o, "T", 1, kMaxInt);
      h->K = field_int(env, o, "K", 1, kMaxInt);
      h->L = field_int(env, o, "L", 1, kMaxInt);
      const size_t TK = size_t(h->T) * h->K;
      if (TK > size_t(kMaxInt)) throw Napi::RangeError::New(env, "args: T·K must fit in a 32-bit integer");
      h->P = field_int(env, o, "P", 0, int(TK));
      h->G = field_int(env, o, "G", 0, h->L);
      bytes_of(env, "args.T·K·R (v, dv)", {TK, 4});
      h->buf[0] = take(env, o, "slots", bytes_of(env, "args.slots", {TK, 4}), c, keep);
      h->buf[1] = take(env, o, "weight", bytes_of(env, "args.weight", {TK, 4}), c, keep);
      h->buf[2] = take(env, o, "order", bytes_of(env, "args.order", {size_t(h->P), 4}), c, keep);
      h->buf[3] = take(env, o, "segStart", size_t(h->G + 1) * 4, c, keep);
      h->buf[4] = take(env, o, "segAdapter", bytes_of(env, "args.segAdapter", {size_t(h->G), 4}), c, keep);
      c.device();  // one device
    } catch (...) {
      delete h;
      throw;
    }
    return make_handle(env, h, kRoutingTag, keep);
  });
}

Napi::Value LoraStackHandle(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject())
      throw Napi::TypeError::New(env, "args: expected an object of adapter stack buffers and dims");
    Napi::Object o = info[0].As<Napi::Object>();
    Collector c;
    std::vector<Napi::Value> keep;
    auto* h = new StackHandle();
    try {
      h->L = field_int(env, o, "L", 1, kMaxInt);
      h->R = field_int(env, o, "R", 1, kMaxInt);
      h->Hin = field_int(env, o, "Hin", 1, kMaxInt);
      h->Hout = field_int(env, o, "Hout", 1, kMaxInt);
      h->a_dtype = field_int(env, o, "aDtype", 0, 2);
      h->b_dtype = field_int(env, o, "bDtype", 0, 2);
      bytes_of(env, "args.L·R·Hin (dA)", {size_t(h->L), size_t(h->R), size_t(h->Hin), 4});
      bytes_of(env, "args.L·Hout·R (dB)", {size_t(h->L), size_t(h->Hout), size_t(h->R), 4});
      const size_t as = dtype_size(to_dtype(h->a_dtype)), bs = dtype_size(to_dtype(h->b_dtype));
      h->buf[0] = take(env, o, "A", bytes_of(env, "args.A", {size_t(h->L), size_t(h->R), size_t(h->Hin), as}), c, keep);
      h->buf[1] =
          take(env, o, "B", bytes_of(env, "args.B", {size_t(h->L), size_t(h->Hout), size_t(h->R), bs}), c, keep);
      h->buf[2] = take(env, o, "rank", bytes_of(env, "args.rank", {size_t(h->L), 4}), c, keep);
      h->buf[3] = take(env, o, "scale", bytes_of(env, "args.scale", {size_t(h->L), 4}), c, keep);
      c.device();
    } catch (...) {
      delete h;
      throw;
    }
    return make_handle(env, h, kStackTag, keep);
  });
}

// A prepared call: the C args from the two handles (every buffer still live), dims that
// must agree between them, and the sizes the object form derives.
Call prepared(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const RoutingHandle* rh = handle_arg<RoutingHandle>(info, 1, "loraRouting", kRoutingTag);
  const StackHandle* sh = handle_arg<StackHandle>(info, 2, "loraStack", kStackTag);
  if (rh->L != sh->L)
    throw Napi::RangeError::New(env, "routing: built for L = " + std::to_string(rh->L) +
                                         " adapters, the stack has L = " + std::to_string(sh->L));
  Call c;
  c.bufs.reserve(16);  // the nine halves' buffers and the op's (one allocation)
  mote_lora_args& a = c.a;
  a.T = rh->T, a.K = rh->K, a.L = rh->L, a.P = rh->P, a.G = rh->G;
  a.R = sh->R, a.Hin = sh->Hin, a.Hout = sh->Hout, a.a_dtype = sh->a_dtype, a.b_dtype = sh->b_dtype;
  a.strategy = index_arg(info, 3, "strategy", 0, 1);
  // the sizes v_bytes() etc. compute unchecked must fit
  bytes_of(env, "T·K·R (v, dv)", {c.TK(), size_t(a.R), 4});
  bytes_of(env, "T·Hin (x, dx)", {size_t(a.T), size_t(a.Hin), 4});
  bytes_of(env, "T·Hout (y, dy)", {size_t(a.T), size_t(a.Hout), 4});
  static const char* const rnames[5] = {"routing.slots", "routing.weight", "routing.order", "routing.segStart",
                                        "routing.segAdapter"};
  static const char* const snames[4] = {"stack.A", "stack.B", "stack.rank", "stack.scale"};
  for (int i = 0; i < 5; i++) {
    if (!rh->buf[i]->ptr) throw Napi::Error::New(env, std::string(rnames[i]) + ": buffer was already freed");
    c.bufs.push_back(rh->buf[i]);
  }
  for (int i = 0; i < 4; i++) {
    if (!sh->buf[i]->ptr) throw Napi::Error::New(env, std::string(snames[i]) + ": buffer was already freed");
    c.bufs.push_back(sh->buf[i]);
  }
  a.slots = static_cast<const int*>(rh->buf[0]->ptr);
  a.weight = static_cast<const float*>(rh->buf[1]->ptr);
  a.order = static_cast<const int*>(rh->buf[2]->ptr);
  a.seg_start = static_cast<const int*>(rh->buf[3]->ptr);
  a.seg_adapter = static_cast<const int*>(rh->buf[4]->ptr);
  a.A = sh->buf[0]->ptr;
  a.B = sh->buf[1]->ptr;
  a.rank = static_cast<const int*>(sh->buf[2]->ptr);
  a.scale = static_cast<const float*>(sh->buf[3]->ptr);
  return c;
}

Napi::Value LoraRun(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const int op = index_arg(info, 0, "op", 0, 5);
    Call c = prepared(info);
    const bool acc = bool_arg(info, 4, "accumulate");
    constexpr size_t b0 = 5;  // first buffer argument
    switch (op) {
      case 0: {
        auto* v = c.arg(info, b0, "v", c.v_bytes());
        auto* x = c.arg(info, b0 + 1, "x", c.x_bytes());
        if (c.device() == Device::CPU)
          cpu::lora_shrink(c.a, F(v), F(x));
        else
          MOTE_CUDA_OR_THROW(mote_cuda_lora_shrink(&c.a, F(v), F(x), nullptr), "loraShrink");
        break;
      }
      case 1: {
        auto* y = c.arg(info, b0, "y", c.y_bytes());
        auto* v = c.arg(info, b0 + 1, "v", c.v_bytes());
        if (c.device() == Device::CPU)
          cpu::lora_expand(c.a, F(y), F(v));
        else
          MOTE_CUDA_OR_THROW(mote_cuda_lora_expand(&c.a, F(y), F(v), nullptr), "loraExpand");
        break;
      }
      case 2: {
        auto* y = c.arg(info, b0, "y", c.y_bytes());
        auto* v = c.arg(info, b0 + 1, "v", c.v_bytes());
        auto* x = c.arg(info, b0 + 2, "x", c.x_bytes());
        if (c.device() == Device::CPU)
          cpu::lora_apply(c.a, F(y), F(v), F(x));
        else
          MOTE_CUDA_OR_THROW(mote_cuda_lora_apply(&c.a, F(y), F(v), F(x), nullptr), "loraApply");
        break;
      }
      case 3: {
        auto* dv = c.arg(info, b0, "dv", c.v_bytes());
        auto* dy = c.arg(info, b0 + 1, "dy", c.y_bytes());
        if (c.device() == Device::CPU)
          cpu::lora_shrink_grad(c.a, F(dv), F(dy));
        else
          MOTE_CUDA_OR_THROW(mote_cuda_lora_shrink_grad(&c.a, F(dv), F(dy), nullptr), "loraShrinkGrad");
        break;
      }
      case 4: {
        auto* dx = c.arg(info, b0, "dx", c.x_bytes());
        auto* dv = c.arg(info, b0 + 1, "dv", c.v_bytes());
        if (c.device() == Device::CPU)
          cpu::lora_input_grad(c.a, F(dx), F(dv), acc);
        else
          MOTE_CUDA_OR_THROW(mote_cuda_lora_input_grad(&c.a, F(dx), F(dv), acc, nullptr), "loraInputGrad");
        break;
      }
      default: {
        auto* dA = c.arg(info, b0, "dA", c.dA_bytes());
        auto* dB = c.arg(info, b0 + 1, "dB", c.dB_bytes());
        auto* x = c.arg(info, b0 + 2, "x", c.x_bytes());
        auto* dy = c.arg(info, b0 + 3, "dy", c.y_bytes());
        auto* v = c.arg(info, b0 + 4, "v", c.v_bytes());
        auto* dv = c.arg(info, b0 + 5, "dv", c.v_bytes());
        if (c.device() == Device::CPU)
          cpu::lora_weight_grad(c.a, F(dA), F(dB), F(x), F(dy), F(v), F(dv), acc);
        else
          MOTE_CUDA_OR_THROW(mote_cuda_lora_weight_grad(&c.a, F(dA), F(dB), F(x), F(dy), F(v), F(dv), acc, nullptr),
                             "loraWeightGrad");
        break;
      }
    }
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
  exports.Set("loraRoutingHandle", Napi::Function::New(env, LoraRoutingHandle));
  exports.Set("loraStackHandle", Napi::Function::New(env, LoraStackHandle));
  exports.Set("loraRun", Napi::Function::New(env, LoraRun));
}

}  // namespace mote
