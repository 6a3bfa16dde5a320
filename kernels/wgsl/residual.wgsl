// residual family: y = a + b, elementwise over n f32 values (the residual stream).
// Reference: src/reference/residual.ts. The backward is the identity (no kernel).
//
// Entry points (launches in src/backend/webgpu_model.ts, 256 invocations, one element each,
// workgroups flattened over y·z: index = (wid.z·nwg.y + wid.y)·256 + lid):
//   add:         y = a + b                  (y distinct from a and b)
//   add_inplace: y = y + b                  (y is a; a buffer bound writable is bound once)
//   add_self:    y = y + y                  (y, a and b are one tensor)

struct Params { n: u32, pad0: u32, pad1: u32, pad2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> a: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn add(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = (wid.z * nwg.y + wid.y) * WG + lid;
  if (i >= p.n) { return; }
  y[i] = a[i] + b[i];
}

@compute @workgroup_size(256)
fn add_inplace(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = (wid.z * nwg.y + wid.y) * WG + lid;
  if (i >= p.n) { return; }
  y[i] = y[i] + b[i];
}

@compute @workgroup_size(256)
fn add_self(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = (wid.z * nwg.y + wid.y) * WG + lid;
  if (i >= p.n) { return; }
  let v = y[i];
  y[i] = v + v;
}
