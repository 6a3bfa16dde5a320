// attention family on the CPU; contracts in src/ops/attention.ts (AttentionKernels).
//   q, out, dq, dout: [Tq, nH, D]; k, v, dk, dv: [Tk, nKv, D]; lse: [Tq, nH]; all f32.
//   Query head h reads kv head h / (nH / nKv). Query i sees key j when j lies in one of i's key
//   runs (a.ranges), k_seq[j] = q_seq[i], k_pos[j] ≤ q_pos[i] and, with S > 0 segments,
//   blocked[(q_seq[i]·S + q_seg[i])·S + k_seg[j]] is 0. A query that sees no key gets out = 0,
//   lse = −∞ and zero gradients. Keys are visited in run order ("logical" order), so a
//   sequence's result does not depend on where its keys sit; each key's backward visits its
//   sequence's query runs. Cost per query: its own sequence's keys, not the batch's.
//
// Blocked, flash-attention style: rows (queries, or keys in the dk/dv pass) are cut into blocks
// of ≤ kQ consecutive rows of one sequence, and their partners are taken in windows of kW in
// the logical order of the runs; within a window the partners' vectors are transposed so that
// the kW scores of a row are one FMA per dim, vectorised over the window (no horizontal sums),
// and exp is exp_f32 (vectorised). A window that no row of the block sees is skipped (causal
// prefixes cost about half). Sums are per window in logical order: a row's result depends only
// on its own sequence's runs, not on the other rows of its block or batch.
// Backward from the saved lse, in two passes without atomics (each element has one owner):
//   delta[i,h] = Σ_c dout·out  (double);  p = exp(s − lse), dp = dout·v, ds = p·(dp − delta)
//   dq[i,h]  = scale · Σ_j ds · k[j]                 per (query block, head)
//   dk[j,kv] = scale · Σ_{i, h∈kv} ds · q[i,h],  dv[j,kv] = Σ_{i, h∈kv} p · dout[i,h]
//                                                    per (key block, kv head): query windows,
//                                                    the group's heads in order in each
// Work items are cut from the layout only, so results do not depend on the thread count.
// The layout's index arrays are checked before anything is written.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <array>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernels.h"
#include "threads.h"
#include "simd.h"
#include "fast_exp.h"

namespace MOTE_CPU_KERNEL_NS {
namespace {

constexpr int kQ = 8;   // rows (queries, or keys in dk/dv) per block
constexpr int kW = 16;  // keys (or queries) per window: one vector of scores

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

// The run table of a.ranges: (start, end) pairs after the per-query and per-key run lists.
inline const int* run_table(const AttentionArgs& a) { return a.ranges + 2 * (size_t(a.Tq) + a.Tk); }

// The windows of the run lists a set of rows reads: the partners of every row (queries: their
// keys; keys: their queries) in windows of kW consecutive indices in the logical order of the
// row's run list (runs concatenated). Rows with the same list share its windows, and each
// window's partner vectors are transposed once per call (see transpose_all): the fixed tiles
// every sum is taken over, so a row's result depends only on its own sequence's runs.
struct WindowSet {
  std::vector<int> first;  // per row: its list's first window
  std::vector<int> count;  // per row: its list's windows
  std::vector<int> idx;    // [window][kW] partner indices (the first cnt valid)
  std::vector<int> cnt;    // [window]
  // [window]: its slot in the transposed copies, or −1 for a list read by so few rows·heads
  // that transposing it costs more than it saves (decode: one query per sequence)
  std::vector<int> slot;
  int total = 0, slots = 0;
};

// Rows·heads per list below which its windows are not transposed (scores by direct dots).
constexpr int kTransposeMin = 4;

WindowSet make_windows(const AttentionArgs& a, const int* entries, int nrows, int heads) {
  WindowSet ws;
  ws.first.assign(nrows, 0);
  ws.count.assign(nrows, 0);
  // (first run, runs) → (first window, windows, rows reading it)
  std::map<std::pair<int, int>, std::array<int, 3>> seen;
  const int* table = run_table(a);
  for (int i = 0; i < nrows; i++) {
    const std::pair<int, int> key{entries[2 * size_t(i)], entries[2 * size_t(i) + 1]};
    if (key.second == 0) continue;
    auto it = seen.find(key);
    if (it == seen.end()) {
      const int w0 = ws.total;
      int n = 0;
      for (int r = key.first; r < key.first + key.second; r++)
        for (int x = table[2 * r]; x < table[2 * r + 1]; x++) {
          if (n == 0) {
            ws.idx.resize(size_t(ws.total + 1) * kW, 0);
            ws.cnt.push_back(0);
            ws.total++;
          }
          ws.idx[size_t(ws.total - 1) * kW + n] = x;
          ws.cnt.back() = ++n;
          if (n == kW) n = 0;
        }
      it = seen.emplace(key, std::array<int, 3>{w0, ws.total - w0, 0}).first;
    }
    it->second[2]++;
    ws.first[i] = it->second[0];
    ws.count[i] = it->second[1];
  }
  ws.slot.assign(ws.total, -1);
  for (const auto& kv : seen)
    if (kv.second[2] * heads >= kTransposeMin)
      for (int w = kv.second[0]; w < kv.second[0] + kv.second[1]; w++) ws.slot[w] = ws.slots++;
  return ws;
}

// dst[((h·slots + slot(w))·D + c)·kW + x] = src[idx[w][x]·stride + h·D + c] for every head slot
// h < H and transposed window w (0 past a window's count): the windows' vectors transposed, so
// that kW scores of a row are one FMA per dim, vectorised over the window.
void transpose_all(std::vector<float>& dst, const WindowSet& ws, const float* src, int H, size_t stride, int D) {
  dst.assign(size_t(H) * ws.slots * D * kW, 0.f);
  parallel_for(size_t(H) * ws.total, 16, [&](size_t w0, size_t w1) {
    for (size_t hw = w0; hw < w1; hw++) {
      const int h = int(hw / ws.total), w = int(hw % ws.total), n = ws.cnt[w];
      if (ws.slot[w] < 0) continue;
      float* t = dst.data() + (size_t(h) * ws.slots + ws.slot[w]) * D * kW;
      for (int x = 0; x < n; x++) {
        const float* r = src + size_t(ws.idx[size_t(w) * kW + x]) * stride + size_t(h) * D;
        for (int c = 0; c < D; c++) t[size_t(c) * kW + x] = r[c];
      }
    }
  });
}

// Blocks of ≤ kQ consecutive rows with the same run-list entry (queries: same sequence and key
// runs; keys: same query runs), as [start, end) pairs. Cut from the layout only.
std::vector<std::pair<int, int>> row_blocks(const int* entries, int n, int kq) {
  std::vector<std::pair<int, int>> out;
  for (int i = 0; i < n;) {
    int e = i + 1;
    while (e < n && e - i < kq && entries[2 * size_t(e)] == entries[2 * size_t(i)] &&
           entries[2 * size_t(e) + 1] == entries[2 * size_t(i) + 1])
      e++;
    out.push_back({i, e});
    i = e;
  }
  return out;
}

// acc[r][c] += Σ_x w[r][x]·parts[x][c] for the rows r < nr and the x < n that row r sees
// (vis): a partner no row sees is never read (an empty cache slot may hold anything). Partners
// every row sees go through one pass with kQ vector accumulators per 8 dims (each partner's
// 8 floats loaded once for all rows); partners only some rows see are added row by row.
// Rows past nr accumulate into `dummy` (D floats of scratch).
inline void block_axpy(float* acc, int nr, const float (*w)[kW], const bool (*vis)[kW], const float* const* parts,
                       int n, int D, float* dummy) {
  int full[kW], nf = 0;
  bool isfull[kW], partial = false;
  for (int x = 0; x < n; x++) {
    bool all = true, any = false;
    for (int r = 0; r < nr; r++) {
      all &= vis[r][x];
      any |= vis[r][x];
    }
    isfull[x] = all;
    if (all)
      full[nf++] = x;
    else
      partial |= any;
  }
  if (nf > 0) {
    float* rows[kQ];
    float wf[kQ][kW];
    for (int r = 0; r < kQ; r++) {
      rows[r] = r < nr ? acc + size_t(r) * D : dummy;
      for (int f = 0; f < nf; f++) wf[r][f] = r < nr ? w[r][full[f]] : 0.f;
    }
    int c = 0;
    for (; c + 8 <= D; c += 8) {
      f8 a[kQ];
      for (int r = 0; r < kQ; r++) a[r] = ld8(rows[r] + c);
      for (int f = 0; f < nf; f++) {
        const f8 v = ld8(parts[full[f]] + c);
        for (int r = 0; r < kQ; r++) a[r] += wf[r][f] * v;
      }
      for (int r = 0; r < kQ; r++) st8(rows[r] + c, a[r]);
    }
    for (; c < D; c++)
      for (int r = 0; r < nr; r++) {
        float t = rows[r][c];
        for (int f = 0; f < nf; f++) t += wf[r][f] * parts[full[f]][c];
        rows[r][c] = t;
      }
  }
  if (partial)
    for (int r = 0; r < nr; r++)
      for (int x = 0; x < n; x++)
        if (vis[r][x] && !isfull[x]) axpy(acc + size_t(r) * D, w[r][x], parts[x], D);
}

// s[r][x] = scale · Σ_c rows[r][c]·t[c·kW + x] for the NQ rows (kW = 16: two vectors per row):
// NQ·SP independent accumulator pairs (SP interleaved parts of the dims), added in a fixed
// order, so the FMAs pipeline instead of waiting on one chain.
template <int NQ>
inline void block_dots_n(float (*s)[kW], const float* const* x, const float* t, int D, float scale) {
  constexpr int SP = 4 / NQ > 0 ? 4 / NQ : 1;
  static_assert(kW == 16, "two vectors per window");
  f8 lo[NQ][SP] = {}, hi[NQ][SP] = {};
  int c = 0;
  for (; c + SP <= D; c += SP)
    for (int u = 0; u < SP; u++) {
      const f8 t0 = ld8(t + size_t(c + u) * kW), t1 = ld8(t + size_t(c + u) * kW + 8);
      for (int r = 0; r < NQ; r++) {
        const float xc = x[r][c + u];
        lo[r][u] += xc * t0;
        hi[r][u] += xc * t1;
      }
    }
  for (; c < D; c++) {
    const f8 t0 = ld8(t + size_t(c) * kW), t1 = ld8(t + size_t(c) * kW + 8);
    for (int r = 0; r < NQ; r++) {
      lo[r][0] += x[r][c] * t0;
      hi[r][0] += x[r][c] * t1;
    }
  }
  for (int r = 0; r < NQ; r++) {
    f8 a = lo[r][0], b = hi[r][0];
    for (int u = 1; u < SP; u++) {
      a += lo[r][u];
      b += hi[r][u];
    }
    st8(s[r], scale * a);
    st8(s[r] + 8, scale * b);
  }
}

// block_dots_n for nq ≤ kQ rows (rows past nq of the chosen width read `zero`, a D-vector of 0).
inline void block_dots(float (*s)[kW], const float* const* rows, int nq, const float* t, int D, float scale,
                       const float* zero) {
  const float* x[kQ];
  for (int r = 0; r < kQ; r++) x[r] = r < nq ? rows[r] : zero;
  if (nq == 1)
    block_dots_n<1>(s, x, t, D, scale);
  else if (nq == 2)
    block_dots_n<2>(s, x, t, D, scale);
  else if (nq <= 4)
    block_dots_n<4>(s, x, t, D, scale);
  else
    block_dots_n<8>(s, x, t, D, scale);
}

// Visibility of a window's partners from up to kQ rows: vis[r][x] for x < kW (false past n).
// The window's ids are loaded once; without segments the tests vectorise.
struct WindowIds {
  int seq[kW], pos[kW], seg[kW];
  void load(const int* sq, const int* ps, const int* sg, const int* idx, int n) {
    for (int x = 0; x < kW; x++) {
      const bool in = x < n;
      seq[x] = in ? sq[idx[x]] : -2;  // −2 matches no sequence (−1 is an empty slot's)
      pos[x] = in ? ps[idx[x]] : 0;
      seg[x] = in && sg ? sg[idx[x]] : 0;
    }
  }
};

// Rows are queries: partner keys visible from query i.
inline bool query_vis(const AttentionArgs& a, const WindowIds& k, int i, bool* vis) {
  const int qs = a.q_seq[i], qp = a.q_pos[i];
  const int* brow = a.S > 0 ? a.blocked + (size_t(qs) * a.S + a.q_seg[i]) * a.S : nullptr;
  bool any = false;
  for (int x = 0; x < kW; x++) {
    const bool on = k.seq[x] == qs && k.pos[x] <= qp && !(brow && brow[k.seg[x]]);
    vis[x] = on;
    any |= on;
  }
  return any;
}

// Rows are keys: partner queries that see key j.
inline bool key_vis(const AttentionArgs& a, const WindowIds& qw, int j, bool* vis) {
  const int ks = a.k_seq[j], kp = a.k_pos[j], kg = a.S > 0 ? a.k_seg[j] : 0;
  bool any = false;
  for (int x = 0; x < kW; x++) {
    const bool on = qw.seq[x] == ks && kp <= qw.pos[x] &&
                    !(a.S > 0 && qw.seq[x] >= 0 && a.blocked[(size_t(ks) * a.S + qw.seg[x]) * a.S + kg]);
    vis[x] = on;
    any |= on;
  }
  return any;
}

// Scores of a window whose partners were not transposed: s[r][x] = scale · rows[r]·parts[x]
// (x < n; 0 past n), a dot per pair with 8-wide partial sums.
inline void direct_dots(float (*s)[kW], const float* const* rows, int nq, const float* const* parts, int n, int D,
                        float scale) {
  for (int r = 0; r < nq; r++)
    for (int x = 0; x < kW; x++) {
      if (x >= n) {
        s[r][x] = 0.f;
        continue;
      }
      const float *a = rows[r], *b = parts[x];
      f8 acc = {};
      int c = 0;
      for (; c + 8 <= D; c += 8) acc += ld8(a + c) * ld8(b + c);
      float t = hsum(acc);
      for (; c < D; c++) t += a[c] * b[c];
      s[r][x] = scale * t;
    }
}

// The window's scores for the block's rows: from the transposed copy (head slot h) when the
// window has one, else by direct dots with its partners' rows.
inline void scores(float (*s)[kW], const float* const* rows, int nq, const WindowSet& ws, const std::vector<float>& t,
                   int w, int h, const float* const* parts, int n, int D, float scale, const float* zero) {
  if (ws.slot[w] >= 0)
    block_dots(s, rows, nq, t.data() + (size_t(h) * ws.slots + ws.slot[w]) * D * kW, D, scale, zero);
  else
    direct_dots(s, rows, nq, parts, n, D, scale);
}

// One window of a query block's keys: visibility from each of the block's queries, and the keys'
// and values' rows of kv head `kv`. load() is false when no query of the block sees any of them.
struct KeyWindow {
  const int* idx;
  int n;
  bool vis[kQ][kW];
  const float *krows[kW], *vrows[kW];
  WindowIds ids;
  bool load(const AttentionArgs& a, const WindowSet& ws, int w, int i0, int nq, const float* k, const float* v,
            int kv) {
    idx = ws.idx.data() + size_t(w) * kW;
    n = ws.cnt[w];
    ids.load(a.k_seq, a.k_pos, a.S > 0 ? a.k_seg : nullptr, idx, n);
    bool any = false;
    for (int qi = 0; qi < nq; qi++) any |= query_vis(a, ids, i0 + qi, vis[qi]);
    if (!any) return false;
    for (int x = 0; x < n; x++) {
      krows[x] = k + (size_t(idx[x]) * a.nKv + kv) * a.D;
      vrows[x] = v + (size_t(idx[x]) * a.nKv + kv) * a.D;
    }
    return true;
  }
};

}  // namespace

// Forward: one work item per (block of ≤ kQ queries of one sequence, kv head): over the windows
// of the block's keys, visibility once per window, then for each query head of the group every
// query's kW scores at once (block_dots on the transposed keys), an online softmax per
// (query, head) with one rescale per window, and p·v summed over the window. A window none of
// the block's queries sees is skipped (causal prefixes cost about half).
void attention(const AttentionArgs& a, float* out, float* lse, const float* q, const float* k, const float* v) {
  check(a);
  const int D = a.D, nH = a.nH, nKv = a.nKv, group = a.nH / a.nKv;
  const float scale = a.scale, ninf = -std::numeric_limits<float>::infinity();
  const auto blocks = row_blocks(a.ranges, a.Tq, kQ);
  const WindowSet ws = make_windows(a, a.ranges, a.Tq, group);
  std::vector<float> kt;
  transpose_all(kt, ws, k, nKv, size_t(nKv) * D, D);
  parallel_for(blocks.size() * nKv, 1, [&](size_t r0, size_t r1) {
    std::vector<float> acc(size_t(group) * kQ * D), m(size_t(group) * kQ), l(size_t(group) * kQ), zero(D);
    KeyWindow kw;
    for (size_t r = r0; r < r1; r++) {
      const auto [i0, i1] = blocks[r / nKv];
      const int kv = int(r % nKv), nq = i1 - i0;
      std::fill(acc.begin(), acc.end(), 0.f);
      std::fill(m.begin(), m.end(), ninf);
      std::fill(l.begin(), l.end(), 0.f);
      for (int w = ws.first[i0]; w < ws.first[i0] + ws.count[i0]; w++) {
        if (!kw.load(a, ws, w, i0, nq, k, v, kv)) continue;
        const int n = kw.n;
        const auto& vis = kw.vis;
        for (int g = 0; g < group; g++) {
          const int h = kv * group + g;
          const float* qrows[kQ];
          for (int qi = 0; qi < nq; qi++) qrows[qi] = q + (size_t(i0 + qi) * nH + h) * D;
          float sc[kQ][kW];
          scores(sc, qrows, nq, ws, kt, w, kv, kw.krows, n, D, scale, zero.data());
          float pw[kQ][kW];
          for (int qi = 0; qi < nq; qi++) {
            const float* s = sc[qi];
            float wm = ninf;
            bool nan = false;  // std::max skips a NaN score; it must reach the output, not vanish
            for (int x = 0; x < kW; x++)
              if (vis[qi][x]) {
                wm = std::max(wm, s[x]);
                nan |= s[x] != s[x];
              }
            if (wm == ninf && !nan) continue;  // vis[qi] is all false: block_axpy adds nothing to the row
            const size_t st = size_t(g) * kQ + qi;
            float* o = acc.data() + st * D;
            if (wm > m[st]) {
              const float corr = m[st] == ninf ? 0.f : exp_f32(m[st] - wm);
              l[st] *= corr;
#pragma omp simd
              for (int c = 0; c < D; c++) o[c] *= corr;
              m[st] = wm;
            }
            const float mq = m[st];
            float e[kW];
#pragma omp simd
            for (int x = 0; x < kW; x++) e[x] = exp_f32(s[x] - mq);
            float ps = 0;
            for (int x = 0; x < kW; x++) {
              pw[qi][x] = vis[qi][x] ? e[x] : 0.f;
              ps += pw[qi][x];
            }
            l[st] += ps;
          }
          block_axpy(acc.data() + size_t(g) * kQ * D, nq, pw, vis, kw.vrows, n, D, zero.data());
        }
      }
      for (int g = 0; g < group; g++)
        for (int qi = 0; qi < nq; qi++) {
          const size_t st = size_t(g) * kQ + qi, row = size_t(i0 + qi) * nH + kv * group + g;
          float* o = out + row * D;
          const float* src = acc.data() + st * D;
          if (l[st] > 0 || l[st] != l[st]) {  // a NaN score makes the row NaN (l is NaN)
            for (int c = 0; c < D; c++) o[c] = src[c] / l[st];
            lse[row] = m[st] + std::log(l[st]);
          } else {
            std::memset(o, 0, size_t(D) * 4);
            lse[row] = ninf;
          }
        }
    }
  });
}

// Backward, flash-attention style from the saved lse, in two passes without atomics:
//   dq: per (query block, kv head), over the windows of the block's keys, for each head of the
//       group: s and dp = dout·v for the block at once (transposed keys and values),
//       ds = p·(dp − delta), dq += Σ ds·k;
//   dk, dv: per (block of ≤ kQ keys with the same query runs, kv head), over the windows of
//       their queries, the group's heads in order in each: s and dp for the block at once
//       (transposed queries and douts), dv += Σ p·dout, dk += Σ ds·q.
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
  {
    const auto qblocks = row_blocks(a.ranges, a.Tq, kQ);
    const WindowSet ws = make_windows(a, a.ranges, a.Tq, group);
    std::vector<float> kt, vt;
    transpose_all(kt, ws, k, nKv, size_t(nKv) * D, D);
    transpose_all(vt, ws, v, nKv, size_t(nKv) * D, D);
    parallel_for(qblocks.size() * nKv, 1, [&](size_t r0, size_t r1) {
      std::vector<float> acc(size_t(group) * kQ * D), zero(D);
      KeyWindow kw;
      for (size_t r = r0; r < r1; r++) {
        const auto [i0, i1] = qblocks[r / nKv];
        const int kv = int(r % nKv), nq = i1 - i0;
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int w = ws.first[i0]; w < ws.first[i0] + ws.count[i0]; w++) {
          if (!kw.load(a, ws, w, i0, nq, k, v, kv)) continue;
          const int n = kw.n;
          const auto& vis = kw.vis;
          for (int g = 0; g < group; g++) {
            const int h = kv * group + g;
            const float *qrows[kQ], *grows[kQ];
            for (int qi = 0; qi < nq; qi++) {
              qrows[qi] = q + (size_t(i0 + qi) * nH + h) * D;
              grows[qi] = dout + (size_t(i0 + qi) * nH + h) * D;
            }
            float sc[kQ][kW], dpc[kQ][kW];
            scores(sc, qrows, nq, ws, kt, w, kv, kw.krows, n, D, scale, zero.data());
            scores(dpc, grows, nq, ws, vt, w, kv, kw.vrows, n, D, 1.f, zero.data());
            float dsw[kQ][kW];
            for (int qi = 0; qi < nq; qi++) {
              const size_t row = size_t(i0 + qi) * nH + h;
              const float L = lse[row], dl = delta[row];
              float e[kW];
#pragma omp simd
              for (int x = 0; x < kW; x++) e[x] = exp_f32(sc[qi][x] - L) * (dpc[qi][x] - dl);
              // a query that saw nothing (L = −∞) has vis all false
              for (int x = 0; x < kW; x++) dsw[qi][x] = vis[qi][x] ? e[x] : 0.f;
            }
            block_axpy(acc.data() + size_t(g) * kQ * D, nq, dsw, vis, kw.krows, n, D, zero.data());
          }
        }
        for (int g = 0; g < group; g++)
          for (int qi = 0; qi < nq; qi++) {
            float* o = dq + (size_t(i0 + qi) * nH + kv * group + g) * D;
            const float* src = acc.data() + (size_t(g) * kQ + qi) * D;
            for (int c = 0; c < D; c++) o[c] = scale * src[c];
          }
      }
    });
  }
  // dk, dv
  const int* kentries = a.ranges + 2 * size_t(a.Tq);
  const auto kblocks = row_blocks(kentries, a.Tk, kQ);
  const WindowSet ws = make_windows(a, kentries, a.Tk, group);
  std::vector<float> qt, gt;
  transpose_all(qt, ws, q, nH, size_t(nH) * D, D);
  transpose_all(gt, ws, dout, nH, size_t(nH) * D, D);
  parallel_for(kblocks.size() * nKv, 1, [&](size_t r0, size_t r1) {
    std::vector<float> ak(size_t(kQ) * D), av(size_t(kQ) * D), zero(D);
    WindowIds ids;
    for (size_t r = r0; r < r1; r++) {
      const auto [j0, j1] = kblocks[r / nKv];
      const int kv = int(r % nKv), nk = j1 - j0;
      const float *krows[kQ], *vrows[kQ];
      for (int kj = 0; kj < nk; kj++) {
        krows[kj] = k + (size_t(j0 + kj) * nKv + kv) * D;
        vrows[kj] = v + (size_t(j0 + kj) * nKv + kv) * D;
      }
      std::fill(ak.begin(), ak.begin() + size_t(nk) * D, 0.f);
      std::fill(av.begin(), av.begin() + size_t(nk) * D, 0.f);
      for (int w = ws.first[j0]; w < ws.first[j0] + ws.count[j0]; w++) {
        const int* idx = ws.idx.data() + size_t(w) * kW;
        const int n = ws.cnt[w];
        ids.load(a.q_seq, a.q_pos, a.S > 0 ? a.q_seg : nullptr, idx, n);
        bool vis[kQ][kW], any = false;
        for (int kj = 0; kj < nk; kj++) any |= key_vis(a, ids, j0 + kj, vis[kj]);
        if (!any) continue;
        for (int h = kv * group; h < (kv + 1) * group; h++) {
          float L[kW], dl[kW];
          const float *qrows[kW], *grows[kW];
          for (int x = 0; x < kW; x++) {
            const size_t row = x < n ? size_t(idx[x]) * nH + h : 0;
            L[x] = x < n ? lse[row] : ninf;
            dl[x] = x < n ? delta[row] : 0.f;
            if (x < n) {
              qrows[x] = q + row * D;
              grows[x] = dout + row * D;
            }
          }
          float sc[kQ][kW], dpc[kQ][kW];
          scores(sc, krows, nk, ws, qt, w, h, qrows, n, D, scale, zero.data());
          scores(dpc, vrows, nk, ws, gt, w, h, grows, n, D, 1.f, zero.data());
          float pw[kQ][kW], dsw[kQ][kW];
          for (int kj = 0; kj < nk; kj++) {
            float e[kW];
#pragma omp simd
            for (int x = 0; x < kW; x++) e[x] = exp_f32(sc[kj][x] - L[x]);
            // a query that saw nothing (L = −∞) sees no key: vis is false there
            for (int x = 0; x < kW; x++) {
              pw[kj][x] = vis[kj][x] ? e[x] : 0.f;
              dsw[kj][x] = vis[kj][x] ? e[x] * (dpc[kj][x] - dl[x]) : 0.f;
            }
          }
          block_axpy(av.data(), nk, pw, vis, grows, n, D, zero.data());
          block_axpy(ak.data(), nk, dsw, vis, qrows, n, D, zero.data());
        }
      }
      for (int kj = 0; kj < nk; kj++) {
        const size_t jr = (size_t(j0 + kj) * nKv + kv) * D;
        for (int c = 0; c < D; c++) {
          dk[jr + c] = scale * ak[size_t(kj) * D + c];
          dv[jr + c] = av[size_t(kj) * D + c];
        }
      }
    }
  });
}

}  // namespace MOTE_CPU_KERNEL_NS
