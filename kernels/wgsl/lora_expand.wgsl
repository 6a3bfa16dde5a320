// lora_expand family: out[t, h] (+)= Σ_k c_{t,k} · Σ_{r < rank[e]} W(e, h, r) · vin[t, k, r],
// e = slots[t, k] (empty slots skipped). One shader serves
//   loraExpand:    W = B [L,Hout,R] (sh = R, sr = 1), vin = v,  c = weight·scale, always adds
//   loraInputGrad: W = A [L,R,Hin] read transposed (sh = 1, sr = Hin), vin = dv, c = 1
// W(e, h, r) = load_w(e·se + h·sh + r·sr) (f32, f16 or bf16, see src/backend/wgsl.ts); f32 accumulation.
//
// Entry points (see src/backend/webgpu_lora.ts for the launches):
//   bgmv: one workgroup per (token, LORA_OUTS outputs) (decode); each invocation owns one output and
//         sums over the token's K slots; W tiles are staged in workgroup memory so that they
//         are read along W's contiguous axis.
//   sgmv: grouped by adapter; one workgroup per (LORA_OUTS outputs, tile of ≤ LORA_SLOTS slots
//         of one adapter's segment of `order`), a tiled GEMM over r (tile sizes:
//         include/lora_tile.wgsl). A token's K slots can lie in different segments: with
//         K ≤ 2 the host launches one pass per k (kpass), each updating only the slots with
//         k = kpass (one writer per output per pass); with K > 2 (kpass = ALL_K) every slot's
//         c·(W·vin) goes to its own row q = t·K + k of a scratch [T·K, H] bound as outv, and
//   ksum: one invocation per (t, h) adds the token's non-empty slots' rows, k ascending, into
//         out (vin = the scratch, kslots = slots): two dispatches for any K, each tile's GEMM once.

struct Params {
  T: u32, K: u32, R: u32, H: u32,
  sr: u32, sh: u32, se: u32, coef: u32,
  G: u32, ntiles: u32, kpass: u32, accumulate: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> outv: array<f32>;   // [T, H]
@group(0) @binding(2) var<storage, read> vin: array<f32>;          // [T, K, R]
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

#include "include/lora_tile.wgsl"
#include "include/lora_w_tile.wgsl"

const NP: u32 = LORA_OUTS + 1u;   // padded row of the staged tiles
const ALL_K: u32 = 0xffffffffu;   // sgmv's kpass for every slot at once (into the scratch)

// ---------------------------------------------------------------- bgmv
var<workgroup> Wt: array<f32, LORA_STEP * NP>;  // [STEP][NP]: W(e, h0 + i, r0 + rr)

@compute @workgroup_size(LORA_OUTS)
fn bgmv(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let t = wid.z * nwg.y + wid.y;
  if (t >= p.T) { return; }
  let h0 = wid.x * LORA_OUTS;
  var total = 0.0;
  for (var k = 0u; k < p.K; k++) {
    let q = t * p.K + k;
    let slot = idx[q];
    if (slot < 0) { continue; }
    let e = min(u32(slot), arrayLength(&rank) - 1u);  // adapter index kept inside the stack
    // clamped: a tampered rank can neither run the loops past R nor (negative) near 2^32
    let rk = min(u32(max(rank[e], 0)), p.R);
    let wb = e * p.se;
    let vb = q * p.R;
    var acc = 0.0;
    for (var r0 = 0u; r0 < rk; r0 += LORA_STEP) {
      for (var i = lid; i < LORA_STEP * LORA_OUTS; i += LORA_OUTS) {
        let el = w_tile_elem(i, LORA_STEP, LORA_OUTS, wb, r0, h0, rk);
        Wt[el.r * NP + el.h] = el.val;
      }
      workgroupBarrier();
      let nr = min(LORA_STEP, rk - r0);
      for (var rr = 0u; rr < nr; rr++) { acc = fma(Wt[rr * NP + lid], vin[vb + r0 + rr], acc); }
      workgroupBarrier();
    }
    total = fma(coef_of(q, e), acc, total);
  }
  let h = h0 + lid;
  if (h < p.H) {
    let o = t * p.H + h;
    if (p.accumulate != 0u) { outv[o] = outv[o] + total; } else { outv[o] = total; }
  }
}

// ---------------------------------------------------------------- sgmv
// tile: LORA_SLOTS slots × LORA_OUTS outputs, LORA_STEP ranks staged per step
const SG_WG: u32 = LORA_SLOTS * LORA_OUTS / 16u;  // invocations, 4×4 outputs each
const HQ: u32 = LORA_OUTS / 4u;                   // stride of an invocation's outputs
const MQ: u32 = LORA_SLOTS / 4u;                  // stride of an invocation's rows
const SP: u32 = LORA_SLOTS + 1u;                  // padded row of Vs
var<workgroup> Vs: array<f32, LORA_STEP * SP>;    // [STEP][SP]: vin[q_m, r0 + rr]
var<workgroup> Ws: array<f32, LORA_STEP * NP>;    // [STEP][NP]: W(e, h0 + i, r0 + rr)
var<workgroup> Sq: array<u32, LORA_SLOTS>;

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
  let allk = p.kpass == ALL_K;
  if (p.K > 1u && !allk) {
    // skip tiles without a slot of this pass
    var found = false;
    for (var m = 0u; m < n; m++) {
      if (u32(idx[start + m]) % p.K == p.kpass) { found = true; break; }
    }
    if (!found) { return; }
  }
  for (var m = lid; m < n; m += SG_WG) { Sq[m] = u32(idx[start + m]); }
  workgroupBarrier();
  let h0 = wid.x * LORA_OUTS;
  let tx = lid % HQ;  // outputs h0 + tx + HQ·j
  let ty = lid / HQ;  // rows ty + MQ·i
  let wb = e * p.se;
  var acc: Tile4;
  for (var r0 = 0u; r0 < rk; r0 += LORA_STEP) {
    for (var i = lid; i < LORA_STEP * LORA_SLOTS; i += SG_WG) {
      let rr = i % LORA_STEP;
      let m = i / LORA_STEP;
      var val = 0.0;
      if (m < n && r0 + rr < rk) { val = vin[Sq[m] * p.R + r0 + rr]; }
      Vs[rr * SP + m] = val;
    }
    for (var i = lid; i < LORA_STEP * LORA_OUTS; i += SG_WG) {
      let el = w_tile_elem(i, LORA_STEP, LORA_OUTS, wb, r0, h0, rk);
      Ws[el.r * NP + el.h] = el.val;
    }
    workgroupBarrier();
    for (var rr = 0u; rr < LORA_STEP; rr++) {
      let va = rr * SP + ty;
      let wa = rr * NP + tx;
      tile_fma(&acc, vec4f(Vs[va], Vs[va + MQ], Vs[va + 2u * MQ], Vs[va + 3u * MQ]),
                     vec4f(Ws[wa], Ws[wa + HQ], Ws[wa + 2u * HQ], Ws[wa + 3u * HQ]));
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i++) {
    let m = ty + MQ * i;
    if (m >= n) { continue; }
    let q = Sq[m];
    if (!allk && q % p.K != p.kpass) { continue; }
    let c = coef_of(q, e);
    if (allk) {
      for (var j = 0u; j < 4u; j++) {
        let h = h0 + tx + HQ * j;
        if (h < p.H) { outv[q * p.H + h] = c * acc[i][j]; }
      }
      continue;
    }
    let ob = (q / p.K) * p.H;
    for (var j = 0u; j < 4u; j++) {
      let h = h0 + tx + HQ * j;
      if (h < p.H) {
        let o = ob + h;
        if (p.accumulate != 0u) { outv[o] = fma(c, acc[i][j], outv[o]); } else { outv[o] = c * acc[i][j]; }
      }
    }
  }
}

// ---------------------------------------------------------------- ksum
// out[t, h] (+)= Σ_k scratch[t·K + k, h] over the token's non-empty slots, k ascending
// (bindings: 1 out, 2 the scratch as vin, 3 the slots [T, K])
@group(0) @binding(3) var<storage, read> kslots: array<i32>;
@compute @workgroup_size(64)
fn ksum(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = (wid.z * nwg.y + wid.y) * 64u + lid;
  if (i >= p.T * p.H) { return; }
  let t = i / p.H;
  let h = i % p.H;
  var s = 0.0;
  if (p.accumulate != 0u) { s = outv[i]; }
  for (var k = 0u; k < p.K; k++) {
    let q = t * p.K + k;
    if (kslots[q] >= 0) { s = s + vin[q * p.H + h]; }
  }
  outv[i] = s;
}
