// embedding family: gather of rows of E [V, H] (f32/f16/bf16, read through load_E) and its
// gradient. Reference: src/reference/embedding.ts.
//
// Entry points (src/backend/webgpu_model.ts):
//   gather: y[t, h] = E[ids[t], h]. Workgroups: x = ceil(H/256) chunks of h, y·z (flattened)
//           = T tokens; one invocation per output.
//   grad:   dE[segIds[g], h] (+)= Σ_{i ∈ [segStart[g], segStart[g+1])} dy[order[i], h].
//           Workgroups: x = ceil(H/256), y·z = G segments; one invocation owns one
//           (segment, h) output and sums its tokens in `order` (t ascending): no atomics,
//           bit-identical across runs. Rows of ids absent from the batch are cleared by the
//           host before the launch when not accumulating.

//
// E (dE) may be one part of a table split by rows past the binding limit: rows [v0, v0 + V).
// gather writes only the tokens whose ids fall in the part, grad only the part's segments;
// the host launches once per part (one launch, v0 = 0, for a table that fits).

struct Params { T: u32, V: u32, H: u32, G: u32, acc: u32, v0: u32, pad1: u32, pad2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;       // gather: y [T, H]; grad: dE [V, H]
@group(0) @binding(2) var<storage, read> ids: array<i32>;           // gather: ids [T]
@group(0) @binding(3) var<storage, read> E: array<E_store>;         // gather: E [V, H]
@group(0) @binding(2) var<storage, read> dy: array<f32>;            // grad: dy [T, H]
@group(0) @binding(3) var<storage, read> order: array<i32>;         // grad: [T]
@group(0) @binding(4) var<storage, read> segStart: array<i32>;      // grad: [G + 1]
@group(0) @binding(5) var<storage, read> segIds: array<i32>;        // grad: [G]

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn gather(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let t = wid.z * nwg.y + wid.y;
  let h = wid.x * WG + lid;
  if (t >= p.T || h >= p.H) { return; }
  let r = u32(ids[t]) - p.v0; // wraps past V below v0
  if (r >= p.V) { return; }
  y[t * p.H + h] = load_E(r * p.H + h);
}

@compute @workgroup_size(256)
fn grad(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let g = wid.z * nwg.y + wid.y;
  let h = wid.x * WG + lid;
  if (g >= p.G || h >= p.H) { return; }
  let s0 = u32(segStart[g]);
  let s1 = u32(segStart[g + 1u]);
  var s = 0.0;
  for (var i = s0; i < s1; i++) { s += dy[u32(order[i]) * p.H + h]; }
  let r = u32(segIds[g]) - p.v0;
  if (r >= p.V) { return; }
  let o = r * p.H + h;
  if (p.acc != 0u) { y[o] = y[o] + s; } else { y[o] = s; }
}
