// rmsnorm family (HF LlamaRMSNorm): y = x·rstd·w, rstd[t] = 1/sqrt(mean_h x[t,h]² + eps).
// Reference: src/reference/rmsnorm.ts. x, y, dy, dx f32 [T, H]; w [H] f32/f16/bf16 read
// through load_w; rstd f32 [T]; dw f32 [H]. f32 accumulation.
//
// Entry points (src/backend/webgpu_model.ts):
//   fwd: one workgroup (256) per row t (y·z flattened): Σ x² by a fixed tree in workgroup
//        memory, then y and rstd[t].
//   dx:  one workgroup per row: gx = Σ_h dy·w·x (fixed tree), then
//        dx = rstd·dy·w − rstd³·x·gx/H.
//   dw:  one invocation per h (x = ceil(H/256) workgroups): dw[h] (+)= Σ_t dy·x·rstd[t],
//        t ascending (a column reduction with one owner: deterministic, no atomics).

struct Params { T: u32, H: u32, eps: f32, acc: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> o1: array<f32>;    // fwd: y; dx: dx; dw: dw
@group(0) @binding(2) var<storage, read_write> rstdOut: array<f32>; // fwd: rstd [T]
@group(0) @binding(3) var<storage, read> x: array<f32>;           // [T, H]
@group(0) @binding(4) var<storage, read> w: array<w_store>;       // fwd, dx: [H]
@group(0) @binding(2) var<storage, read> dy: array<f32>;          // dx, dw: [T, H]
@group(0) @binding(5) var<storage, read> rstd: array<f32>;        // dx: [T]
@group(0) @binding(4) var<storage, read> rstdW: array<f32>;       // dw: [T]

const WG: u32 = 256u;
var<workgroup> red: array<f32, 256>;

// Sum of v over the workgroup by a fixed tree; every invocation gets the result.
fn wg_sum(lid: u32, v: f32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

@compute @workgroup_size(256)
fn fwd(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let t = wid.z * nwg.y + wid.y;
  if (t >= p.T) { return; }
  let b = t * p.H;
  var ss = 0.0;
  for (var h = lid; h < p.H; h += WG) {
    let v = x[b + h];
    ss = fma(v, v, ss);
  }
  let tot = wg_sum(lid, ss);
  let r = 1.0 / sqrt(tot / f32(p.H) + p.eps);
  if (lid == 0u) { rstdOut[t] = r; }
  for (var h = lid; h < p.H; h += WG) { o1[b + h] = x[b + h] * r * load_w(h); }
}

@compute @workgroup_size(256)
fn dx(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let t = wid.z * nwg.y + wid.y;
  if (t >= p.T) { return; }
  let b = t * p.H;
  var gx = 0.0;
  for (var h = lid; h < p.H; h += WG) { gx = fma(dy[b + h] * load_w(h), x[b + h], gx); }
  let tot = wg_sum(lid, gx);
  let r = rstd[t];
  let c = r * r * r * tot / f32(p.H);
  for (var h = lid; h < p.H; h += WG) { o1[b + h] = r * dy[b + h] * load_w(h) - x[b + h] * c; }
}

@compute @workgroup_size(256)
fn dw(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u) {
  let h = wid.x * WG + lid;
  if (h >= p.H) { return; }
  var s = 0.0;
  for (var t = 0u; t < p.T; t++) {
    let i = t * p.H + h;
    s = fma(dy[i] * x[i], rstdW[t], s);
  }
  if (p.acc != 0u) { o1[h] = o1[h] + s; } else { o1[h] = s; }
}
