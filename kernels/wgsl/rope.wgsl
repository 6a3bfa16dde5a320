// rope family: rotary position embedding, HF rotate-half convention. Reference:
// src/reference/rope.ts. x, y f32 [T, heads, D]; positions i32 [T]; invFreq f32 [D/2].
//   y[t,h,i]       = x[t,h,i]·cos θ − x[t,h,i+D/2]·sin θ
//   y[t,h,i+D/2]   = x[t,h,i+D/2]·cos θ + x[t,h,i]·sin θ,      θ = positions[t]·invFreq[i]
// inverse (the backward) rotates by −θ.
//
// θ is not rounded to f32 before sin/cos: with positions in the thousands an f32 θ is off by
// ~1e-4 rad. angle_sin_cos forms θ/2π modulo 1 exactly in 64-bit fixed point (integer
// arithmetic: invFreq's mantissa times 1/2π to 96 bits, times the position), so sin/cos only
// ever see an argument in [−π, π) (and then sin_cos_turns, not WGSL's sin/cos).
//
// Entry points (src/backend/webgpu_model.ts): one invocation per (t, i < D/2), looping over heads;
// 256 per workgroup, flattened over y·z: index = (wid.z·nwg.y + wid.y)·256 + lid.
//   rope:         y from x (distinct tensors)
//   rope_inplace: y rotated in place (each pair is read before it is written by one owner)

struct Params { T: u32, heads: u32, D: u32, inverse: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> positions: array<i32>;
@group(0) @binding(4) var<storage, read> invFreq: array<f32>;
@group(0) @binding(2) var<storage, read> positionsIp: array<i32>;  // rope_inplace
@group(0) @binding(3) var<storage, read> invFreqIp: array<f32>;    // rope_inplace

const WG: u32 = 256u;
// floor(2^96 / 2π), least significant word first
const K0: u32 = 0x7f09d5f4u;
const K1: u32 = 0x9391054au;
const K2: u32 = 0x28be60dbu;
const TWO_PI: f32 = 6.283185307179586;
const P2_M32: f32 = 2.3283064365386963e-10;   // 2^-32
const P2_M64: f32 = 5.421010862427522e-20;    // 2^-64

// 32×32 → 64-bit product (lo, hi) from 16-bit halves.
fn mul_wide(a: u32, b: u32) -> vec2u {
  let a0 = a & 0xffffu;
  let a1 = a >> 16u;
  let b0 = b & 0xffffu;
  let b1 = b >> 16u;
  let p00 = a0 * b0;
  let p01 = a0 * b1;
  let p10 = a1 * b0;
  let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
  return vec2u((p00 & 0xffffu) | (mid << 16u), a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u));
}

// 32 bits of the 64-bit value (hi:lo) starting at bit r < 32
fn funnel(lo: u32, hi: u32, r: u32) -> u32 {
  return select((lo >> r) | (hi << (32u - r)), lo, r == 0u);
}

// (sin θ, cos θ) for θ = pos·f, pos an integer, f an f32.
fn angle_sin_cos(pos: i32, f: f32) -> vec2f {
  let bits = bitcast<u32>(f);
  let ex = (bits >> 23u) & 0xffu;
  let s = 182 - i32(ex);   // f = m·2^(ex − 150); X = f/2π·2^64 = (m·K)·2^(ex − 150 − 96 + 64)
  if (ex == 0u || s < 0 || s >= 96) {
    // 0, subnormal, |f| ≥ 2^55, inf/NaN, or |f| < 2^-40 (|θ| < 2^-9: rounding θ is harmless)
    let a = f32(pos) * f;
    return sin_cos_turns(fract(a / TWO_PI + 0.5) - 0.5);
  }
  // P = m·K (120 bits in 4 words)
  let m = (bits & 0x7fffffu) | 0x800000u;
  let t0 = mul_wide(m, K0);
  let t1 = mul_wide(m, K1);
  let t2 = mul_wide(m, K2);
  var w: array<u32, 6>;
  w[0] = t0.x;
  let a1 = t0.y + t1.x;
  let c1 = select(0u, 1u, a1 < t0.y);
  w[1] = a1;
  let a2 = t1.y + t2.x;
  let c2 = select(0u, 1u, a2 < t1.y);
  let a2c = a2 + c1;
  let c3 = select(0u, 1u, a2c < a2);
  w[2] = a2c;
  w[3] = t2.y + c2 + c3;
  w[4] = 0u;
  w[5] = 0u;
  // X (64-bit fraction of a turn per unit position) = bits [s, s + 64) of P
  let q = u32(s) / 32u;
  let r = u32(s) % 32u;
  let xlo = funnel(w[q], w[q + 1u], r);
  let xhi = funnel(w[q + 1u], w[q + 2u], r);
  // turns = |pos|·X mod 2^64, as a signed fraction in [−1/2, 1/2)
  let ap = u32(abs(pos));
  let pl = mul_wide(ap, xlo);
  let thi = pl.y + ap * xhi;
  var turns = f32(bitcast<i32>(thi)) * P2_M32 + f32(pl.x) * P2_M64;
  if ((pos < 0) != ((bits & 0x80000000u) != 0u)) { turns = -turns; }
  return sin_cos_turns(turns);
}

// (sin, cos) of 2π·t for t in [−1/2, 1/2]. Not WGSL's sin/cos: those need only be within
// 2^-11 absolute on [−π, π] (SwiftShader's are off by ~1e-4), so the angle is reduced to an
// octant around a multiple of π/2 and the Taylor series summed to r^12, f32-accurate there.
fn sin_cos_turns(t: f32) -> vec2f {
  let q = round(4.0 * t);               // nearest quarter turn, −2 … 2
  let r = (t - 0.25 * q) * TWO_PI;      // |r| ≤ π/4
  let r2 = r * r;
  let s = r * (1.0 + r2 * (-1.0 / 6.0 + r2 * (1.0 / 120.0 + r2 * (-1.0 / 5040.0 + r2 * (1.0 / 362880.0 + r2 * (-1.0 / 39916800.0))))));
  let c = 1.0 + r2 * (-0.5 + r2 * (1.0 / 24.0 + r2 * (-1.0 / 720.0 + r2 * (1.0 / 40320.0 + r2 * (-1.0 / 3628800.0 + r2 * (1.0 / 479001600.0))))));
  switch (u32(i32(q) & 3)) {
    case 1u: { return vec2f(c, -s); }
    case 2u: { return vec2f(-s, -c); }
    case 3u: { return vec2f(-c, s); }
    default: { return vec2f(s, c); }
  }
}

fn rotate(xi: f32, xj: f32, sc: vec2f) -> vec2f {
  let sn = select(sc.x, -sc.x, p.inverse != 0u);
  return vec2f(xi * sc.y - xj * sn, xj * sc.y + xi * sn);
}

@compute @workgroup_size(256)
fn rope(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let half = p.D / 2u;
  let k = (wid.z * nwg.y + wid.y) * WG + lid;
  if (k >= p.T * half) { return; }
  let t = k / half;
  let i = k % half;
  let sc = angle_sin_cos(positions[t], invFreq[i]);
  for (var h = 0u; h < p.heads; h++) {
    let b = (t * p.heads + h) * p.D + i;
    let r = rotate(x[b], x[b + half], sc);
    y[b] = r.x;
    y[b + half] = r.y;
  }
}

@compute @workgroup_size(256)
fn rope_inplace(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let half = p.D / 2u;
  let k = (wid.z * nwg.y + wid.y) * WG + lid;
  if (k >= p.T * half) { return; }
  let t = k / half;
  let i = k % half;
  let sc = angle_sin_cos(positionsIp[t], invFreqIp[i]);
  for (var h = 0u; h < p.heads; h++) {
    let b = (t * p.heads + h) * p.D + i;
    let r = rotate(y[b], y[b + half], sc);
    y[b] = r.x;
    y[b + half] = r.y;
  }
}
