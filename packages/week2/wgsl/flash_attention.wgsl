// NotImplemented(chapter 2.5): delete this line when you start writing the kernel.
//
// Chapter 2.5: flash attention on the GPU. Read docs/week2/2.5-flash-attention-gpu.md.
//
// out [B, Hq, L, D] = softmax(q k^T * scale + mask) v for q [B, Hq, L, D] and k, v [B, Hkv, S, D], contiguous,
// float32 or bf16; query head h reads kv head h / (Hq / Hkv). params.mask_kind says which mask: MASK_NONE,
// MASK_CAUSAL (query i sees key j when j <= i + S - L) or MASK_TENSOR, an additive float32 tensor whose value
// for (b, h, i, j) is mask_load(b * ms.x + h * ms.y + i * ms.z + j * ms.w) with ms = params.mask_strides (a
// stride is 0 along a dimension the mask is broadcast over).
//
// Given (src/flash-attention-gpu.ts runs the kernel so): workgroup (x, y, z) computes query rows
// x * BQ .. x * BQ + BQ - 1 (those < L) of head y of batch row z, with WG invocations; BK is the key tile and D
// the head dim, both sized so that tiles of BQ x D, BK x D and BQ x BK floats fit in workgroup memory. The
// bindings, Params and the constants below are what the wrapper passes: keep them. Read element i of q, k, v
// and mask as f32 with q_load(i), k_load(i), v_load(i), mask_load(i); inf() is +infinity.

override WG: u32 = 64u;  // invocations per workgroup
override BQ: u32 = 16u;  // query rows per workgroup
override BK: u32 = 16u;  // keys per tile
override D: u32 = 64u;  // the head dim (to size workgroup arrays: var<workgroup> t: array<f32, BQ * D>;)

const MASK_NONE = 0u;
const MASK_CAUSAL = 1u;
const MASK_TENSOR = 2u;

struct Params {
  l: u32,
  s: u32,
  d: u32,  // = D
  bk: u32,  // = BK
  hq: u32,
  hkv: u32,
  scale: f32,
  mask_kind: u32,  // MASK_NONE, MASK_CAUSAL or MASK_TENSOR
  mask_strides: vec4<u32>,  // elements per step along b, h, l, s (0 where the mask is broadcast)
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<u32>;  // q_load(i)
@group(0) @binding(2) var<storage, read> k: array<u32>;  // k_load(i)
@group(0) @binding(3) var<storage, read> v: array<u32>;  // v_load(i)
@group(0) @binding(4) var<storage, read> mask: array<u32>;  // mask_load(i), with MASK_TENSOR
@group(0) @binding(5) var<storage, read_write> out: array<f32>;  // [B, Hq, L, D]

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  // Your kernel: for the block's BQ query rows, walk the keys in tiles of BK with the online softmax.
  // 1. Stage the block's rows of q (times scale) in workgroup memory; start each row at m = -inf, l = 0, o = 0.
  // 2. Per key tile: stage K and V; compute the BQ x BK scores (-inf where hidden); per row, fold them into
  //    m and l and rescale o by exp(m - m'); add p @ V to o. workgroupBarrier() between the steps.
  // 3. With MASK_CAUSAL, stop before the first tile that the block's last row cannot see.
  // 4. Write o / l, and 0 for a row whose l is 0.
}
