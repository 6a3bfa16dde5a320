// Bindings for the model kernel families (embedding, rmsnorm, rope, attention, swiglu,
// residual, xent, copy_rows). JS names are the ModelKernels method names (src/ops/model_kernels.ts);
// arguments are (outputs..., inputs..., dtype codes, dims, flags):
//   embedding(y, ids, E, edtype, T, V, H)
//   embeddingGrad(dE, dy, order, segStart, segIds, G, T, V, H, accumulate)
//   rmsnorm(y, rstd, x, w, wdtype, T, H, eps)
//   rmsnormGrad(dx, dw, dy, x, w, wdtype, rstd, T, H, accumulateDw)
//   rope(y, x, positions, invFreq, T, heads, D, inverse)                 y may be x
//   attention(args, out, lse, q, k, v)
//   attentionGrad(args, dq, dk, dv, dOut, q, k, v, out, lse)
//     args = { qSeq, qPos, kSeq, kPos, qSeg, kSeg, blocked,              // i32 buffers
//              Tq, Tk, nH, nKv, D, S, numSeqs, scale }                   // numbers
//   swiglu(y, gate, up, n)            swigluGrad(dgate, dup, dy, gate, up, n)
//   add(y, a, b, n)                                                      y may be a
//   scale(y, x, alpha, n)                                                y may be x
//   logSoftmax(out, logits, T, V)
//   xent(losses, lse, logits, targets, mask, T, V)
//   xentGrad(dlogits, logits, lse, targets, mask, scale, T, V)
//   copyRows(dst, src, dstRows, srcRows, dtype, N, W)                    dst may be src
// Every buffer's byte size is checked against the dims before any kernel runs, and all
// buffers of a call must live on one device. The CPU kernels also check index contents
// (ids, grouping, layout, targets) before writing, so bad indices throw instead of reading
// out of bounds.
#include <cmath>
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

// A finite float argument (optionally > 0).
float float_arg(const Napi::CallbackInfo& info, size_t i, const char* name, bool positive) {
  double d = num_arg(info, i, name);
  if (!std::isfinite(d) || (positive && !(d > 0)))
    throw Napi::RangeError::New(
        info.Env(), std::string(name) +
                        (positive ? ": expected a positive finite number, got " : ": expected a finite number, got ") +
                        num_str(d));
  return float(d);
}

int wdtype_arg(const Napi::CallbackInfo& info, size_t i, const char* name) { return index_arg(info, i, name, 0, 2); }

inline const int* I(NativeBuffer* b) { return static_cast<const int*>(b->ptr); }

constexpr size_t f4 = 4;  // bytes of an f32 / i32

// ---------------------------------------------------------------------------- embedding

Napi::Value Embedding(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    int ed = wdtype_arg(info, 3, "edtype");
    int T = index_arg(info, 4, "T", 1), V = index_arg(info, 5, "V", 1), H = index_arg(info, 6, "H", 1);
    auto* y = sized_arg(info, 0, "y", {size_t(T), size_t(H), f4});
    auto* ids = sized_arg(info, 1, "ids", {size_t(T), f4});
    auto* E = sized_arg(info, 2, "E", {size_t(V), size_t(H), dtype_size(to_dtype(ed))});
    if (same_device({y, ids, E}) == Device::CPU)
      cpu::embedding(F(y), I(ids), E->ptr, ed, T, V, H);
    else
      MOTE_CUDA_OR_THROW(mote_cuda_embedding(F(y), I(ids), E->ptr, ed, T, V, H, nullptr), "embedding");
    return info.Env().Undefined();
  });
}

Napi::Value EmbeddingGrad(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    int T = index_arg(info, 6, "T", 1), V = index_arg(info, 7, "V", 1), H = index_arg(info, 8, "H", 1);
    int G = index_arg(info, 5, "G", 0, T);
    bool acc = bool_arg(info, 9, "accumulate");
    auto* dE = sized_arg(info, 0, "dE", {size_t(V), size_t(H), f4});
    auto* dy = sized_arg(info, 1, "dy", {size_t(T), size_t(H), f4});
    auto* order = sized_arg(info, 2, "order", {size_t(T), f4});
    auto* segStart = buffer_arg(info, 3, "segStart", (size_t(G) + 1) * f4);
    auto* segIds = sized_arg(info, 4, "segIds", {size_t(G), f4});
    if (same_device({dE, dy, order, segStart, segIds}) == Device::CPU)
      cpu::embedding_grad(F(dE), F(dy), I(order), I(segStart), I(segIds), G, T, V, H, acc);
    else
      MOTE_CUDA_OR_THROW(
          mote_cuda_embedding_grad(F(dE), F(dy), I(order), I(segStart), I(segIds), G, T, V, H, acc, nullptr),
          "embeddingGrad");
    return info.Env().Undefined();
  });
}

// ---------------------------------------------------------------------------- rmsnorm

Napi::Value Rmsnorm(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    int wd = wdtype_arg(info, 4, "wdtype");
    int T = index_arg(info, 5, "T", 1), H = index_arg(info, 6, "H", 1);
    float eps = float_arg(info, 7, "eps", true);
    auto* y = sized_arg(info, 0, "y", {size_t(T), size_t(H), f4});
    auto* rstd = sized_arg(info, 1, "rstd", {size_t(T), f4});
    auto* x = sized_arg(info, 2, "x", {size_t(T), size_t(H), f4});
    auto* w = sized_arg(info, 3, "w", {size_t(H), dtype_size(to_dtype(wd))});
    if (same_device({y, rstd, x, w}) == Device::CPU)
      cpu::rmsnorm(F(y), F(rstd), F(x), w->ptr, wd, T, H, eps);
    else
      MOTE_CUDA_OR_THROW(mote_cuda_rmsnorm(F(y), F(rstd), F(x), w->ptr, wd, T, H, eps, nullptr), "rmsnorm");
    return info.Env().Undefined();
  });
}

Napi::Value RmsnormGrad(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    int wd = wdtype_arg(info, 5, "wdtype");
    int T = index_arg(info, 7, "T", 1), H = index_arg(info, 8, "H", 1);
    bool acc = bool_arg(info, 9, "accumulateDw");
    auto* dx = sized_arg(info, 0, "dx", {size_t(T), size_t(H), f4});
    auto* dw = sized_arg(info, 1, "dw", {size_t(H), f4});
    auto* dy = sized_arg(info, 2, "dy", {size_t(T), size_t(H), f4});
    auto* x = sized_arg(info, 3, "x", {size_t(T), size_t(H), f4});
    auto* w = sized_arg(info, 4, "w", {size_t(H), dtype_size(to_dtype(wd))});
    auto* rstd = sized_arg(info, 6, "rstd", {size_t(T), f4});
    if (same_device({dx, dw, dy, x, w, rstd}) == Device::CPU)
      cpu::rmsnorm_grad(F(dx), F(dw), F(dy), F(x), w->ptr, wd, F(rstd), T, H, acc);
    else
      MOTE_CUDA_OR_THROW(mote_cuda_rmsnorm_grad(F(dx), F(dw), F(dy), F(x), w->ptr, wd, F(rstd), T, H, acc, nullptr),
                         "rmsnormGrad");
    return info.Env().Undefined();
  });
}

// ---------------------------------------------------------------------------- rope

Napi::Value Rope(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    int T = index_arg(info, 4, "T", 1), heads = index_arg(info, 5, "heads", 1), D = index_arg(info, 6, "D", 2);
    if (D % 2 != 0) throw Napi::RangeError::New(info.Env(), "D: expected an even head dim, got " + std::to_string(D));
    bool inverse = bool_arg(info, 7, "inverse");
    auto* y = sized_arg(info, 0, "y", {size_t(T), size_t(heads), size_t(D), f4});
    auto* x = sized_arg(info, 1, "x", {size_t(T), size_t(heads), size_t(D), f4});
    auto* pos = sized_arg(info, 2, "positions", {size_t(T), f4});
    auto* inv = buffer_arg(info, 3, "invFreq", size_t(D / 2) * f4);
    if (same_device({y, x, pos, inv}) == Device::CPU)
      cpu::rope(F(y), F(x), I(pos), F(inv), T, heads, D, inverse);
    else
      MOTE_CUDA_OR_THROW(mote_cuda_rope(F(y), F(x), I(pos), F(inv), T, heads, D, inverse, nullptr), "rope");
    return info.Env().Undefined();
  });
}

// ---------------------------------------------------------------------------- attention

// The parsed layout and dims, plus every buffer of the call (for the device check).
struct AttnCall : Collector {
  mote_attention_args a{};

  size_t q_bytes() const { return size_t(a.Tq) * a.nH * a.D * f4; }
  size_t kv_bytes() const { return size_t(a.Tk) * a.nKv * a.D * f4; }
  size_t lse_bytes() const { return size_t(a.Tq) * a.nH * f4; }
};

AttnCall parse_attention(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject())
    throw Napi::TypeError::New(env, "args: expected an object of layout buffers and dims");
  Napi::Object o = info[0].As<Napi::Object>();
  AttnCall c;
  mote_attention_args& a = c.a;
  a.Tq = field_int(env, o, "Tq", 1);
  a.Tk = field_int(env, o, "Tk", 1);
  a.nH = field_int(env, o, "nH", 1);
  a.nKv = field_int(env, o, "nKv", 1, a.nH);
  if (a.nH % a.nKv != 0)
    throw Napi::RangeError::New(env, "args.nKv: kv heads (" + std::to_string(a.nKv) + ") must divide query heads (" +
                                         std::to_string(a.nH) + ")");
  a.D = field_int(env, o, "D", 1);
  a.S = field_int(env, o, "S", 0, 65535);
  a.num_seqs = field_int(env, o, "numSeqs", a.S > 0 ? 1 : 0);
  a.num_runs = field_int(env, o, "numRuns", 0);
  {
    Napi::Value s = o.Get("scale");
    double d = s.IsNumber() ? s.As<Napi::Number>().DoubleValue() : NAN;
    if (!std::isfinite(d) || !(d > 0))
      throw Napi::RangeError::New(env, "args.scale: expected a positive finite number");
    a.scale = float(d);
  }
  // every buffer size the call derives from the dims must fit (q_bytes() etc. multiply unchecked)
  bytes_of(env, "args.Tq·nH·D (q, out, dq, dOut)", {size_t(a.Tq), size_t(a.nH), size_t(a.D), f4});
  bytes_of(env, "args.Tk·nKv·D (k, v, dk, dv)", {size_t(a.Tk), size_t(a.nKv), size_t(a.D), f4});
  const size_t S = size_t(a.S);
  auto* qSeq = c.field(env, o, "qSeq", bytes_of(env, "args.qSeq", {size_t(a.Tq), f4}));
  auto* qPos = c.field(env, o, "qPos", bytes_of(env, "args.qPos", {size_t(a.Tq), f4}));
  auto* kSeq = c.field(env, o, "kSeq", bytes_of(env, "args.kSeq", {size_t(a.Tk), f4}));
  auto* kPos = c.field(env, o, "kPos", bytes_of(env, "args.kPos", {size_t(a.Tk), f4}));
  // without segments (S = 0) these three are never read
  auto* qSeg = c.field(env, o, "qSeg", S ? size_t(a.Tq) * f4 : 0);
  auto* kSeg = c.field(env, o, "kSeg", S ? size_t(a.Tk) * f4 : 0);
  auto* blocked = c.field(env, o, "blocked", bytes_of(env, "args.blocked", {size_t(a.num_seqs), S, S, f4}));
  a.q_seq = I(qSeq);
  a.q_pos = I(qPos);
  a.k_seq = I(kSeq);
  a.k_pos = I(kPos);
  a.q_seg = I(qSeg);
  a.k_seg = I(kSeg);
  // Tq, Tk, num_runs are each below 2^31: the sum cannot overflow size_t
  auto* ranges = c.field(env, o, "ranges", (size_t(a.Tq) + size_t(a.Tk) + size_t(a.num_runs)) * 2 * f4);
  a.blocked = I(blocked);
  a.ranges = I(ranges);
  return c;
}

Napi::Value Attention(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    AttnCall c = parse_attention(info);
    auto* out = c.arg(info, 1, "out", c.q_bytes());
    auto* lse = c.arg(info, 2, "lse", c.lse_bytes());
    auto* q = c.arg(info, 3, "q", c.q_bytes());
    auto* k = c.arg(info, 4, "k", c.kv_bytes());
    auto* v = c.arg(info, 5, "v", c.kv_bytes());
    if (c.device() == Device::CPU)
      cpu::attention(c.a, F(out), F(lse), F(q), F(k), F(v));
    else
      MOTE_CUDA_OR_THROW(mote_cuda_attention(&c.a, F(out), F(lse), F(q), F(k), F(v), nullptr), "attention");
    return info.Env().Undefined();
  });
}

Napi::Value AttentionGrad(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    AttnCall c = parse_attention(info);
    auto* dq = c.arg(info, 1, "dq", c.q_bytes());
    auto* dk = c.arg(info, 2, "dk", c.kv_bytes());
    auto* dv = c.arg(info, 3, "dv", c.kv_bytes());
    auto* dOut = c.arg(info, 4, "dOut", c.q_bytes());
    auto* q = c.arg(info, 5, "q", c.q_bytes());
    auto* k = c.arg(info, 6, "k", c.kv_bytes());
    auto* v = c.arg(info, 7, "v", c.kv_bytes());
    auto* out = c.arg(info, 8, "out", c.q_bytes());
    auto* lse = c.arg(info, 9, "lse", c.lse_bytes());
    if (c.device() == Device::CPU)
      cpu::attention_grad(c.a, F(dq), F(dk), F(dv), F(dOut), F(q), F(k), F(v), F(out), F(lse));
    else
      MOTE_CUDA_OR_THROW(
          mote_cuda_attention_grad(&c.a, F(dq), F(dk), F(dv), F(dOut), F(q), F(k), F(v), F(out), F(lse), nullptr),
          "attentionGrad");
    return info.Env().Undefined();
  });
}

// ---------------------------------------------------------------------------- swiglu, residual

Napi::Value Swiglu(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const size_t n = size_arg(info, 3, "n");
    auto* y = sized_arg(info, 0, "y", {n, f4});
    auto* gate = sized_arg(info, 1, "gate", {n, f4});
    auto* up = sized_arg(info, 2, "up", {n, f4});
    if (same_device({y, gate, up}) == Device::CPU)
      cpu::swiglu(F(y), F(gate), F(up), n);
    else
      MOTE_CUDA_OR_THROW(mote_cuda_swiglu(F(y), F(gate), F(up), n, nullptr), "swiglu");
    return info.Env().Undefined();
  });
}

Napi::Value SwigluGrad(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const size_t n = size_arg(info, 5, "n");
    auto* dgate = sized_arg(info, 0, "dgate", {n, f4});
    auto* dup = sized_arg(info, 1, "dup", {n, f4});
    auto* dy = sized_arg(info, 2, "dy", {n, f4});
    auto* gate = sized_arg(info, 3, "gate", {n, f4});
    auto* up = sized_arg(info, 4, "up", {n, f4});
    if (same_device({dgate, dup, dy, gate, up}) == Device::CPU)
      cpu::swiglu_grad(F(dgate), F(dup), F(dy), F(gate), F(up), n);
    else
      MOTE_CUDA_OR_THROW(mote_cuda_swiglu_grad(F(dgate), F(dup), F(dy), F(gate), F(up), n, nullptr), "swigluGrad");
    return info.Env().Undefined();
  });
}

Napi::Value Add(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const size_t n = size_arg(info, 3, "n");
    auto* y = sized_arg(info, 0, "y", {n, f4});
    auto* a = sized_arg(info, 1, "a", {n, f4});
    auto* b = sized_arg(info, 2, "b", {n, f4});
    if (same_device({y, a, b}) == Device::CPU)
      cpu::add(F(y), F(a), F(b), n);
    else
      MOTE_CUDA_OR_THROW(mote_cuda_add(F(y), F(a), F(b), n, nullptr), "add");
    return info.Env().Undefined();
  });
}

Napi::Value Scale(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const size_t n = size_arg(info, 3, "n");
    auto* y = sized_arg(info, 0, "y", {n, f4});
    auto* x = sized_arg(info, 1, "x", {n, f4});
    const double alpha = num_arg(info, 2, "alpha");
    if (!std::isfinite(alpha))
      throw Napi::RangeError::New(info.Env(), "scale: alpha: expected a finite number, got " + num_str(alpha));
    if (same_device({y, x}) == Device::CPU)
      cpu::scale(F(y), F(x), float(alpha), n);
    else
      MOTE_CUDA_OR_THROW(mote_cuda_scale(F(y), F(x), float(alpha), n, nullptr), "scale");
    return info.Env().Undefined();
  });
}

// ---------------------------------------------------------------------------- xent

Napi::Value LogSoftmax(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    int T = index_arg(info, 2, "T", 1), V = index_arg(info, 3, "V", 1);
    auto* out = sized_arg(info, 0, "out", {size_t(T), size_t(V), f4});
    auto* logits = sized_arg(info, 1, "logits", {size_t(T), size_t(V), f4});
    if (same_device({out, logits}) == Device::CPU)
      cpu::log_softmax(F(out), F(logits), T, V);
    else
      MOTE_CUDA_OR_THROW(mote_cuda_log_softmax(F(out), F(logits), T, V, nullptr), "logSoftmax");
    return info.Env().Undefined();
  });
}

Napi::Value Xent(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    int T = index_arg(info, 5, "T", 1), V = index_arg(info, 6, "V", 1);
    auto* losses = sized_arg(info, 0, "losses", {size_t(T), f4});
    auto* lse = sized_arg(info, 1, "lse", {size_t(T), f4});
    auto* logits = sized_arg(info, 2, "logits", {size_t(T), size_t(V), f4});
    auto* targets = sized_arg(info, 3, "targets", {size_t(T), f4});
    auto* mask = sized_arg(info, 4, "mask", {size_t(T), f4});
    if (same_device({losses, lse, logits, targets, mask}) == Device::CPU)
      cpu::xent(F(losses), F(lse), F(logits), I(targets), F(mask), T, V);
    else
      MOTE_CUDA_OR_THROW(mote_cuda_xent(F(losses), F(lse), F(logits), I(targets), F(mask), T, V, nullptr), "xent");
    return info.Env().Undefined();
  });
}

Napi::Value XentGrad(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    float scale = float_arg(info, 5, "scale", false);
    int T = index_arg(info, 6, "T", 1), V = index_arg(info, 7, "V", 1);
    auto* dlogits = sized_arg(info, 0, "dlogits", {size_t(T), size_t(V), f4});
    auto* logits = sized_arg(info, 1, "logits", {size_t(T), size_t(V), f4});
    auto* lse = sized_arg(info, 2, "lse", {size_t(T), f4});
    auto* targets = sized_arg(info, 3, "targets", {size_t(T), f4});
    auto* mask = sized_arg(info, 4, "mask", {size_t(T), f4});
    if (same_device({dlogits, logits, lse, targets, mask}) == Device::CPU)
      cpu::xent_grad(F(dlogits), F(logits), F(lse), I(targets), F(mask), scale, T, V);
    else
      MOTE_CUDA_OR_THROW(mote_cuda_xent_grad(F(dlogits), F(logits), F(lse), I(targets), F(mask), scale, T, V, nullptr),
                         "xentGrad");
    return info.Env().Undefined();
  });
}

// ---------------------------------------------------------------------------- copy_rows

// The rows of dst and src are what their buffers hold (whole rows of W elements); the CPU
// kernel checks every index against them, the CUDA kernel skips any outside them.
Napi::Value CopyRows(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    int dt = index_arg(info, 4, "dtype", 0, 3);
    int N = index_arg(info, 5, "N", 0), W = index_arg(info, 6, "W", 1);
    const size_t row = size_t(W) * dtype_size(to_dtype(dt));
    auto* dst = sized_arg(info, 0, "dst", {row});
    auto* src = sized_arg(info, 1, "src", {row});
    auto* dstRows = sized_arg(info, 2, "dstRows", {size_t(N), f4});
    auto* srcRows = sized_arg(info, 3, "srcRows", {size_t(N), f4});
    const int64_t Rd = int64_t(dst->bytes / row), Rs = int64_t(src->bytes / row);
    if (same_device({dst, src, dstRows, srcRows}) == Device::CPU)
      cpu::copy_rows(dst->ptr, src->ptr, I(dstRows), I(srcRows), dt, N, W, Rd, Rs);
    else
      MOTE_CUDA_OR_THROW(mote_cuda_copy_rows(dst->ptr, src->ptr, I(dstRows), I(srcRows), dt, N, W, Rd, Rs, nullptr),
                         "copyRows");
    return info.Env().Undefined();
  });
}

}  // namespace

void register_model(Napi::Env env, Napi::Object exports) {
  exports.Set("embedding", Napi::Function::New(env, Embedding));
  exports.Set("embeddingGrad", Napi::Function::New(env, EmbeddingGrad));
  exports.Set("rmsnorm", Napi::Function::New(env, Rmsnorm));
  exports.Set("rmsnormGrad", Napi::Function::New(env, RmsnormGrad));
  exports.Set("rope", Napi::Function::New(env, Rope));
  exports.Set("attention", Napi::Function::New(env, Attention));
  exports.Set("attentionGrad", Napi::Function::New(env, AttentionGrad));
  exports.Set("swiglu", Napi::Function::New(env, Swiglu));
  exports.Set("swigluGrad", Napi::Function::New(env, SwigluGrad));
  exports.Set("add", Napi::Function::New(env, Add));
  exports.Set("scale", Napi::Function::New(env, Scale));
  exports.Set("logSoftmax", Napi::Function::New(env, LogSoftmax));
  exports.Set("xent", Napi::Function::New(env, Xent));
  exports.Set("xentGrad", Napi::Function::New(env, XentGrad));
  exports.Set("copyRows", Napi::Function::New(env, CopyRows));
}

}  // namespace mote
