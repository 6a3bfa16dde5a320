// attention family on the CPU; contracts in src/ops/attention.ts (AttentionKernels).
//   q, out, dq, dout: [Tq, nH, D]; k, v, dk, dv: [Tk, nKv, D]; lse: [Tq, nH]; all f32.
//   Query head h reads kv head h / (nH / nKv). Query i sees key j when j lies in one of i's key
//   runs (a.ranges), k_seq[j] = q_seq[i], k_pos[j] ≤ q_pos[i] and, with S > 0 segments,
//   blocked[(q_seq[i]·S + q_seg[i])·S + k_seg[j]] is 0. A query that sees no key gets out = 0,
//   lse = −∞ and zero gradients. Keys are visited in run order ("logical" order), so a
//   sequence's result does not depend on where its keys sit; each key's backward visits its
//   sequence's query runs. Cost per query: its own sequence's keys, not the batch's.
//
// Forward: one work item per (query, head): an online softmax over the visible keys, taken in
// blocks of kBlock (scores of a block, one rescale of the running sum per block), f32.
// Backward (flash-attention style, from the saved lse):
//   delta[i,h] = Σ_c dout·out                       (double, per (query, head))
//   p = exp(s − lse), dp = dout·v, ds = p·(dp − delta)
//   dq[i,h]  = scale · Σ_j ds · k[j]               one owner per (query, head), j ascending
//   dk[j,kv] = scale · Σ_{i, h∈kv} ds · q[i,h]     one owner per (key, kv head),
//   dv[j,kv] = Σ_{i, h∈kv} p · dout[i,h]            i ascending, then h ascending
// No atomics; work items are cut from the dims only, so results do not depend on threads.
// The layout's index arrays are checked before anything is written.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernels.h"
#include "threads.h"

namespace MOTE_CPU_KERNEL_NS {
namespace {

constexpr int kBlock = 64;

inline float dot(const float* a, const float* b, int D) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int c = 0; c < D; c++) s += a[c] * b[c];
  return s;
}

inline void axpy(float* y, float a, const float* x, int D) {
#pragma omp simd
  for (int c = 0; c < D; c++) y[c] += a * x[c];
}

void check(const AttentionArgs& a) {
  if (a.Tq < 1 || a.Tk < 0 || a.nH < 1 || a.nKv < 1 || a.D < 1 || a.nH % a.nKv != 0 || a.num_runs < 0)
    throw std::invalid_argument("attention: bad dims");
  // the run lists: every (first, count) inside the table, every run inside [0, Tk] or [0, Tq]
  const int* table = a.ranges + 2 * (size_t(a.Tq) + a.Tk);
  auto lists = [&](int n, int off, int limit, const char* what) {
    for (int i = 0; i < n; i++) {
      const int first = a.ranges[2 * (size_t(off) + i)], count = a.ranges[2 * (size_t(off) + i) + 1];
      if (first < 0 || count < 0 || first > a.num_runs || count > a.num_runs - first)
        throw std::out_of_range(std::string("attention: ranges: the runs of ") + what + " " + std::to_string(i) +
                                " lie outside the run table");
      for (int r = first; r < first + count; r++)
        if (table[2 * r] < 0 || table[2 * r] > table[2 * r + 1] || table[2 * r + 1] > limit)
          throw std::out_of_range("attention: ranges: run " + std::to_string(r) + " of " + what + " " +
                                  std::to_string(i) + " lies outside [0, " + std::to_string(limit) + "]");
    }
  };
  lists(a.Tq, 0, a.Tk, "query");
  lists(a.Tk, a.Tq, a.Tq, "key");
  if (a.S < 0 || (a.S > 0 && a.num_seqs < 1)) throw std::invalid_argument("attention: bad segment dims");
  if (a.S == 0) return;
  for (int i = 0; i < a.Tq; i++) {
    if (a.q_seq[i] < 0 || a.q_seq[i] >= a.num_seqs)
      throw std::out_of_range("attention: qSeq[" + std::to_string(i) + "] = " + std::to_string(a.q_seq[i]) +
                              " has no entry in blocked");
    if (a.q_seg[i] < 0 || a.q_seg[i] >= a.S)
      throw std::out_of_range("attention: qSeg[" + std::to_string(i) + "] = " + std::to_string(a.q_seg[i]) +
                              " not in [0, S)");
  }
  for (int j = 0; j < a.Tk; j++)
    if (a.k_seg[j] < 0 || a.k_seg[j] >= a.S)
      throw std::out_of_range("attention: kSeg[" + std::to_string(j) + "] = " + std::to_string(a.k_seg[j]) +
                              " not in [0, S)");
}

// The runs of query i (keys) or of key j (queries), as [begin, end) pointers into the run table.
inline const int* run_table(const AttentionArgs& a) { return a.ranges + 2 * (size_t(a.Tq) + a.Tk); }
inline std::pair<const int*, const int*> key_runs(const AttentionArgs& a, int i) {
  const int* t = run_table(a) + 2 * size_t(a.ranges[2 * size_t(i)]);
  return {t, t + 2 * size_t(a.ranges[2 * size_t(i) + 1])};
}
inline std::pair<const int*, const int*> query_runs(const AttentionArgs& a, int j) {
  const size_t e = 2 * (size_t(a.Tq) + j);
  const int* t = run_table(a) + 2 * size_t(a.ranges[e]);
  return {t, t + 2 * size_t(a.ranges[e + 1])};
}

// Visibility of keys from one query.
struct Query {
  int seq, pos;
  const int* brow;  // blocked row of (seq, q_seg) or null without segments
  Query(const AttentionArgs& a, int i)
      : seq(a.q_seq[i]),
        pos(a.q_pos[i]),
        brow(a.S > 0 ? a.blocked + (size_t(a.q_seq[i]) * a.S + a.q_seg[i]) * a.S : nullptr) {}
  bool sees(const AttentionArgs& a, int j) const {
    return a.k_seq[j] == seq && a.k_pos[j] <= pos && !(brow && brow[a.k_seg[j]]);
  }
};

}  // namespace

void attention(const AttentionArgs& a, float* out, float* lse, const float* q, const float* k, const float* v) {
  check(a);
  const int D = a.D, nH = a.nH, nKv = a.nKv, group = a.nH / a.nKv;
  const float scale = a.scale;
  parallel_for(size_t(a.Tq) * nH, 1, [&](size_t r0, size_t r1) {
    std::vector<float> acc(D);
    float s[kBlock];
    int js[kBlock];
    for (size_t r = r0; r < r1; r++) {
      const int i = int(r / nH), h = int(r % nH), kv = h / group;
      const Query qu(a, i);
      const float* qv = q + r * D;
      std::fill(acc.begin(), acc.end(), 0.f);
      float m = -std::numeric_limits<float>::infinity(), l = 0;
      auto [run, runs_end] = key_runs(a, i);
      int j = run != runs_end ? run[0] : 0;
      for (;;) {
        // the next kBlock visible keys in logical order (across runs)
        int n = 0;
        while (n < kBlock && run != runs_end) {
          if (j >= run[1]) {
            run += 2;
            if (run != runs_end) j = run[0];
            continue;
          }
          if (qu.sees(a, j)) js[n++] = j;
          j++;
        }
        if (n == 0) break;
        float bm = -std::numeric_limits<float>::infinity();
        for (int b = 0; b < n; b++) {
          s[b] = scale * dot(qv, k + (size_t(js[b]) * nKv + kv) * D, D);
          bm = std::max(bm, s[b]);
        }
        if (bm > m) {
          const float corr = std::exp(m - bm);  // 0 on the first block
          l *= corr;
          for (int c = 0; c < D; c++) acc[c] *= corr;
          m = bm;
        }
        for (int b = 0; b < n; b++) {
          const float p = std::exp(s[b] - m);
          l += p;
          axpy(acc.data(), p, v + (size_t(js[b]) * nKv + kv) * D, D);
        }
      }
      float* o = out + r * D;
      if (l > 0) {
        for (int c = 0; c < D; c++) o[c] = acc[c] / l;
        lse[r] = m + std::log(l);
      } else {
        std::memset(o, 0, size_t(D) * 4);
        lse[r] = -std::numeric_limits<float>::infinity();
      }
    }
  });
}

void attention_grad(const AttentionArgs& a, float* dq, float* dk, float* dv, const float* dout, const float* q,
                    const float* k, const float* v, const float* out, const float* lse) {
  check(a);
  const int D = a.D, nH = a.nH, nKv = a.nKv, group = a.nH / a.nKv;
  const float scale = a.scale;
  const float ninf = -std::numeric_limits<float>::infinity();
  const size_t rows = size_t(a.Tq) * nH;
  // delta[i,h] = Σ_c dout·out (= Σ_j p·dp)
  std::vector<float> delta(rows);
  parallel_for(rows, 64, [&](size_t r0, size_t r1) {
    for (size_t r = r0; r < r1; r++) {
      const float* g = dout + r * D;
      const float* o = out + r * D;
      double d = 0;
#pragma omp simd reduction(+ : d)
      for (int c = 0; c < D; c++) d += double(g[c]) * double(o[c]);
      delta[r] = float(d);
    }
  });
  // dq: one owner per (query, head)
  parallel_for(rows, 1, [&](size_t r0, size_t r1) {
    std::vector<float> acc(D);
    for (size_t r = r0; r < r1; r++) {
      const int i = int(r / nH), h = int(r % nH), kv = h / group;
      std::fill(acc.begin(), acc.end(), 0.f);
      const float L = lse[r];
      if (L != ninf) {
        const Query qu(a, i);
        const float* qv = q + r * D;
        const float* g = dout + r * D;
        auto [run, runs_end] = key_runs(a, i);
        for (; run != runs_end; run += 2)
          for (int j = run[0]; j < run[1]; j++) {
            if (!qu.sees(a, j)) continue;
            const float* kj = k + (size_t(j) * nKv + kv) * D;
            const float p = std::exp(scale * dot(qv, kj, D) - L);
            const float ds = p * (dot(g, v + (size_t(j) * nKv + kv) * D, D) - delta[r]);
            axpy(acc.data(), ds, kj, D);
          }
      }
      float* o = dq + r * D;
      for (int c = 0; c < D; c++) o[c] = scale * acc[c];
    }
  });
  // dk, dv: one owner per (key, kv head); queries ascending, then the group's heads ascending
  parallel_for(size_t(a.Tk) * nKv, 1, [&](size_t r0, size_t r1) {
    std::vector<float> ak(D), av(D);
    for (size_t r = r0; r < r1; r++) {
      const int j = int(r / nKv), kv = int(r % nKv);
      std::fill(ak.begin(), ak.end(), 0.f);
      std::fill(av.begin(), av.end(), 0.f);
      const float* kj = k + r * D;
      const float* vj = v + r * D;
      const int kseq = a.k_seq[j], kpos = a.k_pos[j], kseg = a.S > 0 ? a.k_seg[j] : 0;
      auto [run, runs_end] = query_runs(a, j);
      for (; run != runs_end; run += 2)
        for (int i = run[0]; i < run[1]; i++) {
          if (a.q_seq[i] != kseq || kpos > a.q_pos[i]) continue;
          if (a.S > 0 && a.blocked[(size_t(kseq) * a.S + a.q_seg[i]) * a.S + kseg]) continue;
          for (int h = kv * group; h < (kv + 1) * group; h++) {
            const size_t qr = size_t(i) * nH + h;
            const float L = lse[qr];
            if (L == ninf) continue;
            const float* qv = q + qr * D;
            const float* g = dout + qr * D;
            const float p = std::exp(scale * dot(qv, kj, D) - L);
            const float ds = p * (dot(g, vj, D) - delta[qr]);
            axpy(av.data(), p, g, D);
            axpy(ak.data(), ds, qv, D);
          }
        }
      float* ok = dk + r * D;
      float* ov = dv + r * D;
      for (int c = 0; c < D; c++) {
        ok[c] = scale * ak[c];
        ov[c] = av[c];
      }
    }
  });
}

}  // namespace MOTE_CPU_KERNEL_NS
