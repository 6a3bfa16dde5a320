// lora_grad family: gradients of the adapter weights as grouped GEMMs over the segments of
// `order` (slots sorted by adapter). No atomics: every output element is owned by exactly
// one invocation, which loops over its adapter's whole segment in a fixed order, so results
// are bit-identical across reruns.
//   dA: dA[e][r, h] (+)= Σ_{q ∈ seg(e)} dv[q, r] · x[t_q, h]                  (dA f32 [L,R,Hin])
//   dB: dB[e][o, r] (+)= Σ_{q ∈ seg(e)} weight[q]·scale[e] · dy[t_q, o] · v[q, r] (dB f32 [L,Hout,R])
// Entries past rank[e] are written 0 (left unchanged when accumulating) and nothing past
// rank is read; adapters absent from the batch are cleared by the host.
// Launch (src/backend/webgpu.ts): x = 64-wide chunks of Hin (dA) or Hout (dB); y·z (flattened)
// = ceil(R/16) rank chunks × G segments; 64 invocations, each 4×4 outputs.

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

const PC: u32 = 16u;   // slots per step
const TH: u32 = 64u;   // Hin / Hout per workgroup
const TR: u32 = 16u;   // ranks per workgroup
var<workgroup> Ps: array<f32, 256>;   // [PC][TR]: dv or v of the step's slots
var<workgroup> Xs: array<f32, 1024>;  // [PC][TH]: x or coef·dy of the step's slots

// writes one output: live (r < rank): the sum (added when accumulating); past rank: 0, or
// left unchanged when accumulating
fn put(o: u32, val: f32, live: bool) {
  if (live) {
    if (p.accumulate != 0u) { outg[o] = outg[o] + val; } else { outg[o] = val; }
  } else if (p.accumulate == 0u) {
    outg[o] = 0.0;
  }
}

@compute @workgroup_size(64)
fn dA(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let nrc = (p.R + TR - 1u) / TR;
  let id = wid.z * nwg.y + wid.y;
  if (id >= nrc * p.G) { return; }
  let g = id / nrc;
  let r0 = (id % nrc) * TR;
  // a segment stays inside order (tampered offsets give wrong sums, never a runaway loop)
  let s1 = min(u32(max(seg[g + 1u], 0)), arrayLength(&order));
  let s0 = min(u32(max(seg[g], 0)), s1);
  let e = min(u32(seg[p.G + 1u + g]), arrayLength(&rank) - 1u);  // adapter index kept inside the stack
  // clamped: a tampered rank can neither run the loops past R nor (negative) near 2^32
  let rk = min(u32(max(rank[e], 0)), p.R);
  let h0 = wid.x * TH;
  let tx = lid % 16u;  // h = h0 + tx + 16j
  let ty = lid / 16u;  // r = r0 + ty + 4i
  let ob = e * p.R * p.Hin;
  var acc: array<array<f32, 4>, 4>;
  if (r0 < rk) {
    for (var s = s0; s < s1; s += PC) {
      for (var i = lid; i < PC * TR; i += 64u) {
        let rr = i % TR;
        let c = i / TR;
        var val = 0.0;
        if (s + c < s1 && r0 + rr < rk) { val = pin[u32(order[s + c]) * p.R + r0 + rr]; }
        Ps[c * TR + rr] = val;
      }
      for (var i = lid; i < PC * TH; i += 64u) {
        let hh = i % TH;
        let c = i / TH;
        var val = 0.0;
        if (s + c < s1 && h0 + hh < p.Hin) { val = tok[(u32(order[s + c]) / p.K) * p.Hin + h0 + hh]; }
        Xs[c * TH + hh] = val;
      }
      workgroupBarrier();
      for (var c = 0u; c < PC; c++) {
        var a: array<f32, 4>;
        var b: array<f32, 4>;
        for (var i = 0u; i < 4u; i++) { a[i] = Ps[c * TR + ty + 4u * i]; }
        for (var j = 0u; j < 4u; j++) { b[j] = Xs[c * TH + tx + 16u * j]; }
        for (var i = 0u; i < 4u; i++) {
          for (var j = 0u; j < 4u; j++) { acc[i][j] = fma(a[i], b[j], acc[i][j]); }
        }
      }
      workgroupBarrier();
    }
  }
  for (var i = 0u; i < 4u; i++) {
    let r = r0 + ty + 4u * i;
    if (r >= p.R) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let h = h0 + tx + 16u * j;
      if (h < p.Hin) { put(ob + r * p.Hin + h, acc[i][j], r < rk); }
    }
  }
}

@compute @workgroup_size(64)
fn dB(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let nrc = (p.R + TR - 1u) / TR;
  let id = wid.z * nwg.y + wid.y;
  if (id >= nrc * p.G) { return; }
  let g = id / nrc;
  let r0 = (id % nrc) * TR;
  // a segment stays inside order (tampered offsets give wrong sums, never a runaway loop)
  let s1 = min(u32(max(seg[g + 1u], 0)), arrayLength(&order));
  let s0 = min(u32(max(seg[g], 0)), s1);
  let e = min(u32(seg[p.G + 1u + g]), arrayLength(&rank) - 1u);  // adapter index kept inside the stack
  // clamped: a tampered rank can neither run the loops past R nor (negative) near 2^32
  let rk = min(u32(max(rank[e], 0)), p.R);
  let sc = scale[e];
  let o0 = wid.x * TH;
  let tx = lid % 4u;   // r = r0 + tx + 4j
  let ty = lid / 4u;   // o = o0 + ty + 16i
  let ob = e * p.Hout * p.R;
  var acc: array<array<f32, 4>, 4>;
  if (r0 < rk) {
    for (var s = s0; s < s1; s += PC) {
      for (var i = lid; i < PC * TR; i += 64u) {
        let rr = i % TR;
        let c = i / TR;
        var val = 0.0;
        if (s + c < s1 && r0 + rr < rk) { val = pin[u32(order[s + c]) * p.R + r0 + rr]; }
        Ps[c * TR + rr] = val;
      }
      for (var i = lid; i < PC * TH; i += 64u) {
        let oo = i % TH;
        let c = i / TH;
        var val = 0.0;
        if (s + c < s1 && o0 + oo < p.Hout) {
          let q = u32(order[s + c]);
          val = rw[q] * sc * tok[(q / p.K) * p.Hout + o0 + oo];
        }
        Xs[c * TH + oo] = val;
      }
      workgroupBarrier();
      for (var c = 0u; c < PC; c++) {
        var a: array<f32, 4>;
        var b: array<f32, 4>;
        for (var i = 0u; i < 4u; i++) { a[i] = Xs[c * TH + ty + 16u * i]; }
        for (var j = 0u; j < 4u; j++) { b[j] = Ps[c * TR + tx + 4u * j]; }
        for (var i = 0u; i < 4u; i++) {
          for (var j = 0u; j < 4u; j++) { acc[i][j] = fma(a[i], b[j], acc[i][j]); }
        }
      }
      workgroupBarrier();
    }
  }
  for (var i = 0u; i < 4u; i++) {
    let o = o0 + ty + 16u * i;
    if (o >= p.Hout) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let r = r0 + tx + 4u * j;
      if (r < p.R) { put(ob + o * p.R + r, acc[i][j], r < rk); }
    }
  }
}
