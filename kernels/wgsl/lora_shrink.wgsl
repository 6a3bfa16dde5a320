// lora_shrink family: out[q, r] = c_q · Σ_h W(e_q, r, h) · u[t_q, h] for r < rank[e_q],
// 0 for rank[e_q] ≤ r < R and for empty slots, where q = t·K + k is a slot of the batch.
// One shader serves
//   loraShrink:     W = A [L,R,Hin] (sr = Hin, sh = 1),  u = x,  c = 1
//   loraShrinkGrad: W = B [L,Hout,R] read transposed (sr = 1, sh = R), u = dy, c = weight·scale
// W(e, r, h) = load_w(e·se + r·sr + h·sh) (f32, f16 or bf16, see src/backend/wgsl.ts); f32 accumulation.
//
// Entry points (see src/backend/webgpu.ts for the launches):
//   bgmv: one workgroup per slot q (decode); threads stride over h, partial sums of up to
//         RC ranks per thread, reduced in workgroup memory.
//   sgmv: grouped by adapter; one workgroup per (16-rank chunk, tile of ≤ 64 slots of one
//         adapter's segment of `order`), a tiled GEMM over h so each A/B tile is reused by
//         the 64 slots.

struct Params {
  T: u32, K: u32, R: u32, H: u32,
  sr: u32, sh: u32, se: u32, coef: u32,
  G: u32, ntiles: u32, pad0: u32, pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> outv: array<f32>;   // [T, K, R]
@group(0) @binding(2) var<storage, read> u: array<f32>;            // [T, H]
@group(0) @binding(3) var<storage, read> w: array<w_store>;
@group(0) @binding(4) var<storage, read> rw: array<f32>;           // routing weight [T, K]
@group(0) @binding(5) var<storage, read> rank: array<i32>;         // [L]
@group(0) @binding(6) var<storage, read> scale: array<f32>;        // [L]
@group(0) @binding(7) var<storage, read> idx: array<i32>;          // bgmv: slots [T, K]; sgmv: order [P]
// sgmv only: segStart [G + 1], segAdapter [G], then (g, start) per tile of ≤ 64 slots.
@group(0) @binding(8) var<storage, read> seg: array<i32>;

fn coef_of(q: u32, e: u32) -> f32 {
  if (p.coef != 0u) { return rw[q] * scale[e]; }
  return 1.0;
}

// ---------------------------------------------------------------- bgmv
const BW: u32 = 128u;  // workgroup size
const RC: u32 = 16u;   // ranks per pass over h
var<workgroup> red: array<f32, 2048>;  // [RC][BW]

@compute @workgroup_size(128)
fn bgmv(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let q = wid.z * nwg.y + wid.y;
  if (q >= p.T * p.K) { return; }
  let slot = idx[q];
  let ob = q * p.R;
  if (slot < 0) {
    for (var r = lid; r < p.R; r += BW) { outv[ob + r] = 0.0; }
    return;
  }
  let e = min(u32(slot), arrayLength(&rank) - 1u);  // adapter index kept inside the stack
  // clamped: a tampered rank can neither run the loops past R nor (negative) near 2^32
  let rk = min(u32(max(rank[e], 0)), p.R);
  let ub = (q / p.K) * p.H;
  let wb = e * p.se;
  for (var r0 = 0u; r0 < rk; r0 += RC) {
    let nr = min(RC, rk - r0);
    var acc: array<f32, RC>;
    for (var j = 0u; j < RC; j++) { acc[j] = 0.0; }  // explicit: Dawn/lavapipe keeps acc across r0 otherwise
    for (var h = lid; h < p.H; h += BW) {
      let x = u[ub + h];
      let wh = wb + r0 * p.sr + h * p.sh;
      for (var j = 0u; j < RC; j++) {
        if (j < nr) { acc[j] = fma(load_w(wh + j * p.sr), x, acc[j]); }
      }
    }
    for (var j = 0u; j < RC; j++) { red[j * BW + lid] = acc[j]; }
    workgroupBarrier();
    for (var s = BW / 2u; s > 0u; s >>= 1u) {
      if (lid < s) {
        for (var j = 0u; j < RC; j++) { red[j * BW + lid] += red[j * BW + lid + s]; }
      }
      workgroupBarrier();
    }
    if (lid < nr) { outv[ob + r0 + lid] = coef_of(q, e) * red[lid * BW]; }
    workgroupBarrier();
  }
  for (var r = rk + lid; r < p.R; r += BW) { outv[ob + r] = 0.0; }
}

// ---------------------------------------------------------------- sgmv
const TM: u32 = 64u;   // slots per tile
const TR: u32 = 16u;   // ranks per workgroup
const KT: u32 = 16u;   // h per step
const UP: u32 = 65u;   // padded row of Us
var<workgroup> Us: array<f32, 1040>;  // [KT][UP]: u[t_m, h0 + kk]
var<workgroup> Ws: array<f32, 256>;   // [KT][TR]: W(e, r0 + rr, h0 + kk)
var<workgroup> Sq: array<u32, 64>;    // slot q of tile row m
var<workgroup> St: array<u32, 64>;    // token of tile row m

@compute @workgroup_size(64)
fn sgmv(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let tile = wid.z * nwg.y + wid.y;
  if (tile >= p.ntiles) { return; }
  let tb = 2u * p.G + 1u + 2u * tile;
  let g = u32(seg[tb]);
  let start = u32(seg[tb + 1u]);
  let n = min(TM, u32(seg[g + 1u]) - start);
  let e = min(u32(seg[p.G + 1u + g]), arrayLength(&rank) - 1u);  // adapter index kept inside the stack
  // clamped: a tampered rank can neither run the loops past R nor (negative) near 2^32
  let rk = min(u32(max(rank[e], 0)), p.R);
  let r0 = wid.x * TR;
  if (r0 >= rk) {
    // this rank chunk is past the adapter's rank: zeros, no reads of W
    for (var i = lid; i < n * TR; i += 64u) {
      let r = r0 + i % TR;
      if (r < p.R) { outv[u32(idx[start + i / TR]) * p.R + r] = 0.0; }
    }
    return;
  }
  if (lid < n) {
    let q = u32(idx[start + lid]);
    Sq[lid] = q;
    St[lid] = q / p.K;
  }
  workgroupBarrier();
  let tx = lid % 4u;   // ranks r0 + tx + 4j
  let ty = lid / 4u;   // rows ty + 16i
  let wb = e * p.se;
  var acc: array<array<f32, 4>, 4>;
  for (var h0 = 0u; h0 < p.H; h0 += KT) {
    for (var i = lid; i < KT * TM; i += 64u) {
      let kk = i % KT;
      let m = i / KT;
      var val = 0.0;
      if (m < n && h0 + kk < p.H) { val = u[St[m] * p.H + h0 + kk]; }
      Us[kk * UP + m] = val;
    }
    for (var i = lid; i < KT * TR; i += 64u) {
      // walk W along its contiguous axis
      var kk = i % KT;
      var rr = i / KT;
      if (p.sh != 1u) { rr = i % TR; kk = i / TR; }
      var val = 0.0;
      if (r0 + rr < rk && h0 + kk < p.H) { val = load_w(wb + (r0 + rr) * p.sr + (h0 + kk) * p.sh); }
      Ws[kk * TR + rr] = val;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < KT; kk++) {
      var a: array<f32, 4>;
      var b: array<f32, 4>;
      for (var i = 0u; i < 4u; i++) { a[i] = Us[kk * UP + ty + 16u * i]; }
      for (var j = 0u; j < 4u; j++) { b[j] = Ws[kk * TR + tx + 4u * j]; }
      for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) { acc[i][j] = fma(a[i], b[j], acc[i][j]); }
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i++) {
    let m = ty + 16u * i;
    if (m >= n) { continue; }
    let q = Sq[m];
    let c = coef_of(q, e);
    for (var j = 0u; j < 4u; j++) {
      let r = r0 + tx + 4u * j;
      if (r < p.R) { outv[q * p.R + r] = select(0.0, c * acc[i][j], r < rk); }
    }
  }
}
