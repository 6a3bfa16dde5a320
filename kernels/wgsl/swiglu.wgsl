// swiglu family (LLaMA MLP activation): y = silu(gate) ⊙ up, silu(g) = g·σ(g).
// Reference: src/reference/swiglu.ts. Elementwise over n = T·I f32 values.
//
// Entry points (src/backend/webgpu_model.ts: 256 invocations, one element each, workgroups
// flattened over y·z: index = (wid.z·nwg.y + wid.y)·256 + lid):
//   fwd:  y = silu(gate)·up                                   bindings y, gate, up
//   grad: dgate = dy·up·σ(g)·(1 + g·(1 − σ(g))), dup = dy·silu(g)   bindings dgate, gate, up, dup, dy
// σ is evaluated without overflow (no infinities): e^(−|g|) only.

struct Params { n: u32, pad0: u32, pad1: u32, pad2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> o1: array<f32>;   // fwd: y; grad: dgate
@group(0) @binding(2) var<storage, read> gate: array<f32>;
@group(0) @binding(3) var<storage, read> up: array<f32>;
@group(0) @binding(4) var<storage, read_write> dup: array<f32>;  // grad only
@group(0) @binding(5) var<storage, read> dy: array<f32>;         // grad only

const WG: u32 = 256u;

fn sigmoid(g: f32) -> f32 {
  let e = exp(-abs(g));
  let r = 1.0 / (1.0 + e);
  return select(e * r, r, g >= 0.0);
}

@compute @workgroup_size(256)
fn fwd(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = (wid.z * nwg.y + wid.y) * WG + lid;
  if (i >= p.n) { return; }
  let g = gate[i];
  o1[i] = g * sigmoid(g) * up[i];
}

@compute @workgroup_size(256)
fn grad(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = (wid.z * nwg.y + wid.y) * WG + lid;
  if (i >= p.n) { return; }
  let g = gate[i];
  let s = sigmoid(g);
  let d = dy[i];
  o1[i] = d * up[i] * s * (1.0 + g * (1.0 - s));
  dup[i] = d * g * s;
}
