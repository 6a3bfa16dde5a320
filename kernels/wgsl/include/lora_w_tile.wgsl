// The strided loader of the adapter weight W shared by lora_shrink and lora_expand (pulled in
// by `#include`; needs their `p.H`, `p.sr`, `p.sh` and the `load_w` that src/backend/wgsl.ts
// generates). W(e, r, h) = load_w(wb + r·sr + h·sh): A [L,R,Hin] or B [L,Hout,R], either one
// read straight or transposed.

// Element i of the tile of W covering ranks r0 + [0, nr) and h0 + [0, nh); r and h are
// relative to (r0, h0). Consecutive i walk W's contiguous axis (h when sh = 1, else r), so a
// workgroup striding over i reads W coalesced. 0 past the adapter's rank rk or past H.
struct WTileElem { r: u32, h: u32, val: f32 }

fn w_tile_elem(i: u32, nr: u32, nh: u32, wb: u32, r0: u32, h0: u32, rk: u32) -> WTileElem {
  var el: WTileElem;
  if (p.sh == 1u) {
    el.h = i % nh;
    el.r = i / nh;
  } else {
    el.r = i % nr;
    el.h = i / nr;
  }
  if (r0 + el.r < rk && h0 + el.h < p.H) { el.val = load_w(wb + (r0 + el.r) * p.sr + (h0 + el.h) * p.sh); }
  return el;
}
