// matmul family: one tiled GEMM, C[M,N] (+)= A(m,k)·B(k,n), with A and B read through
// strides so one shader serves y = x·Wᵀ, dx = dy·W and dW = dyᵀ·x (see src/backend/webgpu_model.ts).
// A is f32; B is read through load_b (f32, f16 or bf16, see src/backend/wgsl.ts). aoff, boff,
// coff offset A, B and C (elements), C's rows are ldc apart: a block of a larger C, and the
// parts of tensors split past the binding limit (webgpu_model.ts runs one GEMM per block).
// Each 8x8 workgroup computes a 32x32 tile of C, 4x4 outputs per invocation.

struct Params {
  M: u32, N: u32, K: u32,
  sam: u32, sak: u32, sbk: u32, sbn: u32,
  accumulate: u32,
  aoff: u32, boff: u32, coff: u32, ldc: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> c: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<b_store>;

const TILE: u32 = 32u;
const KT: u32 = 16u;

var<workgroup> As: array<f32, 512>;  // [KT][TILE]
var<workgroup> Bs: array<f32, 512>;  // [KT][TILE]

@compute @workgroup_size(8, 8)
fn main(@builtin(local_invocation_id) lid: vec3u, @builtin(workgroup_id) wid: vec3u) {
  let tid = lid.y * 8u + lid.x;
  let m0 = wid.y * TILE;
  let n0 = wid.x * TILE;
  var acc: array<array<f32, 4>, 4>;
  for (var k0 = 0u; k0 < p.K; k0 += KT) {
    for (var i = tid; i < KT * TILE; i += 64u) {
      let kk = i / TILE;
      let mm = i % TILE;
      let k = k0 + kk;
      var av = 0.0;
      if (m0 + mm < p.M && k < p.K) { av = a[p.aoff + (m0 + mm) * p.sam + k * p.sak]; }
      As[i] = av;
      var bv = 0.0;
      if (n0 + mm < p.N && k < p.K) { bv = load_b(p.boff + k * p.sbk + (n0 + mm) * p.sbn); }
      Bs[i] = bv;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < KT; kk++) {
      var av: array<f32, 4>;
      var bv: array<f32, 4>;
      for (var i = 0u; i < 4u; i++) {
        av[i] = As[kk * TILE + lid.y * 4u + i];
        bv[i] = Bs[kk * TILE + lid.x * 4u + i];
      }
      for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
          acc[i][j] = fma(av[i], bv[j], acc[i][j]);
        }
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i++) {
    let m = m0 + lid.y * 4u + i;
    if (m >= p.M) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let n = n0 + lid.x * 4u + j;
      if (n >= p.N) { continue; }
      let idx = p.coff + m * p.ldc + n;
      if (p.accumulate != 0u) { c[idx] = c[idx] + acc[i][j]; } else { c[idx] = acc[i][j]; }
    }
  }
}
