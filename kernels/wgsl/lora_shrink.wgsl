// lora_shrink family: out[q, r] = c_q · Σ_h W(e_q, r, h) · u[t_q, h] for r < rank[e_q],
// 0 for rank[e_q] ≤ r < R and for empty slots, where q = t·K + k is a slot of the batch.
// One shader serves
//   loraShrink:     W = A [L,R,Hin] (sr = Hin, sh = 1),  u = x,  c = 1
//   loraShrinkGrad: W = B [L,Hout,R] read transposed (sr = 1, sh = R), u = dy, c = weight·scale
// W(e, r, h) = load_w(e·se + r·sr + h·sh) (f32, f16 or bf16, see src/backend/wgsl.ts); f32 accumulation.
//
// Entry points (see src/backend/webgpu_lora.ts for the launches):
//   bgmv: one workgroup per slot q (decode); threads stride over h, partial sums of up to
//         RC ranks per thread, reduced in workgroup memory.
//   sgmv: grouped by adapter; one workgroup per (LORA_RANKS-rank chunk, tile of ≤ LORA_SLOTS
//         slots of one adapter's segment of `order`), a tiled GEMM over h so each A/B tile is
//         reused by the tile's slots (tile sizes: include/lora_tile.wgsl).

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
// sgmv only: segStart [G + 1], segAdapter [G], then (g, start) per tile of ≤ LORA_SLOTS slots.
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
#include "include/lora_tile.wgsl"
#include "include/lora_w_tile.wgsl"

// tile: LORA_SLOTS slots × LORA_RANKS ranks, LORA_STEP h staged per step
const SG_WG: u32 = LORA_SLOTS * LORA_RANKS / 16u;  // invocations, 4×4 outputs each
const RQ: u32 = LORA_RANKS / 4u;                   // stride of an invocation's ranks
const MQ: u32 = LORA_SLOTS / 4u;                   // stride of an invocation's rows
const UP: u32 = LORA_SLOTS + 1u;                   // padded row of Us
var<workgroup> Us: array<f32, LORA_STEP * UP>;     // [STEP][UP]: u[t_m, h0 + kk]
var<workgroup> Ws: array<f32, LORA_STEP * LORA_RANKS>;  // [STEP][RANKS]: W(e, r0 + rr, h0 + kk)
var<workgroup> Sq: array<u32, LORA_SLOTS>;         // slot q of tile row m
var<workgroup> St: array<u32, LORA_SLOTS>;         // token of tile row m

@compute @workgroup_size(SG_WG)
fn sgmv(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let tile = wid.z * nwg.y + wid.y;
  if (tile >= p.ntiles) { return; }
  let tb = 2u * p.G + 1u + 2u * tile;
  let g = u32(seg[tb]);
  let start = u32(seg[tb + 1u]);
  let n = min(LORA_SLOTS, u32(seg[g + 1u]) - start);
  let e = min(u32(seg[p.G + 1u + g]), arrayLength(&rank) - 1u);  // adapter index kept inside the stack
  // clamped: a tampered rank can neither run the loops past R nor (negative) near 2^32
  let rk = min(u32(max(rank[e], 0)), p.R);
  let r0 = wid.x * LORA_RANKS;
  if (r0 >= rk) {
    // this rank chunk is past the adapter's rank: zeros, no reads of W
    for (var i = lid; i < n * LORA_RANKS; i += SG_WG) {
      let r = r0 + i % LORA_RANKS;
      if (r < p.R) { outv[u32(idx[start + i / LORA_RANKS]) * p.R + r] = 0.0; }
    }
    return;
  }
  for (var m = lid; m < n; m += SG_WG) {
    let q = u32(idx[start + m]);
    Sq[m] = q;
    St[m] = q / p.K;
  }
  workgroupBarrier();
  let tx = lid % RQ;   // ranks r0 + tx + RQ·j
  let ty = lid / RQ;   // rows ty + MQ·i
  let wb = e * p.se;
  var acc: Tile4;
  for (var h0 = 0u; h0 < p.H; h0 += LORA_STEP) {
    for (var i = lid; i < LORA_STEP * LORA_SLOTS; i += SG_WG) {
      let kk = i % LORA_STEP;
      let m = i / LORA_STEP;
      var val = 0.0;
      if (m < n && h0 + kk < p.H) { val = u[St[m] * p.H + h0 + kk]; }
      Us[kk * UP + m] = val;
    }
    for (var i = lid; i < LORA_STEP * LORA_RANKS; i += SG_WG) {
      let el = w_tile_elem(i, LORA_RANKS, LORA_STEP, wb, r0, h0, rk);
      Ws[el.h * LORA_RANKS + el.r] = el.val;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < LORA_STEP; kk++) {
      let ua = kk * UP + ty;
      let wa = kk * LORA_RANKS + tx;
      tile_fma(&acc, vec4f(Us[ua], Us[ua + MQ], Us[ua + 2u * MQ], Us[ua + 3u * MQ]),
                     vec4f(Ws[wa], Ws[wa + RQ], Ws[wa + 2u * RQ], Ws[wa + 3u * RQ]));
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i++) {
    let m = ty + MQ * i;
    if (m >= n) { continue; }
    let q = Sq[m];
    let c = coef_of(q, e);
    for (var j = 0u; j < 4u; j++) {
      let r = r0 + tx + RQ * j;
      if (r < p.R) { outv[q * p.R + r] = select(0.0, c * acc[i][j], r < rk); }
    }
  }
}
