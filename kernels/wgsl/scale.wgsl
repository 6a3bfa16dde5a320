// scale family: y = alpha · x, elementwise over n f32 values. Reference: src/reference/scale.ts.
//
// Entry points (launches in src/backend/webgpu_model.ts, 256 invocations, one element each,
// workgroups flattened over y·z: index = (wid.z·nwg.y + wid.y)·256 + lid):
//   scale:         y = alpha · x   (y distinct from x)
//   scale_inplace: y = alpha · y   (y is x: a buffer bound writable is bound once)

struct Params { n: u32, alpha: f32, pad1: u32, pad2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn scale(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = (wid.z * nwg.y + wid.y) * WG + lid;
  if (i >= p.n) { return; }
  y[i] = p.alpha * x[i];
}

@compute @workgroup_size(256)
fn scale_inplace(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = (wid.z * nwg.y + wid.y) * WG + lid;
  if (i >= p.n) { return; }
  y[i] = p.alpha * y[i];
}
