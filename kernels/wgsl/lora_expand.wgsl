// lora_expand family: out[t, h] (+)= Σ_k c_{t,k} · Σ_{r < rank[e]} W(e, h, r) · vin[t, k, r],
// e = slots[t, k] (empty slots skipped). One shader serves
//   loraExpand:    W = B [L,Hout,R] (sh = R, sr = 1), vin = v,  c = weight·scale, always adds
//   loraInputGrad: W = A [L,R,Hin] read transposed (sh = 1, sr = Hin), vin = dv, c = 1
// W(e, h, r) = load_w(e·se + h·sh + r·sr) (f32, f16 or bf16, see src/backend/wgsl.ts); f32 accumulation.
//
// Entry points (see src/backend/webgpu.ts for the launches):
//   bgmv: one workgroup per (token, 64 outputs) (decode); each invocation owns one output and
//         sums over the token's K slots; W tiles are staged in workgroup memory so that they
//         are read along W's contiguous axis.
//   sgmv: grouped by adapter; one workgroup per (64 outputs, tile of ≤ 64 slots of one
//         adapter's segment of `order`), a tiled GEMM over r. A token's K slots can lie in
//         different segments, so the host launches one pass per k (kpass) and each pass
//         updates only the slots with k = kpass: every output has one writer per pass.

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
// sgmv only: segStart [G + 1], segAdapter [G], then (g, start) per tile of ≤ 64 slots.
@group(0) @binding(8) var<storage, read> seg: array<i32>;

fn coef_of(q: u32, e: u32) -> f32 {
  if (p.coef != 0u) { return rw[q] * scale[e]; }
  return 1.0;
}

const RC: u32 = 16u;   // ranks per step
const TN: u32 = 64u;   // outputs per workgroup
const NP: u32 = 65u;   // padded row

// ---------------------------------------------------------------- bgmv
var<workgroup> Wt: array<f32, 1040>;  // [RC][NP]: W(e, h0 + i, r0 + rr)

@compute @workgroup_size(64)
fn bgmv(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let t = wid.z * nwg.y + wid.y;
  if (t >= p.T) { return; }
  let h0 = wid.x * TN;
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
    for (var r0 = 0u; r0 < rk; r0 += RC) {
      for (var i = lid; i < RC * TN; i += TN) {
        // walk W along its contiguous axis
        var hh = i / RC;
        var rr = i % RC;
        if (p.sr != 1u) { hh = i % TN; rr = i / TN; }
        var val = 0.0;
        if (h0 + hh < p.H && r0 + rr < rk) { val = load_w(wb + (h0 + hh) * p.sh + (r0 + rr) * p.sr); }
        Wt[rr * NP + hh] = val;
      }
      workgroupBarrier();
      let nr = min(RC, rk - r0);
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
const TM: u32 = 64u;   // slots per tile
var<workgroup> Vs: array<f32, 1040>;  // [RC][NP]: vin[q_m, r0 + rr]
var<workgroup> Ws: array<f32, 1040>;  // [RC][NP]: W(e, h0 + i, r0 + rr)
var<workgroup> Sq: array<u32, 64>;

@compute @workgroup_size(256)
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
  if (p.K > 1u) {
    // skip tiles without a slot of this pass
    var found = false;
    for (var m = 0u; m < n; m++) {
      if (u32(idx[start + m]) % p.K == p.kpass) { found = true; break; }
    }
    if (!found) { return; }
  }
  if (lid < n) { Sq[lid] = u32(idx[start + lid]); }
  workgroupBarrier();
  let h0 = wid.x * TN;
  let tx = lid % 16u;  // outputs h0 + tx + 16j
  let ty = lid / 16u;  // rows ty + 16i
  let wb = e * p.se;
  var acc: array<array<f32, 4>, 4>;
  for (var r0 = 0u; r0 < rk; r0 += RC) {
    for (var i = lid; i < RC * TM; i += 256u) {
      let rr = i % RC;
      let m = i / RC;
      var val = 0.0;
      if (m < n && r0 + rr < rk) { val = vin[Sq[m] * p.R + r0 + rr]; }
      Vs[rr * NP + m] = val;
    }
    for (var i = lid; i < RC * TN; i += 256u) {
      var hh = i / RC;
      var rr = i % RC;
      if (p.sr != 1u) { hh = i % TN; rr = i / TN; }
      var val = 0.0;
      if (h0 + hh < p.H && r0 + rr < rk) { val = load_w(wb + (h0 + hh) * p.sh + (r0 + rr) * p.sr); }
      Ws[rr * NP + hh] = val;
    }
    workgroupBarrier();
    for (var rr = 0u; rr < RC; rr++) {
      var a: array<f32, 4>;
      var b: array<f32, 4>;
      for (var i = 0u; i < 4u; i++) { a[i] = Vs[rr * NP + ty + 16u * i]; }
      for (var j = 0u; j < 4u; j++) { b[j] = Ws[rr * NP + tx + 16u * j]; }
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
    if (q % p.K != p.kpass) { continue; }
    let c = coef_of(q, e);
    let ob = (q / p.K) * p.H;
    for (var j = 0u; j < 4u; j++) {
      let h = h0 + tx + 16u * j;
      if (h < p.H) {
        let o = ob + h;
        if (p.accumulate != 0u) { outv[o] = fma(c, acc[i][j], outv[o]); } else { outv[o] = c * acc[i][j]; }
      }
    }
  }
}
