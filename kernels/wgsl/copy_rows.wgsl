// copy_rows family: dst[dstRows[i], :] = src[srcRows[i], :] for i < N, rows of W elements.
// Contract in src/ops/copy_rows.ts (CopyRowsKernels), reference src/reference/copy_rows.ts.
//
// Every tensor is bound as u32 words (16-bit dtypes are packed pairs, see src/backend/wgsl.ts),
// so bits move unchanged (no float conversion: NaN payloads and -0 survive). U: the words a row
// spans. Workgroups: x = ceil(U/256) chunks of a row's words, y·z (flattened) = N pairs; one
// invocation per destination word. The host has checked every index, that dstRows has no
// repeats (each word has one writer), and, for the _self entries, that no row is both read and
// written.
//
// Entry points (src/backend/webgpu_model.ts copyRows):
//   copy32        rows are whole words (f32/i32, or f16/bf16 with even W): U = W or W/2,
//                 dst[dr·U + j] = src[sr·U + j].
//   copy16        f16/bf16 with odd W: a row starts and ends in the middle of a word it shares
//                 with a neighbouring row, which another pair may be writing at the same time.
//                 Words wholly inside the row are stored; an edge word is merged with
//                 atomicAnd (clear this row's half) + atomicOr (set it), which commutes with the
//                 other row's merge. U = (W + 1) / 2 (any odd-length run of halves spans it).
//   copy32_self, copy16_self   the same, src being dst (bound once).

struct Params { N: u32, W: u32, U: u32, pad0: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;          // copy32: dst words
@group(0) @binding(1) var<storage, read_write> dsta: array<atomic<u32>>; // copy16: dst words
@group(0) @binding(2) var<storage, read> dstRows: array<i32>;            // [N]
@group(0) @binding(3) var<storage, read> srcRows: array<i32>;            // [N]
@group(0) @binding(4) var<storage, read> src: array<u32>;                // src words (not in _self)

const WG: u32 = 256u;

@compute @workgroup_size(256)
fn copy32(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = wid.z * nwg.y + wid.y;
  let j = wid.x * WG + lid;
  if (i >= p.N || j >= p.U) { return; }
  dst[u32(dstRows[i]) * p.U + j] = src[u32(srcRows[i]) * p.U + j];
}

@compute @workgroup_size(256)
fn copy32_self(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = wid.z * nwg.y + wid.y;
  let j = wid.x * WG + lid;
  if (i >= p.N || j >= p.U) { return; }
  dst[u32(dstRows[i]) * p.U + j] = dst[u32(srcRows[i]) * p.U + j];
}

// Half-word of element e from the word holding it.
fn half_of(w: u32, e: u32) -> u32 {
  return (w >> ((e & 1u) * 16u)) & 0xffffu;
}

// Writes the halves of dst word w selected by mask (0xffff per half) from bits: a plain store when
// the word is wholly this row's, else an and/or merge that leaves the other half to its owner.
fn store16(w: u32, bits: u32, mask: u32) {
  if (mask == 0xffffffffu) {
    atomicStore(&dsta[w], bits);
  } else if (mask != 0u) {
    atomicAnd(&dsta[w], ~mask);
    atomicOr(&dsta[w], bits);
  }
}

// The two entries differ only in where the source word is read (a function may not take a
// storage binding as a choice, and each entry may only touch the bindings it is given).
@compute @workgroup_size(256)
fn copy16(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = wid.z * nwg.y + wid.y;
  let j = wid.x * WG + lid;
  if (i >= p.N || j >= p.U) { return; }
  let e0 = u32(dstRows[i]) * p.W;
  let s0 = u32(srcRows[i]) * p.W;
  let w = (e0 >> 1u) + j;
  var bits = 0u;
  var mask = 0u;
  for (var h = 0u; h < 2u; h++) {
    let e = 2u * w + h;
    if (e >= e0 && e < e0 + p.W) {
      let se = s0 + (e - e0);
      bits |= half_of(src[se >> 1u], se) << (16u * h);
      mask |= 0xffffu << (16u * h);
    }
  }
  store16(w, bits, mask);
}

@compute @workgroup_size(256)
fn copy16_self(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = wid.z * nwg.y + wid.y;
  let j = wid.x * WG + lid;
  if (i >= p.N || j >= p.U) { return; }
  let e0 = u32(dstRows[i]) * p.W;
  let s0 = u32(srcRows[i]) * p.W;
  let w = (e0 >> 1u) + j;
  var bits = 0u;
  var mask = 0u;
  for (var h = 0u; h < 2u; h++) {
    let e = 2u * w + h;
    if (e >= e0 && e < e0 + p.W) {
      let se = s0 + (e - e0);
      bits |= half_of(atomicLoad(&dsta[se >> 1u]), se) << (16u * h);
      mask |= 0xffffu << (16u * h);
    }
  }
  store16(w, bits, mask);
}
