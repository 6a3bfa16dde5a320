// adamw family: the AdamW optimizer step (torch.optim.AdamW semantics) and the sum of squares
// used for global-norm clipping. Contracts in src/ops/adamw.ts, reference src/reference/adamw.ts.
//   g' = g·gs;  p = p·decay;  m = β1·m + c1·g';  v = β2·v + c2·g'²
//   p = p − lr·(m / bc1) / (sqrt(v / bc2) + eps)
// decay = 1 − lr·wd, c1 = 1 − β1, c2 = 1 − β2, bc1 = 1 − β1^t, bc2 = 1 − β2^t: all computed on
// the host in double (as torch does) and rounded to f32 once.
//
// Entry points (src/backend/webgpu_model.ts):
//   step:    256 invocations, one element each, workgroups flattened over y·z:
//            index = (wid.z·nwg.y + wid.y)·256 + lid.         bindings p, g, m, v
//   partial: B = min(⌈n / 2048⌉, 1024) workgroups along x (B depends on n only). Invocation l
//            of workgroup w adds src[w·256 + l + k·B·256] (k = 0, 1, ...) with Kahan
//            compensation, the workgroup sums its 256 values by a fixed tree and writes
//            dst[w].                                          bindings dst = partials, src = g
//   finish:  one workgroup adds the B partials the same way and writes dst[0].
//                                                             bindings dst = out, src = partials
// No atomics anywhere: reruns are bit-identical.

struct StepParams {
  n: u32, lr: f32, beta1: f32, beta2: f32,
  eps: f32, decay: f32, c1: f32, c2: f32,
  bc1: f32, bc2: f32, gs: f32, pad0: u32,
}

// A gradient split past the binding limit (webgpu SplitStorage) is stepped part by part;
// its sum of squares runs partial per part, each writing its B partials from dst[off], then
// one finish over all of them (off = 0 for a gradient that fits).
struct SumParams { n: u32, B: u32, off: u32, pad1: u32 }

const WG: u32 = 256u;

// ------------------------------------------------------------------------------- step
@group(0) @binding(0) var<uniform> sp: StepParams;
@group(0) @binding(1) var<storage, read_write> p: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;

@compute @workgroup_size(256)
fn step(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = (wid.z * nwg.y + wid.y) * WG + lid;
  if (i >= sp.n) { return; }
  let gi = g[i] * sp.gs;
  let mi = sp.beta1 * m[i] + sp.c1 * gi;
  let vi = sp.beta2 * v[i] + sp.c2 * (gi * gi);
  let pi = p[i] * sp.decay;
  p[i] = pi - sp.lr * (mi / sp.bc1) / (sqrt(vi / sp.bc2) + sp.eps);
  m[i] = mi;
  v[i] = vi;
}

// ------------------------------------------------------------------------------- sum of squares
// Same binding slots as step, other views: only the bindings an entry point uses enter its layout.
@group(0) @binding(0) var<uniform> rp: SumParams;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;

var<workgroup> sh: array<f32, 256>;

fn tree(lid: u32, s: f32) -> f32 {
  sh[lid] = s;
  workgroupBarrier();
  for (var w = WG / 2u; w > 0u; w = w >> 1u) {
    if (lid < w) { sh[lid] = sh[lid] + sh[lid + w]; }
    workgroupBarrier();
  }
  return sh[0];
}

@compute @workgroup_size(256)
fn partial(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u) {
  var s = 0.0;
  var c = 0.0;  // Kahan compensation
  let stride = rp.B * WG;
  for (var i = wid.x * WG + lid; i < rp.n; i = i + stride) {
    let x = src[i];
    let y = x * x - c;
    let t = s + y;
    c = (t - s) - y;
    s = t;
  }
  let r = tree(lid, s);
  if (lid == 0u) { dst[rp.off + wid.x] = r; }
}

@compute @workgroup_size(256)
fn finish(@builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  for (var i = lid; i < rp.B; i = i + WG) { s = s + src[i]; }
  let r = tree(lid, s);
  if (lid == 0u) { dst[0] = r; }
}
