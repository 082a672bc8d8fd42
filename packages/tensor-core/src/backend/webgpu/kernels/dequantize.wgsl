// The float32 matrix an MLX-quantized weight stands for (tc.dequantize): out [rows, K] = q * scale + bias, q
// the BITS-bit value j of its row's little-endian bit stream (io/quantized.ts describes the layout) and scale,
// bias those of its group. One invocation per element of out. A model that wants a float copy of a weight
// already on the GPU (a quantized embedding table for lookups) gets it here, without a trip through the CPU.
// Bound through the extension path (backend.ts), which hands over every tensor from its first element and
// generates the scales_load / biases_load accessors for their dtype.
//
// q * scale is exact in f32 for bf16 and f16 scales (at most 8 + 11 significant bits), so the one rounding of
// the sum gives the CPU's result (computed in double precision, rounded once) bit for bit; with f32 scales
// the product may round too.

override WG: u32 = 256u;

struct Params {
  count: u32,  // elements of out
  k: u32,  // values per row
  bits: u32,
  group_size: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> words: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> biases: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
  let e = flat_workgroup(wid, nwg) * WG + lid;
  if (e >= params.count) { return; }
  let K = params.k;
  let row = e / K;
  let j = e % K;
  let bit = j * params.bits;
  let w = row * (K * params.bits / 32u) + (bit >> 5u);
  let shift = bit & 31u;
  var q = words[w] >> shift;
  // 3-, 5- and 6-bit values may continue in the next word.
  if (shift + params.bits > 32u) { q |= words[w + 1u] << (32u - shift); }
  q &= (1u << params.bits) - 1u;
  let g = row * (K / params.group_size) + j / params.group_size;
  out[e] = fma(f32(q), scales_load(g), biases_load(g));
}
