// Rotary position embedding of x [B, L, H, D] (any strides) at positions [B, L] (int32), with the tables cos
// and sin [maxPositions, D / 2] (f32, contiguous). Each invocation rotates one pair of features of one head:
// (i, i + D/2) by default (Qwen2), (2i, 2i + 1) when TRADITIONAL:
//   out1 = x1 * cos - x2 * sin,   out2 = x2 * cos + x1 * sin.
// out is contiguous f32 [B, L, H, D]. Positions are checked against the tables by the op.
// Typed binding (shader.ts): x.

override WG: u32 = 256u;
override TRADITIONAL: bool = false;

struct Params {
  pairs: u32,  // B * L * H * D / 2
  l: u32,
  h: u32,
  half: u32,  // D / 2
  x_offset: i32,
  positions_offset: u32,
  tables_offset: vec2<u32>,  // the first element of cos and of sin
  x_strides: vec4<i32>,  // along B, L, H, D
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> positions: array<i32>;
@group(0) @binding(3) var<storage, read> cos_table: array<f32>;
@group(0) @binding(4) var<storage, read> sin_table: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let g = flat_workgroup(wid, nwg) * WG + lid;
  if (g >= params.pairs) { return; }
  let half = params.half;
  let i = g % half;
  let head = g / half;  // the flat (b, l, h) of this head
  let h = head % params.h;
  let bl = head / params.h;  // the flat (b, l): the token
  let l = bl % params.l;
  let b = bl / params.l;
  let t = params.tables_offset + vec2<u32>(u32(positions[params.positions_offset + bl]) * half + i);
  let c = cos_table[t.x];
  let s = sin_table[t.y];
  let i1 = select(i, 2u * i, TRADITIONAL);
  let i2 = select(i + half, 2u * i + 1u, TRADITIONAL);
  let st = params.x_strides;
  let row = params.x_offset + i32(b) * st.x + i32(l) * st.y + i32(h) * st.z;
  let x1 = x_load(u32(row + i32(i1) * st.w));
  let x2 = x_load(u32(row + i32(i2) * st.w));
  let o = head * 2u * half;
  out[o + i1] = x1 * c - x2 * s;
  out[o + i2] = x2 * c + x1 * s;
}
