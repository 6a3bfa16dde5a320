// lora_grad family: gradients of the adapter weights as grouped GEMMs over the segments of
// `order` (slots sorted by adapter). No atomics: every output element is owned by exactly
// one invocation, which loops over its adapter's whole segment in a fixed order, so results
// are bit-identical across reruns.
//   dA: dA[e][r, h] (+)= Σ_{q ∈ seg(e)} dv[q, r] · x[t_q, h]                  (dA f32 [L,R,Hin])
//   dB: dB[e][o, r] (+)= Σ_{q ∈ seg(e)} weight[q]·scale[e] · dy[t_q, o] · v[q, r] (dB f32 [L,Hout,R])
// Entries past rank[e] are written 0 (left unchanged when accumulating) and nothing past
// rank is read; adapters absent from the batch are cleared by the host.
// Launch (src/backend/webgpu_lora.ts): x = LORA_OUTS-wide chunks of Hin (dA) or Hout (dB); y·z
// (flattened) = ceil(R / LORA_RANKS) rank chunks × G segments; each invocation owns 4×4
// outputs (tile sizes: include/lora_tile.wgsl).

struct Params {
  T: u32, K: u32, R: u32, Hin: u32,
  Hout: u32, G: u32, accumulate: u32, pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> outg: array<f32>;   // dA or dB
@group(0) @binding(2) var<storage, read> tok: array<f32>;          // dA: x [T, Hin]; dB: dy [T, Hout]
@group(0) @binding(3) var<storage, read> pin: array<f32>;          // dA: dv [T, K, R]; dB: v [T, K, R]
@group(0) @binding(4) var<storage, read> order: array<i32>;        // [P]
// segStart [G + 1], segAdapter [G] (then tiles, unused here)
@group(0) @binding(5) var<storage, read> seg: array<i32>;
@group(0) @binding(6) var<storage, read> rank: array<i32>;         // [L]
@group(0) @binding(7) var<storage, read> scale: array<f32>;        // [L] (dB only)
@group(0) @binding(8) var<storage, read> rw: array<f32>;           // routing weight [T, K] (dB only)

#include "include/lora_tile.wgsl"

// tile: LORA_RANKS ranks × LORA_OUTS of Hin (dA) or Hout (dB), LORA_STEP slots staged per step
const GR_WG: u32 = LORA_RANKS * LORA_OUTS / 16u;  // invocations, 4×4 outputs each
const RQ: u32 = LORA_RANKS / 4u;                  // stride of an invocation's ranks
const HQ: u32 = LORA_OUTS / 4u;                   // stride of an invocation's h
var<workgroup> Ps: array<f32, LORA_STEP * LORA_RANKS>;  // [STEP][RANKS]: dv or v of the step's slots
var<workgroup> Xs: array<f32, LORA_STEP * LORA_OUTS>;   // [STEP][OUTS]: x or coef·dy of the step's slots

// writes one output: live (r < rank): the sum (added when accumulating); past rank: 0, or
// left unchanged when accumulating
fn put(o: u32, val: f32, live: bool) {
  if (live) {
    if (p.accumulate != 0u) { outg[o] = outg[o] + val; } else { outg[o] = val; }
  } else if (p.accumulate == 0u) {
    outg[o] = 0.0;
  }
}

@compute @workgroup_size(GR_WG)
fn dA(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let nrc = (p.R + LORA_RANKS - 1u) / LORA_RANKS;
  let id = wid.z * nwg.y + wid.y;
  if (id >= nrc * p.G) { return; }
  let g = id / nrc;
  let r0 = (id % nrc) * LORA_RANKS;
  // a segment stays inside order (tampered offsets give wrong sums, never a runaway loop)
  let s1 = min(u32(max(seg[g + 1u], 0)), arrayLength(&order));
  let s0 = min(u32(max(seg[g], 0)), s1);
  let e = min(u32(seg[p.G + 1u + g]), arrayLength(&rank) - 1u);  // adapter index kept inside the stack
  // clamped: a tampered rank can neither run the loops past R nor (negative) near 2^32
  let rk = min(u32(max(rank[e], 0)), p.R);
  let h0 = wid.x * LORA_OUTS;
  let tx = lid % HQ;  // h = h0 + tx + HQ·j
  let ty = lid / HQ;  // r = r0 + ty + RQ·i
  let ob = e * p.R * p.Hin;
  var acc: Tile4;
  if (r0 < rk) {
    for (var s = s0; s < s1; s += LORA_STEP) {
      for (var i = lid; i < LORA_STEP * LORA_RANKS; i += GR_WG) {
        let rr = i % LORA_RANKS;
        let c = i / LORA_RANKS;
        var val = 0.0;
        if (s + c < s1 && r0 + rr < rk) { val = pin[u32(order[s + c]) * p.R + r0 + rr]; }
        Ps[c * LORA_RANKS + rr] = val;
      }
      for (var i = lid; i < LORA_STEP * LORA_OUTS; i += GR_WG) {
        let hh = i % LORA_OUTS;
        let c = i / LORA_OUTS;
        var val = 0.0;
        if (s + c < s1 && h0 + hh < p.Hin) { val = tok[(u32(order[s + c]) / p.K) * p.Hin + h0 + hh]; }
        Xs[c * LORA_OUTS + hh] = val;
      }
      workgroupBarrier();
      for (var c = 0u; c < LORA_STEP; c++) {
        let pa = c * LORA_RANKS + ty;
        let xa = c * LORA_OUTS + tx;
        tile_fma(&acc, vec4f(Ps[pa], Ps[pa + RQ], Ps[pa + 2u * RQ], Ps[pa + 3u * RQ]),
                       vec4f(Xs[xa], Xs[xa + HQ], Xs[xa + 2u * HQ], Xs[xa + 3u * HQ]));
      }
      workgroupBarrier();
    }
  }
  for (var i = 0u; i < 4u; i++) {
    let r = r0 + ty + RQ * i;
    if (r >= p.R) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let h = h0 + tx + HQ * j;
      if (h < p.Hin) { put(ob + r * p.Hin + h, acc[i][j], r < rk); }
    }
  }
}

@compute @workgroup_size(GR_WG)
fn dB(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let nrc = (p.R + LORA_RANKS - 1u) / LORA_RANKS;
  let id = wid.z * nwg.y + wid.y;
  if (id >= nrc * p.G) { return; }
  let g = id / nrc;
  let r0 = (id % nrc) * LORA_RANKS;
  // a segment stays inside order (tampered offsets give wrong sums, never a runaway loop)
  let s1 = min(u32(max(seg[g + 1u], 0)), arrayLength(&order));
  let s0 = min(u32(max(seg[g], 0)), s1);
  let e = min(u32(seg[p.G + 1u + g]), arrayLength(&rank) - 1u);  // adapter index kept inside the stack
  // clamped: a tampered rank can neither run the loops past R nor (negative) near 2^32
  let rk = min(u32(max(rank[e], 0)), p.R);
  let sc = scale[e];
  let o0 = wid.x * LORA_OUTS;
  let tx = lid % RQ;  // r = r0 + tx + RQ·j
  let ty = lid / RQ;  // o = o0 + ty + HQ·i
  let ob = e * p.Hout * p.R;
  var acc: Tile4;
  if (r0 < rk) {
    for (var s = s0; s < s1; s += LORA_STEP) {
      for (var i = lid; i < LORA_STEP * LORA_RANKS; i += GR_WG) {
        let rr = i % LORA_RANKS;
        let c = i / LORA_RANKS;
        var val = 0.0;
        if (s + c < s1 && r0 + rr < rk) { val = pin[u32(order[s + c]) * p.R + r0 + rr]; }
        Ps[c * LORA_RANKS + rr] = val;
      }
      for (var i = lid; i < LORA_STEP * LORA_OUTS; i += GR_WG) {
        let oo = i % LORA_OUTS;
        let c = i / LORA_OUTS;
        var val = 0.0;
        if (s + c < s1 && o0 + oo < p.Hout) {
          let q = u32(order[s + c]);
          val = rw[q] * sc * tok[(q / p.K) * p.Hout + o0 + oo];
        }
        Xs[c * LORA_OUTS + oo] = val;
      }
      workgroupBarrier();
      for (var c = 0u; c < LORA_STEP; c++) {
        let xa = c * LORA_OUTS + ty;
        let pa = c * LORA_RANKS + tx;
        tile_fma(&acc, vec4f(Xs[xa], Xs[xa + HQ], Xs[xa + 2u * HQ], Xs[xa + 3u * HQ]),
                       vec4f(Ps[pa], Ps[pa + RQ], Ps[pa + 2u * RQ], Ps[pa + 3u * RQ]));
      }
      workgroupBarrier();
    }
  }
  for (var i = 0u; i < 4u; i++) {
    let o = o0 + ty + HQ * i;
    if (o >= p.Hout) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let r = r0 + tx + RQ * j;
      if (r < p.R) { put(ob + o * p.R + r, acc[i][j], r < rk); }
    }
  }
}
