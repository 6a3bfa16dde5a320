// xent family: log-softmax over the vocabulary and masked cross-entropy. Reference:
// src/reference/xent.ts. logits f32 [T, V]; targets i32 [T]; mask f32 [T] (0/1).
//
// Entry points (src/backend/webgpu_model.ts):
//   logsoftmax: one workgroup (256) per row t (y·z flattened): each invocation keeps an
//               online (max, Σ exp) over v = lid, lid + 256, ...; the pairs are merged by a
//               fixed tree in workgroup memory → lse; then out = logits − lse.
//   xent:       one workgroup per row, the same lse; losses[t] = mask·(lse − logits[t, target])
//               (the target is not read where mask is 0) and lse[t] saved.
//   grad:       one invocation per (t, v): x = ceil(V/256), y·z = T;
//               dlogits = scale·mask·(exp(logits − lse) − [v = target]), exactly 0 where mask is 0.
// No infinities are used as sentinels (WGSL may assume none): an empty max is −1e30.
// Logits (out, dlogits) may be one part of rows split past the binding limit: rows
// [t0, t0 + T) of the batch; the per-row arrays (losses, lse, targets, mask) are indexed by
// t0 + t. The host launches once per part (t0 = 0 for logits that fit).

struct Params { T: u32, V: u32, scale: f32, t0: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> o1: array<f32>;    // out [T, V] / losses [T] / dlogits [T, V]
@group(0) @binding(2) var<storage, read> logits: array<f32>;      // [T, V]
@group(0) @binding(3) var<storage, read_write> lseOut: array<f32>; // xent: lse [T]
@group(0) @binding(3) var<storage, read> lse: array<f32>;         // grad: lse [T]
@group(0) @binding(4) var<storage, read> targets: array<i32>;     // [T]
@group(0) @binding(5) var<storage, read> mask: array<f32>;        // [T]

const WG: u32 = 256u;
const MINF: f32 = -1e30;
var<workgroup> rm: array<f32, 256>;
var<workgroup> rl: array<f32, 256>;

// log Σ_v exp(logits[b + v]) over v < V, by every invocation of the workgroup.
fn row_lse(lid: u32, b: u32) -> f32 {
  var m = MINF;
  var l = 0.0;
  for (var v = lid; v < p.V; v += WG) {
    let s = logits[b + v];
    if (s > m) {
      l = l * exp(m - s) + 1.0;
      m = s;
    } else {
      l += exp(s - m);
    }
  }
  rm[lid] = m;
  rl[lid] = l;
  workgroupBarrier();
  for (var st = WG / 2u; st > 0u; st >>= 1u) {
    if (lid < st) {
      let ma = rm[lid];
      let mb = rm[lid + st];
      let mm = max(ma, mb);
      rl[lid] = rl[lid] * exp(ma - mm) + rl[lid + st] * exp(mb - mm);
      rm[lid] = mm;
    }
    workgroupBarrier();
  }
  let r = rm[0] + log(rl[0]);
  workgroupBarrier();
  return r;
}

@compute @workgroup_size(256)
fn logsoftmax(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let t = wid.z * nwg.y + wid.y;
  if (t >= p.T) { return; }
  let b = t * p.V;
  let z = row_lse(lid, b);
  for (var v = lid; v < p.V; v += WG) { o1[b + v] = logits[b + v] - z; }
}

@compute @workgroup_size(256)
fn xent(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let t = wid.z * nwg.y + wid.y;
  if (t >= p.T) { return; }
  let b = t * p.V;
  let z = row_lse(lid, b);
  let tg = p.t0 + t;
  if (lid == 0u) {
    lseOut[tg] = z;
    let m = mask[tg];
    var loss = 0.0;
    if (m != 0.0) { loss = m * (z - logits[b + u32(targets[tg])]); }
    o1[tg] = loss;
  }
}

@compute @workgroup_size(256)
fn grad(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let t = wid.z * nwg.y + wid.y;
  let v = wid.x * WG + lid;
  if (t >= p.T || v >= p.V) { return; }
  let i = t * p.V + v;
  let tg = p.t0 + t;
  let m = mask[tg];
  var d = 0.0;
  if (m != 0.0) {
    let onehot = select(0.0, 1.0, u32(targets[tg]) == v);
    d = p.scale * m * (exp(logits[i] - lse[tg]) - onehot);
  }
  o1[i] = d;
}
