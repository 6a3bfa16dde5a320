// C++ kernel test driver (ctest; no Node needed).
//  (a) CPU kernels (native/cpu/kernels.h) against a naive float64 reference written here, on
//      random non-zero inputs and awkward shapes; the reference uses the dtype-rounded weights.
//  (b) With CUDA built in and a device present: the same cases through the CUDA kernels,
//      compared with the CPU kernels' outputs, and two CUDA runs compared bit for bit; then
//      index tensors with tampered contents, checked for writes outside the outputs.
//  (c) Built as mote_cuda_emu_tests (CMakeLists.txt), (b) runs without nvcc or a device: the
//      .cu files compile as C++ against the CPU emulation of native/test/cuda_emu, which is
//      then "device 0". MOTE_TEST_MAX_T caps the LoRA cases' tokens there.
// Every check is ‖out − ref‖ / ‖ref‖ ≤ 1e-5. Outputs that a kernel must overwrite are poisoned
// with NaN first. One line per check; the exit status is non-zero on any failure.
#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cpu/half.h"
#include "cpu/kernels.h"

#ifdef MOTE_HAVE_CUDA
#include <cuda_runtime.h>

#include "../../kernels/cuda/kernels.h"
#endif

namespace {

constexpr double kTol = 1e-5;
const float kNaN = std::numeric_limits<float>::quiet_NaN();
int g_failures = 0;
int g_checks = 0;

// ---- f32 -> f16 / bf16, round to nearest even ---------------------------

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return uint16_t(sign | 0x7c00u | (x > 0x7f800000u ? 0x200u : 0u));  // inf / nan
  if (x >= 0x477ff000u) return uint16_t(sign | 0x7c00u);                                    // ≥ 65520 rounds to inf
  if (x < 0x38800000u) {  // |f| < 2^-14: subnormal half (or zero)
    float a;
    std::memcpy(&a, &x, 4);
    const uint32_t m = uint32_t(std::nearbyint(a * 16777216.0f));  // units of 2^-24, exact scaling; RNE
    return uint16_t(sign | m);                                     // m == 0x400 is the smallest normal
  }
  const uint32_t exp = (x >> 23) - 127 + 15, mant = x & 0x7fffffu;
  uint32_t h = (exp << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;  // a carry rolls into the exponent correctly
  return uint16_t(sign | h);
}

uint16_t f32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);  // quiet nan
  x += 0x7fffu + ((x >> 16) & 1u);
  return uint16_t(x >> 16);
}

const char* dtype_name(int dt) { return dt == 0 ? "f32" : dt == 1 ? "f16" : "bf16"; }

// ---- random data ---------------------------------------------------------

struct Rng {
  std::mt19937_64 g;
  explicit Rng(uint64_t seed) : g(seed) {}
  double uni() { return std::uniform_real_distribution<double>(0.0, 1.0)(g); }
  int integer(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(g); }  // inclusive
  float val() {                                                                          // never zero: ±[0.1, 1)
    float m = float(0.1 + 0.9 * uni());
    return uni() < 0.5 ? -m : m;
  }
};

std::vector<float> randv(size_t n, Rng& r) {
  std::vector<float> v(n);
  for (auto& e : v) e = r.val();
  return v;
}

// Weights in their storage dtype plus the rounded values as float64 (what the reference uses).
struct Weights {
  int dtype = 0;
  std::vector<uint8_t> bytes;
  std::vector<double> ref;
  const void* data() const { return bytes.data(); }
};

Weights make_weights(size_t n, int dtype, Rng& r) {
  Weights w;
  w.dtype = dtype;
  w.bytes.resize(n * (dtype == 0 ? 4 : 2));
  w.ref.resize(n);
  for (size_t i = 0; i < n; i++) {
    const float f = r.val();
    if (dtype == 0) {
      std::memcpy(w.bytes.data() + 4 * i, &f, 4);
      w.ref[i] = f;
    } else {
      const uint16_t h = dtype == 1 ? f32_to_f16(f) : f32_to_bf16(f);
      std::memcpy(w.bytes.data() + 2 * i, &h, 2);
      w.ref[i] = dtype == 1 ? mote::cpu::f16_to_f32(h) : mote::cpu::bf16_to_f32(h);
    }
  }
  return w;
}

// ‖out − ref‖ / ‖ref‖ (absolute norm when ref is all zeros); any non-finite output fails.
double rel_err(const float* out, const double* ref, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    if (!std::isfinite(out[i])) return std::numeric_limits<double>::infinity();
    const double d = double(out[i]) - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

[[maybe_unused]] double rel_err(const float* out, const float* ref, size_t n) {
  std::vector<double> r(ref, ref + n);
  return rel_err(out, r.data(), n);
}

void report(const std::string& line, bool ok) {
  g_checks++;
  if (!ok) g_failures++;
  std::printf("%s  %s\n", line.c_str(), ok ? "ok" : "FAIL");
  std::fflush(stdout);
}

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

// ---- CUDA helpers ----------------------------------------------------------

#ifdef MOTE_HAVE_CUDA
bool g_cuda = false;

void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
  }
}

// A device buffer that frees itself.
struct Dev {
  void* p = nullptr;
  size_t bytes = 0;
  Dev() = default;
  explicit Dev(size_t n) : bytes(n) { ck(cudaMalloc(&p, n ? n : 4), "cudaMalloc"); }
  Dev(const void* host, size_t n) : Dev(n) { put(host, n); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  Dev(Dev&& o) noexcept : p(o.p), bytes(o.bytes) { o.p = nullptr; }
  Dev& operator=(Dev&& o) noexcept {
    std::swap(p, o.p);
    std::swap(bytes, o.bytes);
    return *this;
  }
  ~Dev() {
    if (p) cudaFree(p);
  }
  void put(const void* host, size_t n) { ck(cudaMemcpy(p, host, n, cudaMemcpyHostToDevice), "upload"); }
  void get(void* host, size_t n) const { ck(cudaMemcpy(host, p, n, cudaMemcpyDeviceToHost), "download"); }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

template <typename T>
Dev dev_of(const std::vector<T>& v) {
  return Dev(v.data(), v.size() * sizeof(T));
}

void launch_check(int code, const char* what) {
  ck(cudaError_t(code), what);
  ck(cudaDeviceSynchronize(), what);
}
#endif

// ---- matmul ----------------------------------------------------------------

enum { MM_FWD, MM_GRAD_IN, MM_GRAD_W };
const char* mm_name(int op) {
  return op == MM_FWD ? "matmul" : op == MM_GRAD_IN ? "matmul_grad_input" : "matmul_grad_weight";
}

void test_matmul(int op, int T, int K, int N, int dtype, bool acc, Rng& rng) {
  const Weights W = make_weights(size_t(N) * K, op == MM_GRAD_W ? 0 : dtype, rng);
  const std::vector<float> x = randv(size_t(T) * K, rng), dy = randv(size_t(T) * N, rng);
  const size_t outN = op == MM_FWD ? size_t(T) * N : op == MM_GRAD_IN ? size_t(T) * K : size_t(N) * K;
  const std::vector<float> init = randv(outN, rng);
  std::vector<double> ref(outN);
  for (size_t i = 0; i < outN; i++) ref[i] = acc ? init[i] : 0.0;
  if (op == MM_FWD) {
    for (int t = 0; t < T; t++)
      for (int n = 0; n < N; n++) {
        double s = 0;
        for (int k = 0; k < K; k++) s += double(x[size_t(t) * K + k]) * W.ref[size_t(n) * K + k];
        ref[size_t(t) * N + n] += s;
      }
  } else if (op == MM_GRAD_IN) {
    for (int t = 0; t < T; t++)
      for (int k = 0; k < K; k++) {
        double s = 0;
        for (int n = 0; n < N; n++) s += double(dy[size_t(t) * N + n]) * W.ref[size_t(n) * K + k];
        ref[size_t(t) * K + k] += s;
      }
  } else {
    for (int n = 0; n < N; n++)
      for (int k = 0; k < K; k++) {
        double s = 0;
        for (int t = 0; t < T; t++) s += double(dy[size_t(t) * N + n]) * double(x[size_t(t) * K + k]);
        ref[size_t(n) * K + k] += s;
      }
  }
  const int wdt = op == MM_GRAD_W ? 0 : dtype;
  const std::string desc = fmt("%-18s T=%d K=%d N=%d w=%s acc=%d", mm_name(op), T, K, N, dtype_name(wdt), int(acc));

  std::vector<float> out(outN);
  auto reset = [&] {
    if (acc)
      out = init;
    else
      std::fill(out.begin(), out.end(), kNaN);
  };
  reset();
  try {
    if (op == MM_FWD)
      mote::cpu::matmul(out.data(), x.data(), W.data(), wdt, T, K, N, acc);
    else if (op == MM_GRAD_IN)
      mote::cpu::matmul_grad_input(out.data(), dy.data(), W.data(), wdt, T, K, N, acc);
    else
      mote::cpu::matmul_grad_weight(out.data(), dy.data(), x.data(), T, K, N, acc);
    const double e = rel_err(out.data(), ref.data(), outN);
    report(fmt("cpu  %s  rel_err=%.3g", desc.c_str(), e), e <= kTol);
  } catch (const std::exception& ex) {
    report(fmt("cpu  %s  threw: %s", desc.c_str(), ex.what()), false);
  }

#ifdef MOTE_HAVE_CUDA
  if (!g_cuda) return;
  try {
    const std::vector<float> cpu_out = out;
    Dev dW(W.data(), W.bytes.size()), dx = dev_of(x), ddy = dev_of(dy), dout(outN * 4);
    std::vector<float> runs[2];
    for (int run = 0; run < 2; run++) {
      reset();
      dout.put(out.data(), outN * 4);
      int code;
      if (op == MM_FWD)
        code = mote_cuda_matmul(dout.as<float>(), dx.as<float>(), dW.p, wdt, T, K, N, acc, nullptr);
      else if (op == MM_GRAD_IN)
        code = mote_cuda_matmul_grad_input(dout.as<float>(), ddy.as<float>(), dW.p, wdt, T, K, N, acc, nullptr);
      else
        code = mote_cuda_matmul_grad_weight(dout.as<float>(), ddy.as<float>(), dx.as<float>(), T, K, N, acc, nullptr);
      launch_check(code, mm_name(op));
      runs[run].resize(outN);
      dout.get(runs[run].data(), outN * 4);
    }
    const double ec = rel_err(runs[0].data(), cpu_out.data(), outN);
    const double er = rel_err(runs[0].data(), ref.data(), outN);
    const bool same = std::memcmp(runs[0].data(), runs[1].data(), outN * 4) == 0;
    report(fmt("cuda %s  rel_err_vs_cpu=%.3g vs_ref=%.3g bitwise_rerun=%s", desc.c_str(), ec, er, same ? "yes" : "NO"),
           ec <= kTol && er <= kTol && same);
  } catch (const std::exception& ex) {
    report(fmt("cuda %s  threw: %s", desc.c_str(), ex.what()), false);
  }
#endif
}

// ---- multi-LoRA --------------------------------------------------------------

enum SlotMode { S_RANDOM, S_SORTED, S_NONE, S_DUP, S_DISTINCT };
enum RankMode { R_FULL, R_MIXED, R_ONE };
const char* slot_name(int m) {
  static const char* n[] = {"random", "sorted", "none", "dup", "distinct"};
  return n[m];
}
const char* rank_name(int m) {
  static const char* n[] = {"full", "mixed", "one"};
  return n[m];
}

struct LoraCase {
  int T, K, L, R, Hin, Hout, adt, bdt, slots, ranks;
};

// Buffers of one LoRA call, in a fixed order.
enum Buf { X, Y, V, DV, DY, DX, DA, DB, NBUF };
const char* buf_name(int b) {
  static const char* n[] = {"x", "y", "v", "dv", "dy", "dx", "dA", "dB"};
  return n[b];
}

struct LoraData {
  LoraCase c;
  Weights A, B;
  std::vector<int> rank, slots, order, seg_start, seg_adapter;
  std::vector<float> scale, weight;
  std::vector<float> buf[NBUF];  // initial contents (inputs, and outputs' values before an accumulating call)
  int P = 0, G = 0;
};

// Routing metadata, exactly as src/ops/lora.ts LoraRouting builds it.
void build_routing(LoraData& d) {
  const int T = d.c.T, K = d.c.K, L = d.c.L;
  std::vector<int> counts(L, 0), offset(L, 0);
  for (int i = 0; i < T * K; i++)
    if (d.slots[i] >= 0) counts[d.slots[i]]++;
  d.seg_start.assign(1, 0);
  d.seg_adapter.clear();
  int p = 0;
  for (int e = 0; e < L; e++) {
    if (counts[e] == 0) continue;
    d.seg_adapter.push_back(e);
    offset[e] = p;
    p += counts[e];
    d.seg_start.push_back(p);
  }
  d.order.assign(std::max(1, p), 0);
  for (int i = 0; i < T * K; i++) {
    const int s = d.slots[i];
    if (s >= 0) d.order[offset[s]++] = i;
  }
  d.P = p;
  d.G = int(d.seg_adapter.size());
  if (d.seg_adapter.empty()) d.seg_adapter.push_back(0);  // the device tensor has at least one entry
}

LoraData make_lora(const LoraCase& c, Rng& rng) {
  LoraData d;
  d.c = c;
  const int T = c.T, K = c.K, L = c.L, R = c.R;
  // Rows past an adapter's rank hold random values too: kernels must not read them.
  d.A = make_weights(size_t(L) * R * c.Hin, c.adt, rng);
  d.B = make_weights(size_t(L) * c.Hout * R, c.bdt, rng);
  d.rank.resize(L);
  for (int e = 0; e < L; e++) d.rank[e] = c.ranks == R_FULL ? R : c.ranks == R_ONE ? 1 : rng.integer(1, R);
  if (c.ranks == R_MIXED) {
    d.rank[0] = 1;
    if (L > 1) d.rank[L - 1] = R;
  }
  d.scale.resize(L);
  for (auto& s : d.scale) s = float(0.5 + 1.5 * rng.uni());
  d.slots.resize(size_t(T) * K);
  d.weight.resize(size_t(T) * K);
  for (auto& w : d.weight) w = float(0.1 + 0.9 * rng.uni());
  for (int t = 0; t < T; t++)
    for (int k = 0; k < K; k++) {
      int& s = d.slots[size_t(t) * K + k];
      switch (c.slots) {
        case S_RANDOM:
          s = rng.uni() < 0.15 ? -1 : rng.integer(0, L - 1);
          break;
        case S_SORTED:
          s = k == 0 ? int((long long)t * std::min(L, 4) / T) % L : L - 1;
          break;  // runs; k=1 shared
        case S_NONE:
          s = -1;
          break;
        case S_DUP:
          s = k == 0 ? rng.integer(0, L - 1) : d.slots[size_t(t) * K];
          break;
        case S_DISTINCT:
          s = (t * K + k) % L;
          break;
      }
    }
  if (c.slots == S_DISTINCT) std::shuffle(d.slots.begin(), d.slots.end(), rng.g);  // unsorted
  build_routing(d);
  d.buf[X] = randv(size_t(T) * c.Hin, rng);
  d.buf[Y] = randv(size_t(T) * c.Hout, rng);
  d.buf[V] = randv(size_t(T) * K * R, rng);  // random past rank too: kernels must not read it
  d.buf[DV] = randv(size_t(T) * K * R, rng);
  d.buf[DY] = randv(size_t(T) * c.Hout, rng);
  d.buf[DX] = randv(size_t(T) * c.Hin, rng);
  d.buf[DA] = randv(size_t(L) * R * c.Hin, rng);
  d.buf[DB] = randv(size_t(L) * c.Hout * R, rng);
  return d;
}

enum Op { SHRINK, EXPAND, APPLY, SHRINK_GRAD, INPUT_GRAD, WEIGHT_GRAD };
const char* op_name(int op) {
  static const char* n[] = {"lora_shrink",      "lora_expand",     "lora_apply",
                            "lora_shrink_grad", "lora_input_grad", "lora_weight_grad"};
  return n[op];
}

// Outputs of an op, and whether each starts from its initial contents (true) or NaN (false).
std::vector<std::pair<int, bool>> op_outputs(int op, bool acc) {
  switch (op) {
    case SHRINK:
      return {{V, false}};
    case EXPAND:
      return {{Y, true}};
    case APPLY:
      return {{Y, true}, {V, false}};
    case SHRINK_GRAD:
      return {{DV, false}};
    case INPUT_GRAD:
      return {{DX, acc}};
    default:
      return {{DA, acc}, {DB, acc}};
  }
}

// float64 reference of each output of op (same order as op_outputs).
std::vector<std::vector<double>> lora_reference(int op, bool acc, const LoraData& d) {
  const LoraCase& c = d.c;
  const int T = c.T, K = c.K, L = c.L, R = c.R, Hin = c.Hin, Hout = c.Hout;
  auto slot = [&](int t, int k) { return d.slots[size_t(t) * K + k]; };
  auto shrink = [&](const std::vector<float>& x) {
    std::vector<double> v(size_t(T) * K * R, 0.0);
    for (int t = 0; t < T; t++)
      for (int k = 0; k < K; k++) {
        const int e = slot(t, k);
        if (e < 0) continue;
        for (int r = 0; r < d.rank[e]; r++) {
          double s = 0;
          const double* a = &d.A.ref[(size_t(e) * R + r) * Hin];
          for (int h = 0; h < Hin; h++) s += a[h] * double(x[size_t(t) * Hin + h]);
          v[(size_t(t) * K + k) * R + r] = s;
        }
      }
    return v;
  };
  auto expand = [&](std::vector<double>& y, auto&& vget) {
    for (int t = 0; t < T; t++)
      for (int k = 0; k < K; k++) {
        const int e = slot(t, k);
        if (e < 0) continue;
        const double c = double(d.weight[size_t(t) * K + k]) * double(d.scale[e]);
        for (int o = 0; o < Hout; o++) {
          double s = 0;
          for (int r = 0; r < d.rank[e]; r++)
            s += d.B.ref[(size_t(e) * Hout + o) * R + r] * vget((size_t(t) * K + k) * R + r);
          y[size_t(t) * Hout + o] += c * s;
        }
      }
  };
  auto init = [&](int b, bool from_init) {
    std::vector<double> r(d.buf[b].size(), 0.0);
    if (from_init)
      for (size_t i = 0; i < r.size(); i++) r[i] = d.buf[b][i];
    return r;
  };
  switch (op) {
    case SHRINK:
      return {shrink(d.buf[X])};
    case EXPAND: {
      std::vector<double> y = init(Y, true);
      expand(y, [&](size_t i) { return double(d.buf[V][i]); });
      return {y};
    }
    case APPLY: {
      std::vector<double> v = shrink(d.buf[X]);
      std::vector<double> y = init(Y, true);
      expand(y, [&](size_t i) { return v[i]; });
      return {y, v};
    }
    case SHRINK_GRAD: {
      std::vector<double> dv(size_t(T) * K * R, 0.0);
      for (int t = 0; t < T; t++)
        for (int k = 0; k < K; k++) {
          const int e = slot(t, k);
          if (e < 0) continue;
          const double c = double(d.weight[size_t(t) * K + k]) * double(d.scale[e]);
          for (int r = 0; r < d.rank[e]; r++) {
            double s = 0;
            for (int o = 0; o < Hout; o++)
              s += d.B.ref[(size_t(e) * Hout + o) * R + r] * double(d.buf[DY][size_t(t) * Hout + o]);
            dv[(size_t(t) * K + k) * R + r] = c * s;
          }
        }
      return {dv};
    }
    case INPUT_GRAD: {
      std::vector<double> dx = init(DX, acc);
      for (int t = 0; t < T; t++)
        for (int k = 0; k < K; k++) {
          const int e = slot(t, k);
          if (e < 0) continue;
          for (int r = 0; r < d.rank[e]; r++) {
            const double g = d.buf[DV][(size_t(t) * K + k) * R + r];
            const double* a = &d.A.ref[(size_t(e) * R + r) * Hin];
            for (int h = 0; h < Hin; h++) dx[size_t(t) * Hin + h] += a[h] * g;
          }
        }
      return {dx};
    }
    default: {
      std::vector<double> dA = init(DA, acc), dB = init(DB, acc);
      for (int t = 0; t < T; t++)
        for (int k = 0; k < K; k++) {
          const int e = slot(t, k);
          if (e < 0) continue;
          const size_t pr = (size_t(t) * K + k) * R;
          const double c = double(d.weight[size_t(t) * K + k]) * double(d.scale[e]);
          for (int r = 0; r < d.rank[e]; r++) {
            const double g = d.buf[DV][pr + r], vv = d.buf[V][pr + r];
            for (int h = 0; h < Hin; h++)
              dA[(size_t(e) * R + r) * Hin + h] += g * double(d.buf[X][size_t(t) * Hin + h]);
            for (int o = 0; o < Hout; o++)
              dB[(size_t(e) * Hout + o) * R + r] += c * double(d.buf[DY][size_t(t) * Hout + o]) * vv;
          }
        }
      (void)L;
      return {dA, dB};
    }
  }
}

mote_lora_args host_args(const LoraData& d, int strategy) {
  mote_lora_args a{};
  a.T = d.c.T;
  a.K = d.c.K;
  a.L = d.c.L;
  a.R = d.c.R;
  a.Hin = d.c.Hin;
  a.Hout = d.c.Hout;
  a.slots = d.slots.data();
  a.weight = d.weight.data();
  a.order = d.order.data();
  a.seg_start = d.seg_start.data();
  a.seg_adapter = d.seg_adapter.data();
  a.P = d.P;
  a.G = d.G;
  a.A = d.A.data();
  a.a_dtype = d.A.dtype;
  a.B = d.B.data();
  a.b_dtype = d.B.dtype;
  a.rank = d.rank.data();
  a.scale = d.scale.data();
  a.strategy = strategy;
  return a;
}

void run_cpu(int op, bool acc, const mote_lora_args& a, float* const* b) {
  switch (op) {
    case SHRINK:
      mote::cpu::lora_shrink(a, b[V], b[X]);
      break;
    case EXPAND:
      mote::cpu::lora_expand(a, b[Y], b[V]);
      break;
    case APPLY:
      mote::cpu::lora_apply(a, b[Y], b[V], b[X]);
      break;
    case SHRINK_GRAD:
      mote::cpu::lora_shrink_grad(a, b[DV], b[DY]);
      break;
    case INPUT_GRAD:
      mote::cpu::lora_input_grad(a, b[DX], b[DV], acc);
      break;
    default:
      mote::cpu::lora_weight_grad(a, b[DA], b[DB], b[X], b[DY], b[V], b[DV], acc);
      break;
  }
}

#ifdef MOTE_HAVE_CUDA
int run_cuda(int op, bool acc, const mote_lora_args* a, float* const* b) {
  switch (op) {
    case SHRINK:
      return mote_cuda_lora_shrink(a, b[V], b[X], nullptr);
    case EXPAND:
      return mote_cuda_lora_expand(a, b[Y], b[V], nullptr);
    case APPLY:
      return mote_cuda_lora_apply(a, b[Y], b[V], b[X], nullptr);
    case SHRINK_GRAD:
      return mote_cuda_lora_shrink_grad(a, b[DV], b[DY], nullptr);
    case INPUT_GRAD:
      return mote_cuda_lora_input_grad(a, b[DX], b[DV], acc, nullptr);
    default:
      return mote_cuda_lora_weight_grad(a, b[DA], b[DB], b[X], b[DY], b[V], b[DV], acc, nullptr);
  }
}

// The case's data on the device.
struct DevLora {
  Dev A, B, rank, slots, order, seg_start, seg_adapter, scale, weight, buf[NBUF];
  explicit DevLora(const LoraData& d)
      : A(d.A.data(), d.A.bytes.size()),
        B(d.B.data(), d.B.bytes.size()),
        rank(dev_of(d.rank)),
        slots(dev_of(d.slots)),
        order(dev_of(d.order)),
        seg_start(dev_of(d.seg_start)),
        seg_adapter(dev_of(d.seg_adapter)),
        scale(dev_of(d.scale)),
        weight(dev_of(d.weight)) {
    for (int b = 0; b < NBUF; b++) buf[b] = Dev(d.buf[b].size() * 4);
  }
  mote_lora_args args(const LoraData& d, int strategy) const {
    mote_lora_args a = host_args(d, strategy);
    a.slots = slots.as<int>();
    a.weight = weight.as<float>();
    a.order = order.as<int>();
    a.seg_start = seg_start.as<int>();
    a.seg_adapter = seg_adapter.as<int>();
    a.A = A.p;
    a.B = B.p;
    a.rank = rank.as<int>();
    a.scale = scale.as<float>();
    return a;
  }
};
#endif

std::string lora_desc(const LoraCase& c, int op, int strategy, bool acc) {
  std::string s = fmt("%-16s T=%d K=%d L=%d R=%d Hin=%d Hout=%d A=%s B=%s %s slots=%s ranks=%s", op_name(op), c.T, c.K,
                      c.L, c.R, c.Hin, c.Hout, dtype_name(c.adt), dtype_name(c.bdt), strategy ? "sgmv" : "bgmv",
                      slot_name(c.slots), rank_name(c.ranks));
  if (op == INPUT_GRAD || op == WEIGHT_GRAD) s += fmt(" acc=%d", int(acc));
  return s;
}

void test_lora(const LoraCase& c, Rng& rng) {
  const LoraData d = make_lora(c, rng);
#ifdef MOTE_HAVE_CUDA
  std::unique_ptr<DevLora> dev;
  if (g_cuda) {
    try {
      dev = std::make_unique<DevLora>(d);
    } catch (const std::exception& ex) {
      report(fmt("cuda lora case T=%d K=%d L=%d R=%d Hin=%d Hout=%d  setup threw: %s", c.T, c.K, c.L, c.R, c.Hin,
                 c.Hout, ex.what()),
             false);
    }
  }
#endif
  for (int strategy = 0; strategy < 2; strategy++)
    for (int op = SHRINK; op <= WEIGHT_GRAD; op++)
      for (int acc = 0; acc < ((op == INPUT_GRAD || op == WEIGHT_GRAD) ? 2 : 1); acc++) {
        const std::string desc = lora_desc(c, op, strategy, acc);
        const auto outs = op_outputs(op, acc);
        const auto refs = lora_reference(op, acc, d);
        // CPU run on fresh copies of every buffer.
        std::vector<float> host[NBUF];
        float* hp[NBUF];
        auto reset = [&] {
          for (int b = 0; b < NBUF; b++) host[b] = d.buf[b];
          for (auto [b, from_init] : outs)
            if (!from_init) std::fill(host[b].begin(), host[b].end(), kNaN);
          for (int b = 0; b < NBUF; b++) hp[b] = host[b].data();
        };
        reset();
        bool cpu_ok = false;
        try {
          run_cpu(op, acc, host_args(d, strategy), hp);
          std::string line = "cpu  " + desc;
          bool ok = true;
          for (size_t i = 0; i < outs.size(); i++) {
            const int b = outs[i].first;
            const double e = rel_err(host[b].data(), refs[i].data(), host[b].size());
            line += fmt("  %s rel_err=%.3g", buf_name(b), e);
            ok = ok && e <= kTol;
          }
          report(line, ok);
          cpu_ok = true;
        } catch (const std::exception& ex) {
          report(fmt("cpu  %s  threw: %s", desc.c_str(), ex.what()), false);
        }
#ifdef MOTE_HAVE_CUDA
        if (!dev) continue;
        try {
          std::vector<float> cpu_out[NBUF];
          for (auto [b, f] : outs) cpu_out[b] = host[b];
          const mote_lora_args a = dev->args(d, strategy);
          float* dp[NBUF];
          for (int b = 0; b < NBUF; b++) dp[b] = dev->buf[b].as<float>();
          std::vector<float> runs[2][NBUF];
          for (int run = 0; run < 2; run++) {
            reset();
            for (int b = 0; b < NBUF; b++) dev->buf[b].put(host[b].data(), host[b].size() * 4);
            launch_check(run_cuda(op, acc, &a, dp), op_name(op));
            for (auto [b, f] : outs) {
              runs[run][b].resize(host[b].size());
              dev->buf[b].get(runs[run][b].data(), host[b].size() * 4);
            }
          }
          std::string line = "cuda " + desc;
          bool ok = true;
          for (size_t i = 0; i < outs.size(); i++) {
            const int b = outs[i].first;
            const size_t n = runs[0][b].size();
            const double er = rel_err(runs[0][b].data(), refs[i].data(), n);
            const double ec = cpu_ok ? rel_err(runs[0][b].data(), cpu_out[b].data(), n) : std::nan("");
            const bool same = std::memcmp(runs[0][b].data(), runs[1][b].data(), n * 4) == 0;
            line +=
                fmt("  %s rel_err_vs_cpu=%.3g vs_ref=%.3g bitwise_rerun=%s", buf_name(b), ec, er, same ? "yes" : "NO");
            ok = ok && (cpu_ok ? ec <= kTol : true) && er <= kTol && same;
          }
          report(line, ok);
        } catch (const std::exception& ex) {
          report(fmt("cuda %s  threw: %s", desc.c_str(), ex.what()), false);
        }
#else
        (void)cpu_ok;
#endif
      }
}

// ---- model kernel families ---------------------------------------------------
// A case is a list of host arrays (inputs, and outputs with their initial contents: NaN where
// the kernel must write) plus the float64 reference of every output. run_model_case runs the
// CPU kernel on copies and checks it against the reference; with a device, it runs the CUDA
// kernel twice on device copies and checks it against the CPU result, the reference and itself
// (bit for bit). Reference entries of ±inf must be matched exactly and are left out of the norm.

struct Arr {
  std::string name;
  std::vector<uint8_t> bytes;  // initial contents
  bool out = false;
  std::vector<double> ref;  // outputs only
};

struct ModelCase {
  std::string op, desc;
  std::vector<Arr> arrs;
  template <typename T>
  int in(const char* name, const std::vector<T>& v) {
    Arr a;
    a.name = name;
    a.bytes.resize(v.size() * sizeof(T));
    if (!v.empty()) std::memcpy(a.bytes.data(), v.data(), a.bytes.size());
    arrs.push_back(std::move(a));
    return int(arrs.size()) - 1;
  }
  // an output starting from `init` (f32), expected to end as `ref`
  int out(const char* name, const std::vector<float>& init, std::vector<double> ref) {
    const int i = in(name, init);
    arrs[i].out = true;
    arrs[i].ref = std::move(ref);
    return i;
  }
  // an output the kernel must overwrite: poisoned with NaN
  int out_nan(const char* name, std::vector<double> ref) {
    const std::vector<float> init(ref.size(), kNaN);
    return out(name, init, std::move(ref));
  }
};

using ModelFn = std::function<void(void* const*)>;
using CudaModelFn = std::function<int(void* const*)>;

inline float* F(void* const* p, int i) { return static_cast<float*>(p[i]); }
inline int* I(void* const* p, int i) { return static_cast<int*>(p[i]); }

#ifdef MOTE_HAVE_CUDA
#define CUDA_FN(...) CudaModelFn([&](void* const* p) -> int { __VA_ARGS__ })
#else
#define CUDA_FN(...) CudaModelFn()
#endif

// ‖out − ref‖ / ‖ref‖ over the finite entries of ref; infinite entries must match exactly.
double rel_err_inf(const float* out, const double* ref, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    if (std::isnan(ref[i])) {  // NaN where the reference is NaN (a NaN input must not vanish)
      if (!std::isnan(out[i])) return std::numeric_limits<double>::infinity();
      continue;
    }
    if (std::isinf(ref[i])) {
      if (double(out[i]) != ref[i]) return std::numeric_limits<double>::infinity();
      continue;
    }
    if (!std::isfinite(out[i])) return std::numeric_limits<double>::infinity();
    const double d = double(out[i]) - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

void run_model_case(const ModelCase& c, const ModelFn& cpu, const CudaModelFn& cuda) {
  const size_t N = c.arrs.size();
  const std::string desc = fmt("%-16s %s", c.op.c_str(), c.desc.c_str());
  std::vector<std::vector<uint8_t>> host(N);
  std::vector<void*> hp(N);
  for (size_t i = 0; i < N; i++) {
    host[i] = c.arrs[i].bytes;
    hp[i] = host[i].data();
  }
  bool cpu_ok = false;
  try {
    cpu(hp.data());
    std::string line = "cpu  " + desc;
    bool ok = true;
    for (size_t i = 0; i < N; i++) {
      const Arr& a = c.arrs[i];
      if (!a.out) continue;
      const double e = rel_err_inf(reinterpret_cast<const float*>(host[i].data()), a.ref.data(), a.ref.size());
      line += fmt("  %s rel_err=%.3g", a.name.c_str(), e);
      ok = ok && e <= kTol;
    }
    report(line, ok);
    cpu_ok = true;
  } catch (const std::exception& ex) {
    report(fmt("cpu  %s  threw: %s", desc.c_str(), ex.what()), false);
  }
#ifdef MOTE_HAVE_CUDA
  if (!g_cuda || !cuda) return;
  try {
    std::vector<Dev> dev;
    dev.reserve(N);
    std::vector<void*> dp(N);
    for (size_t i = 0; i < N; i++) {
      dev.emplace_back(c.arrs[i].bytes.size());
      dp[i] = dev[i].p;
    }
    std::vector<std::vector<uint8_t>> runs[2];
    for (int run = 0; run < 2; run++) {
      runs[run].resize(N);
      for (size_t i = 0; i < N; i++) dev[i].put(c.arrs[i].bytes.data(), c.arrs[i].bytes.size());
      launch_check(cuda(dp.data()), c.op.c_str());
      for (size_t i = 0; i < N; i++) {
        if (!c.arrs[i].out) continue;
        runs[run][i].resize(c.arrs[i].bytes.size());
        dev[i].get(runs[run][i].data(), runs[run][i].size());
      }
    }
    std::string line = "cuda " + desc;
    bool ok = true;
    for (size_t i = 0; i < N; i++) {
      const Arr& a = c.arrs[i];
      if (!a.out) continue;
      const size_t n = a.ref.size();
      const float* g = reinterpret_cast<const float*>(runs[0][i].data());
      const double er = rel_err_inf(g, a.ref.data(), n);
      double ec = std::nan("");
      if (cpu_ok) {
        const float* h = reinterpret_cast<const float*>(host[i].data());
        const std::vector<double> hd(h, h + n);
        ec = rel_err_inf(g, hd.data(), n);
      }
      const bool same = runs[0][i] == runs[1][i];
      line += fmt("  %s rel_err_vs_cpu=%.3g vs_ref=%.3g bitwise_rerun=%s", a.name.c_str(), ec, er, same ? "yes" : "NO");
      ok = ok && (cpu_ok ? ec <= kTol : true) && er <= kTol && same;
    }
    report(line, ok);
  } catch (const std::exception& ex) {
    report(fmt("cuda %s  threw: %s", desc.c_str(), ex.what()), false);
  }
#else
  (void)cuda;
  (void)cpu_ok;
#endif
}

std::vector<float> scaled(std::vector<float> v, float s) {
  for (auto& e : v) e *= s;
  return v;
}

// -- embedding

void test_embedding(int T, int V, int H, int dt, Rng& rng) {
  const Weights E = make_weights(size_t(V) * H, dt, rng);
  std::vector<int> ids(T);
  for (auto& id : ids) id = rng.integer(0, V - 1);
  std::vector<double> ref(size_t(T) * H);
  for (int t = 0; t < T; t++)
    for (int h = 0; h < H; h++) ref[size_t(t) * H + h] = E.ref[size_t(ids[t]) * H + h];
  ModelCase c;
  c.op = "embedding";
  c.desc = fmt("T=%d V=%d H=%d E=%s", T, V, H, dtype_name(dt));
  const int y = c.out_nan("y", std::move(ref)), iid = c.in("ids", ids), e = c.in("E", E.bytes);
  run_model_case(
      c, [&](void* const* p) { mote::cpu::embedding(F(p, y), I(p, iid), p[e], dt, T, V, H); },
      CUDA_FN(return mote_cuda_embedding(F(p, y), I(p, iid), p[e], dt, T, V, H, nullptr);));
}

// ids: the value of each token drawn from [0, distinct) (repeats when distinct < T)
void test_embedding_grad(int T, int V, int H, int distinct, bool acc, Rng& rng) {
  std::vector<int> ids(T);
  for (auto& id : ids) id = rng.integer(0, std::min(V, distinct) - 1) * (V / std::min(V, distinct));
  // grouped form, as src/ops/embedding.ts builds it: order stable-sorted by id, segments
  std::vector<int> order(T);
  for (int t = 0; t < T; t++) order[t] = t;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return ids[a] < ids[b]; });
  std::vector<int> seg_start, seg_ids;
  for (int i = 0; i < T; i++)
    if (i == 0 || ids[order[i]] != ids[order[i - 1]]) {
      seg_start.push_back(i);
      seg_ids.push_back(ids[order[i]]);
    }
  seg_start.push_back(T);
  const int G = int(seg_ids.size());
  const std::vector<float> dy = randv(size_t(T) * H, rng), init = randv(size_t(V) * H, rng);
  std::vector<double> ref(size_t(V) * H, 0.0);
  if (acc)
    for (size_t i = 0; i < ref.size(); i++) ref[i] = init[i];
  for (int t = 0; t < T; t++)
    for (int h = 0; h < H; h++) ref[size_t(ids[t]) * H + h] += dy[size_t(t) * H + h];
  ModelCase c;
  c.op = "embedding_grad";
  c.desc = fmt("T=%d V=%d H=%d G=%d acc=%d", T, V, H, G, int(acc));
  const int dE = acc ? c.out("dE", init, std::move(ref)) : c.out_nan("dE", std::move(ref));
  const int idy = c.in("dy", dy), io = c.in("order", order), is = c.in("seg_start", seg_start),
            ii = c.in("seg_ids", seg_ids);
  run_model_case(
      c,
      [&](void* const* p) {
        mote::cpu::embedding_grad(F(p, dE), F(p, idy), I(p, io), I(p, is), I(p, ii), G, T, V, H, acc);
      },
      CUDA_FN(return mote_cuda_embedding_grad(F(p, dE), F(p, idy), I(p, io), I(p, is), I(p, ii), G, T, V, H, acc,
                                              nullptr);));
}

// -- copy_rows: raw bits, so every check is exact (memcmp), not a tolerance

// N pairs; dst rows distinct (a shuffled subset), src rows random (repeats allowed). In place:
// dst = src, rows [0, N) written from rows [N, Rd) (no row both read and written). off: both base
// pointers moved by `off` elements, so the CUDA launcher picks narrower units (16/8/4/2 bytes).
void test_copy_rows(int N, int W, int Rd, int Rs, int dt, bool inplace, int off, Rng& rng) {
  const size_t es = (dt == 1 || dt == 2) ? 2 : 4, row = size_t(W) * es, pad = size_t(off) * es;
  if (inplace) Rs = Rd;
  std::vector<int> dr(inplace ? N : Rd), sr(N);
  for (size_t i = 0; i < dr.size(); i++) dr[i] = int(i);
  std::shuffle(dr.begin(), dr.end(), rng.g);
  dr.resize(N);
  for (auto& s : sr) s = inplace ? rng.integer(N, Rd - 1) : rng.integer(0, Rs - 1);
  auto bytes = [&](size_t n) {
    std::vector<uint8_t> v(n);
    for (auto& b : v) b = uint8_t(rng.integer(0, 255));
    return v;
  };
  const std::vector<uint8_t> dst0 = bytes(pad + size_t(Rd) * row),
                             src0 = inplace ? dst0 : bytes(pad + size_t(Rs) * row);
  std::vector<uint8_t> want = dst0;
  for (int i = 0; i < N; i++)
    std::memcpy(want.data() + pad + size_t(dr[i]) * row, src0.data() + pad + size_t(sr[i]) * row, row);
  const std::string desc = fmt("%-16s N=%d W=%d Rd=%d Rs=%d %s%s off=%d", "copy_rows", N, W, Rd, Rs,
                               dt == 3 ? "i32" : dtype_name(dt), inplace ? " in-place" : "", off);
  try {
    std::vector<uint8_t> d = dst0, s = src0;
    void* dp = d.data() + pad;
    mote::cpu::copy_rows(dp, inplace ? dp : static_cast<void*>(s.data() + pad), dr.data(), sr.data(), dt, N, W, Rd, Rs);
    report(fmt("cpu  %s  exact=%s", desc.c_str(), d == want ? "yes" : "NO"), d == want);
  } catch (const std::exception& ex) {
    report(fmt("cpu  %s  threw: %s", desc.c_str(), ex.what()), false);
  }
#ifdef MOTE_HAVE_CUDA
  if (!g_cuda) return;
  try {
    Dev dd(dst0.size()), ds = dev_of(src0), idr = dev_of(dr), isr = dev_of(sr);
    std::vector<uint8_t> runs[2];
    for (int run = 0; run < 2; run++) {
      dd.put(dst0.data(), dst0.size());
      uint8_t* dp = dd.as<uint8_t>() + pad;
      const void* sp = inplace ? static_cast<const void*>(dp) : static_cast<const void*>(ds.as<uint8_t>() + pad);
      launch_check(mote_cuda_copy_rows(dp, sp, idr.as<int>(), isr.as<int>(), dt, N, W, Rd, Rs, nullptr), "copy_rows");
      runs[run].resize(dst0.size());
      dd.get(runs[run].data(), runs[run].size());
    }
    const bool ok = runs[0] == want && runs[1] == want;
    report(fmt("cuda %s  exact=%s bitwise_rerun=%s", desc.c_str(), runs[0] == want ? "yes" : "NO",
               runs[0] == runs[1] ? "yes" : "NO"),
           ok);
  } catch (const std::exception& ex) {
    report(fmt("cuda %s  threw: %s", desc.c_str(), ex.what()), false);
  }
#endif
}

// A bad index throws before anything is written.
void test_copy_rows_bad() {
  std::vector<float> dst(12, 1.f), src(12, 2.f);
  const int dr[] = {0, 3}, sr_bad[] = {0, 4}, dr_bad[] = {1, -1}, sr[] = {0, 1};
  bool threw_src = false, threw_dst = false;
  try {
    mote::cpu::copy_rows(dst.data(), src.data(), dr, sr_bad, 0, 2, 3, 4, 4);
  } catch (const std::out_of_range&) {
    threw_src = true;
  }
  try {
    mote::cpu::copy_rows(dst.data(), src.data(), dr_bad, sr, 0, 2, 3, 4, 4);
  } catch (const std::out_of_range&) {
    threw_dst = true;
  }
  const bool untouched = std::all_of(dst.begin(), dst.end(), [](float v) { return v == 1.f; });
  report(fmt("cpu  %-16s bad indices throw std::out_of_range (src=%s dst=%s), dst untouched=%s", "copy_rows",
             threw_src ? "yes" : "NO", threw_dst ? "yes" : "NO", untouched ? "yes" : "NO"),
         threw_src && threw_dst && untouched);
}

// -- rmsnorm

void test_rmsnorm(int T, int H, int dt, Rng& rng) {
  const float eps = 1e-5f;
  const std::vector<float> x = randv(size_t(T) * H, rng);
  const Weights w = make_weights(size_t(H), dt, rng);
  std::vector<double> ry(size_t(T) * H), rr(T);
  for (int t = 0; t < T; t++) {
    double ss = 0;
    for (int h = 0; h < H; h++) ss += double(x[size_t(t) * H + h]) * x[size_t(t) * H + h];
    rr[t] = 1 / std::sqrt(ss / H + double(eps));
    for (int h = 0; h < H; h++) ry[size_t(t) * H + h] = x[size_t(t) * H + h] * rr[t] * w.ref[h];
  }
  ModelCase c;
  c.op = "rmsnorm";
  c.desc = fmt("T=%d H=%d w=%s", T, H, dtype_name(dt));
  const int y = c.out_nan("y", std::move(ry)), r = c.out_nan("rstd", std::move(rr)), ix = c.in("x", x),
            iw = c.in("w", w.bytes);
  run_model_case(
      c, [&](void* const* p) { mote::cpu::rmsnorm(F(p, y), F(p, r), F(p, ix), p[iw], dt, T, H, eps); },
      CUDA_FN(return mote_cuda_rmsnorm(F(p, y), F(p, r), F(p, ix), p[iw], dt, T, H, eps, nullptr);));
}

void test_rmsnorm_grad(int T, int H, int dt, bool acc, Rng& rng) {
  const std::vector<float> x = randv(size_t(T) * H, rng), dy = randv(size_t(T) * H, rng), init = randv(size_t(H), rng);
  const Weights w = make_weights(size_t(H), dt, rng);
  std::vector<float> rstd(T);  // as the forward saves it (f32); the reference uses these values
  for (int t = 0; t < T; t++) {
    double ss = 0;
    for (int h = 0; h < H; h++) ss += double(x[size_t(t) * H + h]) * x[size_t(t) * H + h];
    rstd[t] = float(1 / std::sqrt(ss / H + 1e-5));
  }
  std::vector<double> rdx(size_t(T) * H), rdw(H, 0.0);
  if (acc)
    for (int h = 0; h < H; h++) rdw[h] = init[h];
  for (int t = 0; t < T; t++) {
    const double r = rstd[t];
    double gx = 0;
    for (int h = 0; h < H; h++) gx += double(dy[size_t(t) * H + h]) * w.ref[h] * x[size_t(t) * H + h];
    for (int h = 0; h < H; h++) {
      const size_t i = size_t(t) * H + h;
      rdx[i] = r * dy[i] * w.ref[h] - r * r * r * x[i] * gx / H;
      rdw[h] += double(dy[i]) * x[i] * r;
    }
  }
  ModelCase c;
  c.op = "rmsnorm_grad";
  c.desc = fmt("T=%d H=%d w=%s acc=%d", T, H, dtype_name(dt), int(acc));
  const int dx = c.out_nan("dx", std::move(rdx));
  const int dw = acc ? c.out("dw", init, std::move(rdw)) : c.out_nan("dw", std::move(rdw));
  const int idy = c.in("dy", dy), ix = c.in("x", x), iw = c.in("w", w.bytes), ir = c.in("rstd", rstd);
  run_model_case(
      c,
      [&](void* const* p) {
        mote::cpu::rmsnorm_grad(F(p, dx), F(p, dw), F(p, idy), F(p, ix), p[iw], dt, F(p, ir), T, H, acc);
      },
      CUDA_FN(return mote_cuda_rmsnorm_grad(F(p, dx), F(p, dw), F(p, idy), F(p, ix), p[iw], dt, F(p, ir), T, H, acc,
                                            nullptr);));
}

// -- rope

void test_rope(int T, int heads, int D, bool inverse, bool inplace, int maxpos, Rng& rng) {
  const int half = D / 2;
  std::vector<int> pos(T);
  for (auto& q : pos) q = rng.integer(0, maxpos);
  pos[T - 1] = maxpos;
  std::vector<float> invf(half);
  for (int i = 0; i < half; i++) invf[i] = float(1.0 / std::pow(500000.0, 2.0 * i / D));
  const std::vector<float> x = randv(size_t(T) * heads * D, rng);
  std::vector<double> ref(x.size());
  for (int t = 0; t < T; t++)
    for (int i = 0; i < half; i++) {
      const long double ang = (long double)pos[t] * (long double)invf[i];  // exact: 31 + 24 bits < 64
      const double cs = double(std::cos(ang)), sn = (inverse ? -1.0 : 1.0) * double(std::sin(ang));
      for (int h = 0; h < heads; h++) {
        const size_t b = (size_t(t) * heads + h) * D;
        ref[b + i] = double(x[b + i]) * cs - double(x[b + i + half]) * sn;
        ref[b + i + half] = double(x[b + i + half]) * cs + double(x[b + i]) * sn;
      }
    }
  ModelCase c;
  c.op = "rope";
  c.desc = fmt("T=%d heads=%d D=%d maxpos=%d inverse=%d inplace=%d", T, heads, D, maxpos, int(inverse), int(inplace));
  const int y = inplace ? c.out("x", x, std::move(ref)) : c.out_nan("y", std::move(ref));
  const int ix = inplace ? y : c.in("x", x), ip = c.in("positions", pos), ifr = c.in("inv_freq", invf);
  run_model_case(
      c, [&](void* const* p) { mote::cpu::rope(F(p, y), F(p, ix), I(p, ip), F(p, ifr), T, heads, D, inverse); },
      CUDA_FN(return mote_cuda_rope(F(p, y), F(p, ix), I(p, ip), F(p, ifr), T, heads, D, inverse, nullptr);));
}

// -- attention

struct AttnLayout {
  const char* kind;
  int Tq = 0, Tk = 0, S = 0, num_seqs = 0;
  std::vector<int> q_seq, q_pos, k_seq, k_pos, q_seg, k_seg, blocked;
  // explicit key runs (seq, start, end) as a paged cache gives them; empty: the maximal stretches
  std::vector<int> run_seq, run_start, run_end;
  // the `ranges` array of src/ops/attention.ts and its run count
  std::vector<int> ranges;
  int num_runs = 0;
  std::vector<int> run_of;  // per key: the sequence whose run holds it (−2: none)
};

enum { L_PREFILL, L_SEGMENTS, L_DECODE, L_CROSS, L_NO_KEYS, L_PAGED };

// The kernels' `ranges` (per query its key runs, per key its query runs, the run table), built as
// src/ops/attention.ts builds it: runs grouped by sequence in order of first appearance.
void build_ranges(AttnLayout& l) {
  using Runs = std::vector<std::pair<int, std::vector<int>>>;  // (seq, [start, end, ...]) in first-seen order
  auto add = [](Runs& r, int s, int a, int b) {
    for (auto& e : r)
      if (e.first == s) {
        e.second.push_back(a);
        e.second.push_back(b);
        return;
      }
    r.push_back({s, {a, b}});
  };
  auto stretches = [&](const std::vector<int>& ids, int n) {
    Runs r;
    for (int j = 0; j < n;) {
      int e = j + 1;
      while (e < n && ids[e] == ids[j]) e++;
      if (ids[j] >= 0) add(r, ids[j], j, e);
      j = e;
    }
    return r;
  };
  Runs kr;
  if (l.run_seq.empty())
    kr = stretches(l.k_seq, l.Tk);
  else
    for (size_t r = 0; r < l.run_seq.size(); r++)
      if (l.run_start[r] < l.run_end[r]) add(kr, l.run_seq[r], l.run_start[r], l.run_end[r]);
  const Runs qr = stretches(l.q_seq, l.Tq);
  auto has = [](const Runs& r, int s) {
    for (auto& e : r)
      if (e.first == s) return true;
    return false;
  };
  std::vector<int> table;
  std::vector<std::pair<int, std::pair<int, int>>> kat, qat;  // seq → (first, count)
  for (auto& e : kr)
    if (has(qr, e.first)) {
      kat.push_back({e.first, {int(table.size() / 2), int(e.second.size() / 2)}});
      table.insert(table.end(), e.second.begin(), e.second.end());
    }
  for (auto& e : qr) {
    qat.push_back({e.first, {int(table.size() / 2), int(e.second.size() / 2)}});
    table.insert(table.end(), e.second.begin(), e.second.end());
  }
  l.run_of.assign(l.Tk, -2);
  for (auto& e : kr)
    for (size_t r = 0; r < e.second.size(); r += 2)
      for (int j = e.second[r]; j < e.second[r + 1]; j++) l.run_of[j] = e.first;
  l.ranges.assign(2 * (size_t(l.Tq) + l.Tk) + table.size(), 0);
  auto find = [](const std::vector<std::pair<int, std::pair<int, int>>>& at, int s) -> std::pair<int, int> {
    for (auto& e : at)
      if (e.first == s) return e.second;
    return {0, 0};
  };
  for (int i = 0; i < l.Tq; i++) {
    const auto f = find(kat, l.q_seq[i]);
    l.ranges[2 * i] = f.first;
    l.ranges[2 * i + 1] = f.second;
  }
  for (int j = 0; j < l.Tk; j++) {
    const auto f = l.k_seq[j] >= 0 && l.run_of[j] == l.k_seq[j] ? find(qat, l.k_seq[j]) : std::pair<int, int>{0, 0};
    l.ranges[2 * (size_t(l.Tq) + j)] = f.first;
    l.ranges[2 * (size_t(l.Tq) + j) + 1] = f.second;
  }
  std::copy(table.begin(), table.end(), l.ranges.begin() + 2 * (size_t(l.Tq) + l.Tk));
  l.num_runs = int(table.size() / 2);
  if (l.ranges.empty()) l.ranges.assign(1, 0);
}

// Random lengths in [1, maxlen] per sequence. PREFILL/SEGMENTS: keys are the queries, tokens
// shuffled (packing order is free); SEGMENTS adds S = 4 steps per sequence with random blocked
// pairs. DECODE: a cache of [0, maxlen] tokens per sequence and 1–2 new tokens (the queries)
// appended to the keys, with S = 3 segments. CROSS: unrelated key tokens; some queries see no key.
// NO_KEYS: CROSS queries and no keys at all (Tk = 0). PAGED: a paged KV cache — each sequence's
// tokens (the last 1–2 are the queries) in blocks of 4 slots scattered over a shuffled slot pool
// with free slots (k_seq = −1), the block table given as explicit key runs; one sequence in
// three leaves its first block out of its runs (those keys are not seen).
AttnLayout make_layout(int kind, int nseq, int maxlen, Rng& rng) {
  AttnLayout l;
  static const char* names[] = {"prefill", "segments", "decode", "cross", "no-keys", "paged"};
  l.kind = names[kind];
  const int S = kind == L_SEGMENTS ? 4 : kind == L_DECODE || kind == L_PAGED ? 3 : 0;
  std::vector<int> len(nseq);
  for (auto& n : len) n = rng.integer(1, maxlen);
  auto seg_of = [&](int p, int n) { return std::min(S - 1, int((long long)p * S / n)); };
  if (kind == L_PREFILL || kind == L_SEGMENTS) {
    std::vector<std::pair<int, int>> tok;
    for (int s = 0; s < nseq; s++)
      for (int p = 0; p < len[s]; p++) tok.push_back({s, p});
    std::shuffle(tok.begin(), tok.end(), rng.g);
    for (auto [s, p] : tok) {
      l.q_seq.push_back(s);
      l.q_pos.push_back(p);
      if (S) l.q_seg.push_back(seg_of(p, len[s]));
    }
    l.k_seq = l.q_seq;
    l.k_pos = l.q_pos;
    l.k_seg = l.q_seg;
  } else if (kind == L_DECODE) {
    for (int s = 0; s < nseq; s++) {
      const int cache = rng.integer(0, maxlen), fresh = rng.integer(1, 2), n = cache + fresh;
      for (int p = 0; p < cache; p++) {
        l.k_seq.push_back(s);
        l.k_pos.push_back(p);
        l.k_seg.push_back(seg_of(p, n));
      }
      for (int p = cache; p < n; p++) {
        l.q_seq.push_back(s);
        l.q_pos.push_back(p);
        l.q_seg.push_back(seg_of(p, n));
      }
    }
    // the new tokens' own keys follow the cache
    l.k_seq.insert(l.k_seq.end(), l.q_seq.begin(), l.q_seq.end());
    l.k_pos.insert(l.k_pos.end(), l.q_pos.begin(), l.q_pos.end());
    l.k_seg.insert(l.k_seg.end(), l.q_seg.begin(), l.q_seg.end());
  } else if (kind == L_PAGED) {
    const int B = 4;
    std::vector<int> n(nseq), nb(nseq);
    int blocks = 0;
    for (int s = 0; s < nseq; s++) {
      n[s] = rng.integer(0, maxlen) + rng.integer(1, 2);
      nb[s] = (n[s] + B - 1) / B;
      blocks += nb[s];
    }
    blocks += rng.integer(0, 3);  // free blocks
    std::vector<int> pool(blocks);
    for (int b = 0; b < blocks; b++) pool[b] = b;
    std::shuffle(pool.begin(), pool.end(), rng.g);
    l.k_seq.assign(size_t(blocks) * B, -1);
    l.k_pos.assign(size_t(blocks) * B, 2147483647);
    l.k_seg.assign(size_t(blocks) * B, 0);
    int next = 0;
    for (int s = 0; s < nseq; s++) {
      const int fresh = n[s] > 1 && rng.uni() < 0.5 ? 2 : 1;
      for (int b = 0; b < nb[s]; b++) {
        const int blk = pool[next++];
        if (!(s % 3 == 1 && b == 0 && nb[s] > 1)) {
          l.run_seq.push_back(s);
          l.run_start.push_back(blk * B);
          l.run_end.push_back(blk * B + B);
        }
        for (int t = b * B; t < std::min(n[s], (b + 1) * B); t++) {
          const int slot = blk * B + t % B;
          l.k_seq[slot] = s;
          l.k_pos[slot] = t;
          l.k_seg[slot] = seg_of(t, n[s]);
          if (t >= n[s] - fresh) {
            l.q_seq.push_back(s);
            l.q_pos.push_back(t);
            l.q_seg.push_back(seg_of(t, n[s]));
          }
        }
      }
    }
  } else {
    const int Tq = nseq * maxlen, Tk = kind == L_NO_KEYS ? 0 : rng.integer(1, 2 * nseq * maxlen);
    for (int i = 0; i < Tq; i++) {
      l.q_seq.push_back(rng.integer(0, nseq));  // sequence nseq has no keys
      l.q_pos.push_back(rng.integer(0, maxlen));
    }
    l.q_pos[0] = 0;
    for (int j = 0; j < Tk; j++) {
      l.k_seq.push_back(rng.integer(0, nseq - 1));
      l.k_pos.push_back(rng.integer(1, maxlen));  // position 0 sees nothing
    }
  }
  l.Tq = int(l.q_seq.size());
  l.Tk = int(l.k_seq.size());
  l.S = S;
  if (S) {
    l.num_seqs = nseq;
    l.blocked.assign(size_t(nseq) * S * S, 0);
    for (int s = 0; s < nseq; s++)
      for (int a = 1; a < S; a++)
        for (int b = 0; b < a; b++) l.blocked[(size_t(s) * S + a) * S + b] = rng.uni() < 0.4 ? 1 : 0;
  } else {
    l.q_seg.assign(1, 0);  // device tensors have at least one entry
    l.k_seg.assign(1, 0);
    l.blocked.assign(1, 0);
  }
  build_ranges(l);
  return l;
}

bool attn_visible(const AttnLayout& l, int i, int j) {
  if (l.k_seq[j] != l.q_seq[i] || l.run_of[j] != l.q_seq[i] || l.k_pos[j] > l.q_pos[i]) return false;
  return !(l.S > 0 && l.blocked[(size_t(l.q_seq[i]) * l.S + l.q_seg[i]) * l.S + l.k_seg[j]]);
}

// Adds the layout's eight arrays to a case; returns the index of the first.
int add_layout(ModelCase& c, const AttnLayout& l) {
  const int first = c.in("q_seq", l.q_seq);
  c.in("q_pos", l.q_pos);
  c.in("k_seq", l.k_seq);
  c.in("k_pos", l.k_pos);
  c.in("q_seg", l.q_seg);
  c.in("k_seg", l.k_seg);
  c.in("blocked", l.blocked);
  c.in("ranges", l.ranges);
  return first;
}

template <typename A>
A attn_args(const AttnLayout& l, int nH, int nKv, int D, float scale, void* const* p, int base) {
  A a{};
  a.Tq = l.Tq;
  a.Tk = l.Tk;
  a.nH = nH;
  a.nKv = nKv;
  a.D = D;
  a.S = l.S;
  a.num_seqs = l.num_seqs;
  a.scale = scale;
  a.q_seq = I(p, base);
  a.q_pos = I(p, base + 1);
  a.k_seq = I(p, base + 2);
  a.k_pos = I(p, base + 3);
  a.q_seg = I(p, base + 4);
  a.k_seg = I(p, base + 5);
  a.blocked = I(p, base + 6);
  a.ranges = I(p, base + 7);
  a.num_runs = l.num_runs;
  return a;
}

// nan: one query row and the last key hold a NaN; the rows that read them must come out NaN
// (forward only), not zero as a row with no visible key.
void test_attention(int kind, int nseq, int maxlen, int nH, int nKv, int D, Rng& rng, bool nan = false) {
  const AttnLayout l = make_layout(kind, nseq, maxlen, rng);
  const int Tq = l.Tq, Tk = l.Tk, group = nH / nKv;
  const float scale = float(1 / std::sqrt(double(D)));
  std::vector<float> q = randv(size_t(Tq) * nH * D, rng), k = randv(size_t(Tk) * nKv * D, rng);
  const std::vector<float> v = randv(size_t(Tk) * nKv * D, rng), dout = randv(size_t(Tq) * nH * D, rng);
  if (nan) {
    if (Tq > 0) q[size_t(Tq / 2) * nH * D + 1] = kNaN;
    if (Tk > 0) k[(size_t(Tk - 1) * nKv) * D + 2] = kNaN;
  }
  // float64 reference (src/reference/attention.ts)
  std::vector<double> out(size_t(Tq) * nH * D, 0.0), lse(size_t(Tq) * nH), dq(out.size(), 0.0), dk(k.size(), 0.0),
      dv(v.size(), 0.0), P(Tk), dP(Tk);
  int blind = 0;
  for (int i = 0; i < Tq; i++) {
    bool any = false;
    for (int j = 0; j < Tk && !any; j++) any = attn_visible(l, i, j);
    blind += !any;
    for (int h = 0; h < nH; h++) {
      const int kv = h / group;
      const size_t qi = (size_t(i) * nH + h) * D;
      double m = -std::numeric_limits<double>::infinity();
      bool nan_score = false;
      for (int j = 0; j < Tk; j++) {
        if (!attn_visible(l, i, j)) continue;
        double s = 0;
        for (int c = 0; c < D; c++) s += double(q[qi + c]) * k[(size_t(j) * nKv + kv) * D + c];
        P[j] = scale * s;
        m = std::max(m, P[j]);
        nan_score |= std::isnan(P[j]);
      }
      if (m == -std::numeric_limits<double>::infinity() && !nan_score) {
        lse[size_t(i) * nH + h] = m;
        continue;
      }
      double sum = 0;
      for (int j = 0; j < Tk; j++) sum += P[j] = attn_visible(l, i, j) ? std::exp(P[j] - m) : 0.0;
      lse[size_t(i) * nH + h] = m + std::log(sum);
      double rowdot = 0;
      for (int j = 0; j < Tk; j++) {
        P[j] /= sum;
        dP[j] = 0;
        if (P[j] == 0) continue;
        const size_t kj = (size_t(j) * nKv + kv) * D;
        for (int c = 0; c < D; c++) {
          out[qi + c] += P[j] * v[kj + c];
          dP[j] += double(dout[qi + c]) * v[kj + c];
        }
        rowdot += P[j] * dP[j];
      }
      for (int j = 0; j < Tk; j++) {
        if (P[j] == 0) continue;
        const size_t kj = (size_t(j) * nKv + kv) * D;
        const double ds = P[j] * (dP[j] - rowdot);
        for (int c = 0; c < D; c++) {
          dq[qi + c] += scale * ds * k[kj + c];
          dk[kj + c] += scale * ds * q[qi + c];
          dv[kj + c] += P[j] * dout[qi + c];
        }
      }
    }
  }
  const std::string desc = fmt("%s Tq=%d Tk=%d nH=%d nKv=%d D=%d S=%d no_key_queries=%d%s", l.kind, Tq, Tk, nH, nKv, D,
                               l.S, blind, nan ? " nan_inputs" : "");
  std::vector<float> out32(out.begin(), out.end()), lse32(lse.begin(), lse.end());
  {
    ModelCase c;
    c.op = "attention";
    c.desc = desc;
    const int o = c.out_nan("out", out), ls = c.out_nan("lse", lse);
    const int iq = c.in("q", q), ik = c.in("k", k), iv = c.in("v", v), lb = add_layout(c, l);
    run_model_case(
        c,
        [&](void* const* p) {
          mote::cpu::attention(attn_args<mote::cpu::AttentionArgs>(l, nH, nKv, D, scale, p, lb), F(p, o), F(p, ls),
                               F(p, iq), F(p, ik), F(p, iv));
        },
        CUDA_FN(const mote_attention_args a = attn_args<mote_attention_args>(l, nH, nKv, D, scale, p, lb);
                return mote_cuda_attention(&a, F(p, o), F(p, ls), F(p, iq), F(p, ik), F(p, iv), nullptr);));
  }
  if (!nan) {
    ModelCase c;
    c.op = "attention_grad";
    c.desc = desc;
    const int gq = c.out_nan("dq", dq), gk = c.out_nan("dk", dk), gv = c.out_nan("dv", dv);
    const int ig = c.in("dout", dout), iq = c.in("q", q), ik = c.in("k", k), iv = c.in("v", v), io = c.in("out", out32),
              il = c.in("lse", lse32), lb = add_layout(c, l);
    run_model_case(
        c,
        [&](void* const* p) {
          mote::cpu::attention_grad(attn_args<mote::cpu::AttentionArgs>(l, nH, nKv, D, scale, p, lb), F(p, gq),
                                    F(p, gk), F(p, gv), F(p, ig), F(p, iq), F(p, ik), F(p, iv), F(p, io), F(p, il));
        },
        CUDA_FN(const mote_attention_args a = attn_args<mote_attention_args>(l, nH, nKv, D, scale, p, lb);
                return mote_cuda_attention_grad(&a, F(p, gq), F(p, gk), F(p, gv), F(p, ig), F(p, iq), F(p, ik),
                                                F(p, iv), F(p, io), F(p, il), nullptr);));
  }
}

// -- swiglu, residual (elementwise). off = 1 starts every pointer one float in (not 16-byte
// aligned); the element before stays as it was.

double silu_sigmoid(double g) { return 1 / (1 + std::exp(-g)); }

void test_swiglu(int64_t n, int off, Rng& rng) {
  const size_t N = size_t(n) + off;
  std::vector<float> gate = scaled(randv(N, rng), 8.f), up = randv(N, rng), head = randv(off, rng);
  if (n > 4) {  // the tails
    gate[off] = -100.f;
    gate[off + 1] = 100.f;
  }
  std::vector<float> y0(N, kNaN);
  std::vector<double> ref(N);
  for (int i = 0; i < off; i++) ref[i] = y0[i] = head[i];
  for (size_t i = off; i < N; i++) ref[i] = gate[i] * silu_sigmoid(gate[i]) * up[i];
  ModelCase c;
  c.op = "swiglu";
  c.desc = fmt("n=%lld offset=%d", (long long)n, off);
  const int y = c.out("y", y0, std::move(ref)), ig = c.in("gate", gate), iu = c.in("up", up);
  run_model_case(
      c, [&](void* const* p) { mote::cpu::swiglu(F(p, y) + off, F(p, ig) + off, F(p, iu) + off, n); },
      CUDA_FN(return mote_cuda_swiglu(F(p, y) + off, F(p, ig) + off, F(p, iu) + off, n, nullptr);));
}

void test_swiglu_grad(int64_t n, int off, Rng& rng) {
  const size_t N = size_t(n) + off;
  std::vector<float> gate = scaled(randv(N, rng), 8.f), up = randv(N, rng), dy = randv(N, rng),
                     head = randv(2 * off, rng);
  if (n > 4) {
    gate[off] = -100.f;
    gate[off + 1] = 100.f;
  }
  std::vector<float> g0(N, kNaN), u0(N, kNaN);
  std::vector<double> rg(N), ru(N);
  for (int i = 0; i < off; i++) {
    rg[i] = g0[i] = head[i];
    ru[i] = u0[i] = head[off + i];
  }
  for (size_t i = off; i < N; i++) {
    const double g = gate[i], s = silu_sigmoid(g);
    rg[i] = double(dy[i]) * up[i] * s * (1 + g * (1 - s));
    ru[i] = double(dy[i]) * g * s;
  }
  ModelCase c;
  c.op = "swiglu_grad";
  c.desc = fmt("n=%lld offset=%d", (long long)n, off);
  const int dg = c.out("dgate", g0, std::move(rg)), du = c.out("dup", u0, std::move(ru));
  const int idy = c.in("dy", dy), ig = c.in("gate", gate), iu = c.in("up", up);
  run_model_case(
      c,
      [&](void* const* p) {
        mote::cpu::swiglu_grad(F(p, dg) + off, F(p, du) + off, F(p, idy) + off, F(p, ig) + off, F(p, iu) + off, n);
      },
      CUDA_FN(return mote_cuda_swiglu_grad(F(p, dg) + off, F(p, du) + off, F(p, idy) + off, F(p, ig) + off,
                                           F(p, iu) + off, n, nullptr);));
}

void test_add(int64_t n, int off, bool inplace, Rng& rng) {
  const size_t N = size_t(n) + off;
  const std::vector<float> a = randv(N, rng), b = randv(N, rng), head = randv(off, rng);
  std::vector<float> y0(N, kNaN);
  std::vector<double> ref(N);
  for (int i = 0; i < off; i++) ref[i] = y0[i] = inplace ? a[i] : head[i];
  for (size_t i = off; i < N; i++) ref[i] = double(a[i]) + b[i];
  ModelCase c;
  c.op = "add";
  c.desc = fmt("n=%lld offset=%d inplace=%d", (long long)n, off, int(inplace));
  const int y = inplace ? c.out("a", a, std::move(ref)) : c.out("y", y0, std::move(ref));
  const int ia = inplace ? y : c.in("a", a), ib = c.in("b", b);
  run_model_case(
      c, [&](void* const* p) { mote::cpu::add(F(p, y) + off, F(p, ia) + off, F(p, ib) + off, n); },
      CUDA_FN(return mote_cuda_add(F(p, y) + off, F(p, ia) + off, F(p, ib) + off, n, nullptr);));
}

void test_scale(int64_t n, int off, bool inplace, float alpha, Rng& rng) {
  const size_t N = size_t(n) + off;
  const std::vector<float> x = randv(N, rng), head = randv(off, rng);
  std::vector<float> y0(N, kNaN);
  std::vector<double> ref(N);
  for (int i = 0; i < off; i++) ref[i] = y0[i] = inplace ? x[i] : head[i];
  for (size_t i = off; i < N; i++) ref[i] = double(alpha) * x[i];
  ModelCase c;
  c.op = "scale";
  c.desc = fmt("n=%lld offset=%d inplace=%d alpha=%g", (long long)n, off, int(inplace), double(alpha));
  const int y = inplace ? c.out("x", x, std::move(ref)) : c.out("y", y0, std::move(ref));
  const int ix = inplace ? y : c.in("x", x);
  run_model_case(
      c, [&](void* const* p) { mote::cpu::scale(F(p, y) + off, F(p, ix) + off, alpha, n); },
      CUDA_FN(return mote_cuda_scale(F(p, y) + off, F(p, ix) + off, alpha, n, nullptr);));
}

// copy (NativeBackend.copy; the benchmarks' bandwidth ceiling): an offset of one float takes
// the unaligned path on CUDA (float4 needs 16-byte aligned ends).
void test_copy(int64_t n, int off, Rng& rng) {
  const size_t N = size_t(n) + off;
  const std::vector<float> x = randv(N, rng), head = randv(off, rng);
  std::vector<float> y0(N, kNaN);
  std::vector<double> ref(N);
  for (int i = 0; i < off; i++) ref[i] = y0[i] = head[i];
  for (size_t i = off; i < N; i++) ref[i] = x[i];
  ModelCase c;
  c.op = "copy";
  c.desc = fmt("n=%lld offset=%d", (long long)n, off);
  const int y = c.out("y", y0, std::move(ref));
  const int ix = c.in("x", x);
  run_model_case(
      c, [&](void* const* p) { mote::cpu::copy(F(p, y) + off, F(p, ix) + off, n); },
      CUDA_FN(return mote_cuda_copy(F(p, y) + off, F(p, ix) + off, n, nullptr);));
}

// -- adamw (optimizer step, in place) and sum_squares. The scalars derived from the
// hyper-parameters (1 − β, 1 − lr·wd, 1 − β^t) are formed in double and rounded once, as the
// addon does.

void test_adamw(int64_t n, int off, int t, double wd, double gs, Rng& rng) {
  const size_t N = size_t(n) + off;
  const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8;
  const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
  std::vector<float> p0 = randv(N, rng), g0 = randv(N, rng), m0 = scaled(randv(N, rng), 0.1f), v0 = randv(N, rng);
  for (auto& e : v0) e = 0.01f * e * e;
  std::vector<double> rp(N), rm(N), rv(N);
  for (size_t i = 0; i < N; i++) {
    rp[i] = p0[i];
    rm[i] = m0[i];
    rv[i] = v0[i];
    if (i < size_t(off)) continue;
    const double gi = double(g0[i]) * gs;
    rm[i] = b1 * m0[i] + (1 - b1) * gi;
    rv[i] = b2 * v0[i] + (1 - b2) * gi * gi;
    rp[i] = double(p0[i]) * (1 - lr * wd) - lr * (rm[i] / bc1) / (std::sqrt(rv[i] / bc2) + eps);
  }
  ModelCase c;
  c.op = "adamw";
  c.desc = fmt("n=%lld offset=%d t=%d wd=%g gs=%g", (long long)n, off, t, wd, gs);
  const int ip = c.out("p", p0, std::move(rp)), im = c.out("m", m0, std::move(rm)), iv = c.out("v", v0, std::move(rv));
  const int ig = c.in("g", g0);
  const float flr = float(lr), fb1 = float(b1), fc1 = float(1 - b1), fb2 = float(b2), fc2 = float(1 - b2),
              feps = float(eps), fdecay = float(1 - lr * wd), fbc1 = float(bc1), fbc2 = float(bc2), fgs = float(gs);
  run_model_case(
      c,
      [&](void* const* p) {
        mote::cpu::adamw(F(p, ip) + off, F(p, ig) + off, F(p, im) + off, F(p, iv) + off, n, flr, fb1, fc1, fb2, fc2,
                         feps, fdecay, fbc1, fbc2, fgs);
      },
      CUDA_FN(return mote_cuda_adamw(F(p, ip) + off, F(p, ig) + off, F(p, im) + off, F(p, iv) + off, n, flr, fb1, fc1,
                                     fb2, fc2, feps, fdecay, fbc1, fbc2, fgs, nullptr);));
}

void test_sum_squares(int64_t n, Rng& rng) {
  const std::vector<float> g = randv(size_t(n), rng);
  double s = 0;
  for (float x : g) s += double(x) * x;
  ModelCase c;
  c.op = "sum_squares";
  c.desc = fmt("n=%lld", (long long)n);
  const int io = c.out_nan("out", {s}), ig = c.in("g", g);
  run_model_case(
      c, [&](void* const* p) { mote::cpu::sum_squares(F(p, io), F(p, ig), n); },
      CUDA_FN(return mote_cuda_sum_squares(F(p, io), F(p, ig), n, nullptr);));
}

// -- xent

std::vector<double> lse_rows(const std::vector<float>& x, int T, int V) {
  std::vector<double> z(T);
  for (int t = 0; t < T; t++) {
    double m = -std::numeric_limits<double>::infinity(), s = 0;
    for (int v = 0; v < V; v++) m = std::max(m, double(x[size_t(t) * V + v]));
    for (int v = 0; v < V; v++) s += std::exp(double(x[size_t(t) * V + v]) - m);
    z[t] = m + std::log(s);
  }
  return z;
}

// logits ±[0.4, 4); with ninf, about 1% of each row is −∞ (a masked vocabulary), never all of it
std::vector<float> make_logits(int T, int V, bool ninf, Rng& rng) {
  std::vector<float> x = scaled(randv(size_t(T) * V, rng), 4.f);
  if (ninf)
    for (int t = 0; t < T; t++)
      for (int v = 1; v < V; v++)
        if (rng.uni() < 0.01) x[size_t(t) * V + v] = -std::numeric_limits<float>::infinity();
  return x;
}

void test_log_softmax(int T, int V, bool inplace, bool ninf, Rng& rng) {
  const std::vector<float> x = make_logits(T, V, ninf, rng);
  const std::vector<double> z = lse_rows(x, T, V);
  std::vector<double> ref(x.size());
  for (int t = 0; t < T; t++)
    for (int v = 0; v < V; v++) ref[size_t(t) * V + v] = double(x[size_t(t) * V + v]) - z[t];
  ModelCase c;
  c.op = "log_softmax";
  c.desc = fmt("T=%d V=%d inplace=%d neg_inf=%d", T, V, int(inplace), int(ninf));
  const int o = inplace ? c.out("logits", x, std::move(ref)) : c.out_nan("out", std::move(ref));
  const int ix = inplace ? o : c.in("logits", x);
  run_model_case(
      c, [&](void* const* p) { mote::cpu::log_softmax(F(p, o), F(p, ix), T, V); },
      CUDA_FN(return mote_cuda_log_softmax(F(p, o), F(p, ix), T, V, nullptr);));
}

enum { M_ALL, M_RANDOM, M_NONE };

// targets where mask is 0 are −100 (never read)
void make_targets(int T, int V, int maskmode, Rng& rng, std::vector<int>& targets, std::vector<float>& mask) {
  targets.resize(T);
  mask.resize(T);
  for (int t = 0; t < T; t++) {
    mask[t] = maskmode == M_ALL ? 1.f : maskmode == M_NONE ? 0.f : (rng.uni() < 0.6 ? 1.f : 0.f);
    targets[t] = mask[t] != 0.f ? rng.integer(0, V - 1) : -100;
  }
}

void test_xent(int T, int V, int maskmode, bool ninf, Rng& rng) {
  const std::vector<float> x = make_logits(T, V, ninf, rng);
  std::vector<int> targets;
  std::vector<float> mask;
  make_targets(T, V, maskmode, rng, targets, mask);
  for (int t = 0; t < T; t++)  // a −∞ target would make an infinite loss
    if (mask[t] != 0.f && std::isinf(x[size_t(t) * V + targets[t]])) targets[t] = 0;
  const std::vector<double> z = lse_rows(x, T, V);
  std::vector<double> losses(T, 0.0);
  for (int t = 0; t < T; t++)
    if (mask[t] != 0.f) losses[t] = z[t] - x[size_t(t) * V + targets[t]];
  ModelCase c;
  c.op = "xent";
  c.desc = fmt("T=%d V=%d mask=%s neg_inf=%d", T, V,
               maskmode == M_ALL    ? "all"
               : maskmode == M_NONE ? "none"
                                    : "random",
               int(ninf));
  const int ol = c.out_nan("losses", std::move(losses)), oz = c.out_nan("lse", z);
  const int ix = c.in("logits", x), it = c.in("targets", targets), im = c.in("mask", mask);
  run_model_case(
      c, [&](void* const* p) { mote::cpu::xent(F(p, ol), F(p, oz), F(p, ix), I(p, it), F(p, im), T, V); },
      CUDA_FN(return mote_cuda_xent(F(p, ol), F(p, oz), F(p, ix), I(p, it), F(p, im), T, V, nullptr);));
}

void test_xent_grad(int T, int V, int maskmode, Rng& rng) {
  const std::vector<float> x = make_logits(T, V, false, rng);
  std::vector<int> targets;
  std::vector<float> mask;
  make_targets(T, V, maskmode, rng, targets, mask);
  const std::vector<double> z = lse_rows(x, T, V);
  const std::vector<float> lse(z.begin(), z.end());  // as the forward saves it
  int count = 0;
  for (float m : mask) count += m != 0.f;
  const float scale = count ? 1.f / float(count) : 1.f;
  std::vector<double> ref(x.size(), 0.0);
  for (int t = 0; t < T; t++) {
    if (mask[t] == 0.f) continue;
    for (int v = 0; v < V; v++)
      ref[size_t(t) * V + v] =
          double(scale) * (std::exp(double(x[size_t(t) * V + v]) - lse[t]) - (v == targets[t] ? 1 : 0));
  }
  ModelCase c;
  c.op = "xent_grad";
  c.desc = fmt("T=%d V=%d mask=%s", T, V, maskmode == M_ALL ? "all" : maskmode == M_NONE ? "none" : "random");
  const int o = c.out_nan("dlogits", std::move(ref));
  const int ix = c.in("logits", x), iz = c.in("lse", lse), it = c.in("targets", targets), im = c.in("mask", mask);
  run_model_case(
      c, [&](void* const* p) { mote::cpu::xent_grad(F(p, o), F(p, ix), F(p, iz), I(p, it), F(p, im), scale, T, V); },
      CUDA_FN(return mote_cuda_xent_grad(F(p, o), F(p, ix), F(p, iz), I(p, it), F(p, im), scale, T, V, nullptr);));
}

void test_model_families(Rng& rng) {
  // embedding: {T, V, H, E dtype}
  const int emb[][4] = {{1, 1, 1, 0}, {7, 13, 5, 1}, {37, 50, 130, 2}, {300, 1000, 64, 0}, {129, 17, 1027, 1}};
  for (const auto& s : emb) test_embedding(s[0], s[1], s[2], s[3], rng);
  // embedding_grad: {T, V, H, distinct ids}
  const int emg[][4] = {{1, 3, 1, 3}, {37, 11, 130, 11}, {64, 1000, 64, 1000}, {500, 700, 33, 7}, {3, 5, 300, 1}};
  for (const auto& s : emg)
    for (int acc = 0; acc < 2; acc++) test_embedding_grad(s[0], s[1], s[2], s[3], acc, rng);
  // copy_rows: {N, W, Rd, Rs, dtype (0 f32, 1 f16, 2 bf16, 3 i32), in place, element offset}
  const int cr[][7] = {{1, 1, 1, 1, 0, 0, 0},        {8, 1, 9, 5, 1, 0, 0},        {13, 37, 20, 16, 2, 0, 0},
                       {64, 1024, 200, 64, 0, 0, 0}, {64, 1024, 200, 64, 2, 0, 1}, {30, 2053, 31, 40, 1, 0, 0},
                       {131, 6, 131, 131, 3, 0, 0},  {17, 33, 50, 7, 0, 0, 1},     {5, 37, 12, 0, 1, 1, 0},
                       {6, 10, 12, 0, 0, 1, 0},      {64, 1024, 129, 0, 0, 1, 0},  {1000, 4, 3000, 10, 2, 0, 3}};
  for (const auto& c : cr) test_copy_rows(c[0], c[1], c[2], c[3], c[4], c[5] != 0, c[6], rng);
  test_copy_rows_bad();
  // rmsnorm: {T, H, w dtype}
  const int rms[][3] = {{1, 1, 0}, {3, 7, 1}, {37, 130, 2}, {64, 4096, 0}, {130, 97, 1}, {5, 8192, 2}};
  for (const auto& s : rms) test_rmsnorm(s[0], s[1], s[2], rng);
  for (const auto& s : rms)
    for (int acc = 0; acc < 2; acc++) test_rmsnorm_grad(s[0], s[1], s[2], acc, rng);
  test_rmsnorm_grad(3000, 33, 0, false, rng);  // long columns for dw
  // rope: {T, heads, D, inverse, inplace, maxpos}
  const int rp[][6] = {{1, 1, 2, 0, 0, 0},         {7, 3, 64, 1, 0, 100},      {37, 5, 128, 0, 1, 4096},
                       {130, 2, 6, 1, 1, 1 << 20}, {300, 8, 96, 0, 0, 131072}, {64, 4, 256, 1, 0, 2000000000}};
  for (const auto& s : rp) test_rope(s[0], s[1], s[2], s[3], s[4], s[5], rng);
  // attention: {layout, sequences, max length, nH, nKv, D}
  const int at[][6] = {{L_PREFILL, 1, 1, 1, 1, 1},     {L_PREFILL, 3, 37, 8, 2, 64},  {L_SEGMENTS, 3, 50, 4, 1, 80},
                       {L_DECODE, 5, 100, 8, 8, 128},  {L_CROSS, 3, 20, 6, 3, 16},    {L_PREFILL, 2, 70, 2, 1, 256},
                       {L_SEGMENTS, 2, 30, 2, 2, 300}, {L_PREFILL, 1, 300, 4, 2, 32}, {L_DECODE, 2, 60, 4, 2, 33},
                       {L_NO_KEYS, 2, 5, 4, 2, 16},    {L_PAGED, 5, 40, 4, 2, 32},    {L_PAGED, 9, 13, 3, 1, 64}};
  for (const auto& s : at) test_attention(s[0], s[1], s[2], s[3], s[4], s[5], rng);
  for (const auto& s : at) test_attention(s[0], s[1], s[2], s[3], s[4], s[5], rng, true);
  // swiglu / add: n, pointer offset
  const int64_t ns[] = {1, 7, 4099, 100003};
  for (int64_t n : ns)
    for (int off = 0; off < 2; off++) {
      test_swiglu(n, off, rng);
      test_swiglu_grad(n, off, rng);
      test_add(n, off, false, rng);
      test_add(n, off, true, rng);
      test_scale(n, off, false, -1.75f, rng);
      test_scale(n, off, true, 0.3f, rng);
      test_copy(n, off, rng);
    }
  // adamw: n, pointer offset, step, weight decay, grad scale; sum_squares: n
  for (int64_t n : ns)
    for (int off = 0; off < 2; off++) {
      test_adamw(n, off, 1, 0.0, 1.0, rng);
      test_adamw(n, off, 7, 0.1, 0.25, rng);
    }
  const int64_t ss[] = {1, 7, 2048, 2049, 4099, 100003, 5000011};
  for (int64_t n : ss) test_sum_squares(n, rng);
  // xent: {T, V}
  const int xv[][2] = {{1, 1}, {3, 7}, {5, 1000}, {7, 49157}, {3, 128256}};
  for (const auto& s : xv) {
    test_log_softmax(s[0], s[1], false, false, rng);
    test_log_softmax(s[0], s[1], true, s[1] > 1, rng);
    for (int mm = M_ALL; mm <= M_NONE; mm++) {
      test_xent(s[0], s[1], mm, mm == M_RANDOM && s[1] > 1, rng);
      test_xent_grad(s[0], s[1], mm, rng);
    }
  }
}

// ---- tampered index tensors (CUDA) -------------------------------------------
// A tensor read as indices (rank, slots, order, seg_start; embedding order; attention layout)
// with contents outside its contract must not make a kernel write outside its outputs, read
// outside its inputs or loop without end. Every buffer sits between guard bands of a sentinel;
// the check is that the launch returns, the guards are intact and nothing threw. (Under the CPU
// emulation, a read past the end of a buffer also faults: cudaMalloc ends buffers at a guard
// page.) The outputs' values are not checked: tampered routing gives wrong sums by design.

#ifdef MOTE_HAVE_CUDA
constexpr size_t kGuard = 64;  // sentinel words either side
constexpr uint32_t kSentinel = 0x7fa5a5a5u;

// A device buffer of n 4-byte words between guard bands.
struct Guarded {
  Dev d;
  size_t n;
  template <typename T>
  explicit Guarded(const std::vector<T>& v) : d((v.size() + 2 * kGuard) * 4), n(v.size()) {
    static_assert(sizeof(T) == 4, "4-byte elements");
    std::vector<uint32_t> h(n + 2 * kGuard, kSentinel);
    if (n) std::memcpy(h.data() + kGuard, v.data(), n * 4);
    d.put(h.data(), h.size() * 4);
  }
  explicit Guarded(const Weights& w) : Guarded(as_words(w.bytes)) {}
  static std::vector<uint32_t> as_words(const std::vector<uint8_t>& b) {
    std::vector<uint32_t> w((b.size() + 3) / 4, 0);
    if (!b.empty()) std::memcpy(w.data(), b.data(), b.size());
    return w;
  }
  template <typename T = float>
  T* p() const {
    return reinterpret_cast<T*>(d.as<uint32_t>() + kGuard);
  }
  bool intact() const {
    std::vector<uint32_t> h(n + 2 * kGuard);
    d.get(h.data(), h.size() * 4);
    for (size_t i = 0; i < kGuard; i++)
      if (h[i] != kSentinel || h[kGuard + n + i] != kSentinel) return false;
    return true;
  }
};

enum Tamper { T_RANK, T_SLOTS, T_ORDER, T_ALL, NTAMPER };
const char* tamper_name(int t) {
  static const char* n[] = {"rank", "slots", "order+seg_start", "all"};
  return n[t];
}

void tamper_lora(LoraData& d, int how, Rng& rng) {
  const int L = d.c.L, R = d.c.R, TK = d.c.T * d.c.K;
  const int big = std::numeric_limits<int>::max(), small = std::numeric_limits<int>::min();
  if (how == T_RANK || how == T_ALL) {
    const int bad[] = {R + 7, -4, big, small, 0};
    for (int e = 0; e < L; e++) d.rank[e] = bad[e % 5];
  }
  if (how == T_SLOTS || how == T_ALL)  // order and segments keep the untampered routing
    for (int i = 0; i < TK; i++)
      if (rng.uni() < 0.3) d.slots[i] = rng.uni() < 0.5 ? L + rng.integer(0, 5) : big;
  if (how == T_ORDER || how == T_ALL) {
    const int bad[] = {-9, TK + 5, small, big, TK};
    for (size_t i = 0; i < d.order.size(); i += 3) d.order[i] = bad[i / 3 % 5];
    for (size_t g = 0; g < d.seg_start.size(); g++) d.seg_start[g] = g % 3 == 0 ? small : g % 3 == 1 ? d.P + 1000 : big;
  }
}

void test_lora_tampered(const LoraCase& c, int how, Rng& rng) {
  LoraData d = make_lora(c, rng);
  tamper_lora(d, how, rng);
  for (int strategy = 0; strategy < 2; strategy++)
    for (int op = SHRINK; op <= WEIGHT_GRAD; op++)
      for (int acc = 0; acc < ((op == INPUT_GRAD || op == WEIGHT_GRAD) ? 2 : 1); acc++) {
        const std::string desc = "tampered " + std::string(tamper_name(how)) + " " + lora_desc(c, op, strategy, acc);
        try {
          Guarded A(d.A), B(d.B), rank(d.rank), slots(d.slots), order(d.order), seg_start(d.seg_start),
              seg_adapter(d.seg_adapter), scale(d.scale), weight(d.weight);
          std::vector<std::unique_ptr<Guarded>> buf;
          float* bp[NBUF];
          for (int b = 0; b < NBUF; b++) {
            buf.push_back(std::make_unique<Guarded>(d.buf[b]));
            bp[b] = buf[b]->p();
          }
          mote_lora_args a = host_args(d, strategy);
          a.A = A.p<void>();
          a.B = B.p<void>();
          a.rank = rank.p<int>();
          a.slots = slots.p<int>();
          a.order = order.p<int>();
          a.seg_start = seg_start.p<int>();
          a.seg_adapter = seg_adapter.p<int>();
          a.scale = scale.p();
          a.weight = weight.p();
          launch_check(run_cuda(op, acc, &a, bp), op_name(op));
          bool ok = A.intact() && B.intact() && rank.intact() && slots.intact() && order.intact() &&
                    seg_start.intact() && seg_adapter.intact() && scale.intact() && weight.intact();
          for (auto& b : buf) ok = ok && b->intact();
          report(fmt("cuda %s  guard_bands=%s", desc.c_str(), ok ? "intact" : "WRITTEN"), ok);
        } catch (const std::exception& ex) {
          report(fmt("cuda %s  threw: %s", desc.c_str(), ex.what()), false);
        }
      }
}

// embedding_grad with order entries outside [0, T) and segments outside order; attention with
// layout entries outside blocked.
void test_model_tampered(Rng& rng) {
  {
    const int T = 37, V = 11, H = 130, G = 4;
    std::vector<int> order(T), seg_start = {-5, 10, 3, 1000, std::numeric_limits<int>::max()}, seg_ids = {0, 3, 10, 7};
    for (int t = 0; t < T; t++) order[t] = t % 4 == 0 ? -7 : t % 4 == 1 ? T + 3 : t;
    const std::vector<float> dy = randv(size_t(T) * H, rng), dE0 = randv(size_t(V) * H, rng);
    for (int acc = 0; acc < 2; acc++) {
      const std::string desc = fmt("tampered embedding_grad T=%d V=%d H=%d acc=%d", T, V, H, acc);
      try {
        Guarded dE(dE0), gdy(dy), go(order), gs(seg_start), gi(seg_ids);
        launch_check(
            mote_cuda_embedding_grad(dE.p(), gdy.p(), go.p<int>(), gs.p<int>(), gi.p<int>(), G, T, V, H, acc, nullptr),
            "embedding_grad");
        const bool ok = dE.intact() && gdy.intact() && go.intact() && gs.intact() && gi.intact();
        report(fmt("cuda %s  guard_bands=%s", desc.c_str(), ok ? "intact" : "WRITTEN"), ok);
      } catch (const std::exception& ex) {
        report(fmt("cuda %s  threw: %s", desc.c_str(), ex.what()), false);
      }
    }
  }
  {
    AttnLayout l = make_layout(L_SEGMENTS, 3, 20, rng);
    const int nH = 4, nKv = 2, D = 40;
    for (size_t i = 0; i < l.q_seq.size(); i += 4) l.q_seq[i] = i % 8 ? 1000 : -3;
    for (size_t i = 1; i < l.q_seg.size(); i += 5) l.q_seg[i] = i % 2 ? 77 : -1;
    for (size_t j = 2; j < l.k_seg.size(); j += 3) l.k_seg[j] = j % 2 ? std::numeric_limits<int>::max() : -100;
    // run lists and runs pointing outside the table, the keys and the queries
    const size_t nr = l.ranges.size(), lists = 2 * (size_t(l.Tq) + l.Tk);
    for (size_t i = 0; i < lists; i += 7) l.ranges[i] = i % 2 ? std::numeric_limits<int>::max() : -5;
    for (size_t i = 1; i < lists; i += 11) l.ranges[i] = 1 << 30;
    for (size_t i = lists; i < nr; i += 3) l.ranges[i] = i % 2 ? -7 : std::numeric_limits<int>::max();
    const int Tq = l.Tq, Tk = l.Tk;
    const std::vector<float> q = randv(size_t(Tq) * nH * D, rng), k = randv(size_t(Tk) * nKv * D, rng),
                             v = randv(size_t(Tk) * nKv * D, rng), dout = randv(size_t(Tq) * nH * D, rng),
                             o0 = randv(size_t(Tq) * nH * D, rng), l0 = randv(size_t(Tq) * nH, rng);
    const std::string desc = fmt("tampered attention segments Tq=%d Tk=%d nH=%d nKv=%d D=%d", Tq, Tk, nH, nKv, D);
    try {
      Guarded gq(q), gk(k), gv(v), gd(dout), out(o0), lse(l0), dq(q), dk(k), dv(v);
      Guarded lay[8] = {Guarded(l.q_seq), Guarded(l.q_pos), Guarded(l.k_seq),   Guarded(l.k_pos),
                        Guarded(l.q_seg), Guarded(l.k_seg), Guarded(l.blocked), Guarded(l.ranges)};
      void* p[8];
      for (int i = 0; i < 8; i++) p[i] = lay[i].p<void>();
      const mote_attention_args a = attn_args<mote_attention_args>(l, nH, nKv, D, 0.15f, p, 0);
      launch_check(mote_cuda_attention(&a, out.p(), lse.p(), gq.p(), gk.p(), gv.p(), nullptr), "attention");
      launch_check(mote_cuda_attention_grad(&a, dq.p(), dk.p(), dv.p(), gd.p(), gq.p(), gk.p(), gv.p(), out.p(),
                                            lse.p(), nullptr),
                   "attention_grad");
      bool ok = gq.intact() && gk.intact() && gv.intact() && gd.intact() && out.intact() && lse.intact() &&
                dq.intact() && dk.intact() && dv.intact();
      for (auto& g : lay) ok = ok && g.intact();
      report(fmt("cuda %s  guard_bands=%s", desc.c_str(), ok ? "intact" : "WRITTEN"), ok);
    } catch (const std::exception& ex) {
      report(fmt("cuda %s  threw: %s", desc.c_str(), ex.what()), false);
    }
  }
}
#endif

}  // namespace

int main(int argc, char** argv) {
  uint64_t seed = 20240611;
  if (argc > 1)
    seed = std::strtoull(argv[1], nullptr, 10);
  else if (const char* s = std::getenv("MOTE_TEST_SEED"))
    seed = std::strtoull(s, nullptr, 10);
  std::printf("mote kernel tests, seed %llu, tolerance %.0e\n", (unsigned long long)seed, kTol);

#ifdef MOTE_HAVE_CUDA
  {
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    int driver = 0, runtime = 0;
    cudaDriverGetVersion(&driver);
    cudaRuntimeGetVersion(&runtime);
    // First, so that a GPU run says which versions met (CUDA 13's runtime needs driver ≥ 580).
    std::printf("cuda: runtime %d.%d, driver %d.%d\n", runtime / 1000, (runtime % 1000) / 10, driver / 1000,
                (driver % 1000) / 10);
    if (e != cudaSuccess) {
      if (driver == 0)
        std::printf("cuda: skipped (no NVIDIA driver found: %s)\n", cudaGetErrorString(e));
      else
        std::printf("cuda: skipped (no usable CUDA device: %s)\n", cudaGetErrorString(e));
      cudaGetLastError();
    } else if (count == 0) {
      std::printf("cuda: skipped (no CUDA device found)\n");
    } else {
      cudaDeviceProp p{};
      cudaGetDeviceProperties(&p, 0);
      std::printf("cuda: device 0 = %s (sm_%d%d, %d SMs)\n", p.name, p.major, p.minor, p.multiProcessorCount);
      g_cuda = true;
    }
  }
#else
  std::printf("cuda: skipped (built without CUDA)\n");
#endif
  // MOTE_REQUIRE_CUDA=1: a GPU run that found no device fails instead of passing with "skipped".
  if (const char* req = std::getenv("MOTE_REQUIRE_CUDA"); req && std::strcmp(req, "1") == 0 && !g_cuda) {
    std::printf("FAIL cuda: MOTE_REQUIRE_CUDA=1 but no CUDA device ran (see the line above)\n");
    return 1;
  }

  Rng rng(seed);
  try {
    // matmul family
    const int mm[][3] = {{0, 13, 7}, {1, 1, 1},     {1, 13, 7},    {3, 64, 64},
                         {5, 97, 3}, {37, 64, 130}, {64, 256, 65}, {130, 33, 129}};
    for (const auto& s : mm)
      for (int op = MM_FWD; op <= MM_GRAD_W; op++)
        for (int dt = 0; dt < (op == MM_GRAD_W ? 1 : 3); dt++)
          for (int acc = 0; acc < 2; acc++) test_matmul(op, s[0], s[1], s[2], dt, acc, rng);

    // multi-LoRA family: {T, K, L, R, Hin, Hout, A dtype, B dtype, slots, ranks}
    const LoraCase cases[] = {
        {1, 1, 1, 1, 1, 1, 0, 0, S_SORTED, R_FULL},       {1, 2, 3, 16, 64, 64, 1, 1, S_DUP, R_MIXED},
        {1, 2, 2, 8, 24, 40, 2, 2, S_DISTINCT, R_FULL},   {7, 1, 3, 4, 13, 17, 0, 0, S_RANDOM, R_MIXED},
        {7, 2, 14, 8, 97, 31, 2, 1, S_DISTINCT, R_MIXED}, {29, 2, 3, 5, 61, 67, 2, 0, S_NONE, R_MIXED},
        {37, 2, 5, 16, 128, 96, 1, 2, S_RANDOM, R_MIXED}, {37, 2, 5, 24, 100, 130, 0, 2, S_DUP, R_MIXED},
        {53, 2, 4, 1, 40, 33, 0, 1, S_RANDOM, R_ONE},     {64, 2, 4, 16, 256, 256, 2, 2, S_SORTED, R_FULL},
        {100, 2, 7, 64, 48, 80, 0, 0, S_RANDOM, R_MIXED}, {130, 1, 3, 32, 72, 200, 1, 0, S_SORTED, R_MIXED},
        {131, 1, 2, 12, 8, 16, 1, 1, S_RANDOM, R_ONE},    {300, 2, 6, 16, 1024, 520, 1, 1, S_RANDOM, R_FULL},
        {70001, 1, 3, 4, 8, 12, 1, 0, S_RANDOM, R_MIXED},
    };
    // MOTE_TEST_MAX_T skips the LoRA cases with more tokens (for slow runs, e.g. under a simulator).
    long max_t = 0;
    if (const char* s = std::getenv("MOTE_TEST_MAX_T")) max_t = std::strtol(s, nullptr, 10);
    for (const auto& c : cases) {
      if (max_t > 0 && c.T > max_t) {
        std::printf("lora case T=%d skipped (MOTE_TEST_MAX_T=%ld)\n", c.T, max_t);
        continue;
      }
      test_lora(c, rng);
    }

    // model kernel families: embedding, copy_rows, rmsnorm, rope, attention, swiglu, residual, xent
    test_model_families(rng);

#ifdef MOTE_HAVE_CUDA
    if (g_cuda) {
      // tampered index tensors: {T, K, L, R, Hin, Hout, A dtype, B dtype, slots, ranks}
      const LoraCase tampered[] = {{37, 2, 5, 16, 128, 96, 0, 1, S_RANDOM, R_MIXED},
                                   {29, 2, 6, 24, 100, 130, 2, 0, S_DUP, R_MIXED}};
      for (const auto& c : tampered)
        for (int how = 0; how < NTAMPER; how++) test_lora_tampered(c, how, rng);
      test_model_tampered(rng);
    }
#endif
  } catch (const std::exception& ex) {
    std::printf("unexpected error: %s\n", ex.what());
    g_failures++;
  }

  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
