// attention family: causal grouped-query attention over packed sequences with the MoTE
// step-skipping segment mask and decode against cached keys. Reference:
// src/reference/attention.ts.
//   q, out, dOut, dq f32 [Tq, nH, D]; k, v, dk, dv f32 [Tk, nKv, D]; lse f32 [Tq, nH]
//   query head h reads kv head h / group (group = nH / nKv)
//   query i sees key j when j lies in one of i's key runs, kSeq[j] = qSeq[i], kPos[j] ≤ qPos[i]
//   and, with S > 0 segments, blocked[(qSeq[i]·S + qSeg[i])·S + kSeg[j]] = 0. A query reads only
//   its runs (its own sequence's keys, a paged cache's blocks), a key's backward only its
//   sequence's query runs. Sums run in logical order (the concatenated runs), so a sequence's
//   result does not depend on where its keys sit; pass 1 splits keys by logical index mod 64.
//   s = scale·q·k; out = Σ_j softmax(s)_j·v_j; lse = log Σ_j exp(s_j); a query that sees no key
//   gets out = 0, lse = −∞ and zero gradients.
//
// `aux` (i32) holds the layout, copied by the host from the AttentionLayout tensors:
// qSeq at 0, then qPos, kSeq, kPos, qSeg, kSeg, blocked, ranges at the offsets in Params; for
// the backward also lse and delta (f32 bits) at oLse and oDelta. ranges (src/ops/attention.ts):
// per query (first, count) of its key runs, per key (first, count) of its query runs, then the
// run table of numRuns (start, end) pairs; lists and runs are clamped into the table and into
// [0, Tk] / [0, Tq], so tampered contents read nothing outside the layout.
// DU = ceil(D / 64) (a specialisation constant): each of the 64 invocations owns dims
// c = lid + 64·u, u < DU.
//
// Entry points (src/backend/webgpu_model.ts):
//   fwd:   one workgroup (64) per (i, h) (y·z flattened, id = i·nH + h). Pass 1: each invocation
//          runs an online (max, Σ exp) over keys j = lid, lid + 64, ...; merged by a fixed tree →
//          max M and sum L. Pass 2: chunks of 64 keys, each invocation scores one key and stores
//          exp(s − M) in workgroup memory, then every invocation adds p·v over the chunk for its
//          dims. out = acc / L, lse = M + log L.
//   delta: one invocation per (i, h): delta = Σ_d dOut·out, into aux.
//   dq:    one workgroup per (i, h): chunks of 64 keys, dS_j = p_j·(dOut·v_j − delta) with
//          p_j = exp(s_j − lse); dq = scale·Σ_j dS_j·k_j.
//   dkv:   one workgroup per (j, kv) (id = j·nKv + kv): chunks of 64 (query, head) pairs
//          (i ascending, then the group's heads), p and dS as in dq; dv = Σ p·dOut,
//          dk = scale·Σ dS·q.
// Every output element has one owner and a fixed summation order: no atomics, bit-identical
// reruns. No infinity is used in arithmetic (WGSL may assume none): the empty max is −1e30.

struct Params {
  Tq: u32, Tk: u32, nH: u32, nKv: u32,
  D: u32, S: u32, scale: f32, group: u32,
  oQPos: u32, oKSeq: u32, oKPos: u32, oQSeg: u32,
  oKSeg: u32, oBlk: u32, oLse: u32, oDelta: u32,
  oRng: u32, numRuns: u32, row0: u32, pad1: u32,  // row0: first row of a chunked dispatch (fwd, dq, dkv)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> o1: array<f32>;      // fwd: out; dq: dq; dkv: dk
@group(0) @binding(2) var<storage, read_write> o2: array<f32>;      // fwd: lse; dkv: dv
@group(0) @binding(3) var<storage, read> q: array<f32>;
@group(0) @binding(4) var<storage, read> k: array<f32>;
@group(0) @binding(5) var<storage, read> v: array<f32>;
@group(0) @binding(6) var<storage, read> aux: array<i32>;
@group(0) @binding(7) var<storage, read> dOut: array<f32>;          // dkv
@group(0) @binding(2) var<storage, read> dOutQ: array<f32>;         // dq
// delta
@group(0) @binding(1) var<storage, read_write> auxW: array<i32>;
@group(0) @binding(2) var<storage, read> dOutD: array<f32>;
@group(0) @binding(3) var<storage, read> outD: array<f32>;

const WG: u32 = 64u;
const MINF: f32 = -1e30;
const DW: u32 = DU * 64u;
var<private> NEG_INF_BITS: u32 = 0xff800000u;

var<workgroup> ra: array<f32, 64>;   // fwd: running max; dkv: p of the chunk's pairs
var<workgroup> rb: array<f32, 64>;   // fwd: running sum / chunk p; dq, dkv: dS
var<workgroup> r1: array<f32, DW>;   // fwd, dq: q row; dkv: k row
var<workgroup> r2: array<f32, DW>;   // dq: dOut row; dkv: v row

fn visible(i: u32, j: u32) -> bool {
  let seq = aux[i];
  if (aux[p.oKSeq + j] != seq || aux[p.oKPos + j] > aux[p.oQPos + i]) { return false; }
  if (p.S == 0u) { return true; }
  let b = (u32(seq) * p.S + u32(aux[p.oQSeg + i])) * p.S + u32(aux[p.oKSeg + j]);
  return aux[p.oBlk + b] == 0;
}

// The run list of entry e (queries: e = i; keys: e = Tq + j): (first, count), clamped into the table.
fn runs_of(e: u32) -> vec2u {
  let f = u32(clamp(aux[p.oRng + 2u * e], 0, i32(p.numRuns)));
  let n = u32(clamp(aux[p.oRng + 2u * e + 1u], 0, i32(p.numRuns - f)));
  return vec2u(f, n);
}

// Run r of the table as [start, end), clamped into [0, limit].
fn run_at(r: u32, limit: u32) -> vec2u {
  let t = p.oRng + 2u * (p.Tq + p.Tk) + 2u * r;
  let s = u32(clamp(aux[t], 0, i32(limit)));
  let e = u32(clamp(aux[t + 1u], i32(s), i32(limit)));
  return vec2u(s, e);
}

// Σ_c r1[c]·k[kb + c] (r1 holds the q row)
fn dot_k(kb: u32) -> f32 {
  var s = 0.0;
  for (var c = 0u; c < p.D; c++) { s = fma(r1[c], k[kb + c], s); }
  return s;
}

// By its bits: WGSL lets a compiler assume no NaN, so `x != x` may fold to false (lavapipe's does).
fn is_nan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }

@compute @workgroup_size(64)
fn fwd(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let id = wid.z * nwg.y + wid.y + p.row0;
  if (id >= p.Tq * p.nH) { return; }
  let i = id / p.nH;
  let h = id % p.nH;
  let kv = h / p.group;
  for (var c = lid; c < p.D; c += WG) { r1[c] = q[id * p.D + c]; }
  workgroupBarrier();
  // pass 1: max and Σ exp over the visible keys
  var m = MINF;
  var l = 0.0;
  let rl = runs_of(i);
  var base = 0u;  // logical index of the run's first key, mod 64
  for (var r = rl.x; r < rl.x + rl.y; r++) {
    let se = run_at(r, p.Tk);
    for (var j = se.x + (lid + WG - base) % WG; j < se.y; j += WG) {
      if (!visible(i, j)) { continue; }
      let s = p.scale * dot_k((j * p.nKv + kv) * p.D);
      if (s > m) {
        l = l * exp(m - s) + 1.0;
        m = s;
      } else {
        l += exp(s - m);
      }
    }
    base = (base + se.y - se.x) % WG;
  }
  ra[lid] = m;
  rb[lid] = l;
  workgroupBarrier();
  for (var st = WG / 2u; st > 0u; st >>= 1u) {
    if (lid < st) {
      let ma = ra[lid];
      let mb = ra[lid + st];
      let mm = max(ma, mb);
      rb[lid] = rb[lid] * exp(ma - mm) + rb[lid + st] * exp(mb - mm);
      ra[lid] = mm;
    }
    workgroupBarrier();
  }
  let M = ra[0];
  let L = rb[0];
  workgroupBarrier();
  // pass 2: Σ_j exp(s_j − M)·v_j
  var acc: array<f32, DU>;
  for (var u = 0u; u < DU; u++) { acc[u] = 0.0; }
  for (var r = rl.x; r < rl.x + rl.y; r++) {
    let se = run_at(r, p.Tk);
    for (var j0 = se.x; j0 < se.y; j0 += WG) {
      let j = j0 + lid;
      var e = 0.0;
      if (j < se.y && visible(i, j)) { e = exp(p.scale * dot_k((j * p.nKv + kv) * p.D) - M); }
      rb[lid] = e;
      workgroupBarrier();
      let n = min(WG, se.y - j0);
      for (var jj = 0u; jj < n; jj++) {
        let pe = rb[jj];
        if (pe == 0.0) { continue; }
        let vb = ((j0 + jj) * p.nKv + kv) * p.D;
        for (var u = 0u; u < DU; u++) {
          let c = lid + WG * u;
          if (c < p.D) { acc[u] = fma(pe, v[vb + c], acc[u]); }
        }
      }
      workgroupBarrier();
    }
  }
  let seen = L > 0.0 || is_nan(L);  // L is NaN when a score was: the row becomes NaN, not 0
  let inv = select(0.0, 1.0 / L, seen);
  for (var u = 0u; u < DU; u++) {
    let c = lid + WG * u;
    if (c < p.D) { o1[id * p.D + c] = acc[u] * inv; }
  }
  if (lid == 0u) { o2[id] = select(bitcast<f32>(NEG_INF_BITS), select(M + log(L), L, is_nan(L)), seen); }
}

@compute @workgroup_size(64)
fn delta(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let id = (wid.z * nwg.y + wid.y) * WG + lid;
  if (id >= p.Tq * p.nH) { return; }
  var s = 0.0;
  for (var c = 0u; c < p.D; c++) { s = fma(dOutD[id * p.D + c], outD[id * p.D + c], s); }
  auxW[p.oDelta + id] = bitcast<i32>(s);
}

@compute @workgroup_size(64)
fn dq(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let id = wid.z * nwg.y + wid.y + p.row0;
  if (id >= p.Tq * p.nH) { return; }
  let i = id / p.nH;
  let h = id % p.nH;
  let kv = h / p.group;
  for (var c = lid; c < p.D; c += WG) {
    r1[c] = q[id * p.D + c];
    r2[c] = dOutQ[id * p.D + c];
  }
  workgroupBarrier();
  let lse = bitcast<f32>(aux[p.oLse + id]);
  let dl = bitcast<f32>(aux[p.oDelta + id]);
  var acc: array<f32, DU>;
  for (var u = 0u; u < DU; u++) { acc[u] = 0.0; }
  let rl = runs_of(i);
  for (var r = rl.x; r < rl.x + rl.y; r++) {
    let se = run_at(r, p.Tk);
    for (var j0 = se.x; j0 < se.y; j0 += WG) {
      let j = j0 + lid;
      var g = 0.0;
      if (j < se.y && visible(i, j)) {
        let kb = (j * p.nKv + kv) * p.D;
        let pr = exp(p.scale * dot_k(kb) - lse);
        var dp = 0.0;
        for (var c = 0u; c < p.D; c++) { dp = fma(r2[c], v[kb + c], dp); }
        g = pr * (dp - dl);
      }
      rb[lid] = g;
      workgroupBarrier();
      let n = min(WG, se.y - j0);
      for (var jj = 0u; jj < n; jj++) {
        let gj = rb[jj];
        if (gj == 0.0) { continue; }
        let kb = ((j0 + jj) * p.nKv + kv) * p.D;
        for (var u = 0u; u < DU; u++) {
          let c = lid + WG * u;
          if (c < p.D) { acc[u] = fma(gj, k[kb + c], acc[u]); }
        }
      }
      workgroupBarrier();
    }
  }
  for (var u = 0u; u < DU; u++) {
    let c = lid + WG * u;
    if (c < p.D) { o1[id * p.D + c] = p.scale * acc[u]; }
  }
}

@compute @workgroup_size(64)
fn dkv(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let id = wid.z * nwg.y + wid.y + p.row0;
  if (id >= p.Tk * p.nKv) { return; }
  let j = id / p.nKv;
  let kv = id % p.nKv;
  for (var c = lid; c < p.D; c += WG) {
    r1[c] = k[id * p.D + c];
    r2[c] = v[id * p.D + c];
  }
  workgroupBarrier();
  var ak: array<f32, DU>;
  var av: array<f32, DU>;
  for (var u = 0u; u < DU; u++) {
    ak[u] = 0.0;
    av[u] = 0.0;
  }
  let rl = runs_of(p.Tq + j);
  for (var r = rl.x; r < rl.x + rl.y; r++) {
    let se = run_at(r, p.Tq);
    // (query, head) pairs of the run: query se.x + pair / group, head kv·group + pair % group
    let np = (se.y - se.x) * p.group;
    for (var c0 = 0u; c0 < np; c0 += WG) {
      let pi = c0 + lid;
      var pr = 0.0;
      var g = 0.0;
      if (pi < np) {
        let i = se.x + pi / p.group;
        let h = kv * p.group + pi % p.group;
        if (visible(i, j)) {
          let qb = (i * p.nH + h) * p.D;
          var s = 0.0;
          var dp = 0.0;
          for (var c = 0u; c < p.D; c++) {
            s = fma(q[qb + c], r1[c], s);
            dp = fma(dOut[qb + c], r2[c], dp);
          }
          let row = i * p.nH + h;
          pr = exp(p.scale * s - bitcast<f32>(aux[p.oLse + row]));
          g = pr * (dp - bitcast<f32>(aux[p.oDelta + row]));
        }
      }
      ra[lid] = pr;
      rb[lid] = g;
      workgroupBarrier();
      let n = min(WG, np - c0);
      for (var jj = 0u; jj < n; jj++) {
        let pj = ra[jj];
        if (pj == 0.0) { continue; }
        let gj = rb[jj];
        let pp = c0 + jj;
        let qb = ((se.x + pp / p.group) * p.nH + kv * p.group + pp % p.group) * p.D;
        for (var u = 0u; u < DU; u++) {
          let c = lid + WG * u;
          if (c < p.D) {
            av[u] = fma(pj, dOut[qb + c], av[u]);
            ak[u] = fma(gj, q[qb + c], ak[u]);
          }
        }
      }
      workgroupBarrier();
    }
  }
  for (var u = 0u; u < DU; u++) {
    let c = lid + WG * u;
    if (c < p.D) {
      o1[id * p.D + c] = p.scale * ak[u];
      o2[id * p.D + c] = av[u];
    }
  }
}
