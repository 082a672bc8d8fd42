// Element types. Every buffer is bound as words (array<u32>): not every GPU has shader-f16, so bf16 and f16
// stay 16-bit halves of words, and uint8/bool bytes of them. These conversions are bit-exact with the CPU
// backend's (native/include/tiny_llm/extension.h): stores round to nearest even, integer stores truncate
// toward zero and saturate, NaN becomes 0.
//
// decode_<dtype>(bits) -> f32 and encode_<dtype>(f32) -> bits exist for every dtype; the integer kernels
// use int_decode_<dtype> / int_encode_<dtype> (int32, uint8, bool), which never pass through f32.

fn is_nan(v: f32) -> bool { return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u; }
fn is_inf(v: f32) -> bool { return (bitcast<u32>(v) & 0x7fffffffu) == 0x7f800000u; }
// WGSL has no infinity literal, and rejects one made by a constant expression: this goes through a variable.
var<private> inf_bits: u32 = 0x7f800000u;
fn inf() -> f32 { return bitcast<f32>(inf_bits); }

// bf16 is the top half of an f32: widening is a shift, narrowing rounds to nearest even.
fn bf16_to_f32(h: u32) -> f32 { return bitcast<f32>(h << 16u); }
fn f32_to_bf16(v: f32) -> u32 {
  let u = bitcast<u32>(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) { return (u >> 16u) | 0x40u; }  // quiet NaN, keep the sign
  return (u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u;
}

// f16 by hand rather than unpack2x16float/pack2x16float, whose rounding and subnormals are not pinned down.
fn f16_to_f32(h: u32) -> f32 {
  let sign = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 0x1fu) { return bitcast<f32>(sign | 0x7f800000u | (m << 13u)); }
  if (e == 0u) {
    let v = f32(m) * 5.9604644775390625e-8;  // subnormal: m * 2^-24, exact in f32
    return select(v, -v, sign != 0u);
  }
  return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}
fn f32_to_f16(v: f32) -> u32 {
  let u = bitcast<u32>(v);
  let sign = (u >> 16u) & 0x8000u;
  let a = u & 0x7fffffffu;
  if (a > 0x7f800000u) { return sign | 0x7e00u | ((a >> 13u) & 0x3ffu); }  // NaN
  if (a >= 0x477ff000u) { return sign | 0x7c00u; }  // rounds to >= 65520: infinity
  if (a < 0x38800000u) {  // subnormal result: shift the whole significand, round to nearest even
    if (a < 0x33000000u) { return sign; }
    let shift = 126u - (a >> 23u);
    let mant = (a & 0x7fffffu) | 0x800000u;
    let half = 1u << (shift - 1u);
    let rest = mant & ((1u << shift) - 1u);
    var q = mant >> shift;
    if (rest > half || (rest == half && (q & 1u) == 1u)) { q += 1u; }
    return sign | q;
  }
  let r = a + 0xfffu + ((a >> 13u) & 1u);
  return sign | (((r >> 13u) - (112u << 10u)) & 0xffffu);
}

fn f32_to_i32(v: f32) -> i32 {
  if (is_nan(v)) { return 0; }
  if (v >= 2147483648.0) { return 2147483647; }
  if (v <= -2147483648.0) { return bitcast<i32>(0x80000000u); }
  return i32(v);
}
fn f32_to_u32(v: f32) -> u32 {
  if (is_nan(v) || v <= 0.0) { return 0u; }
  if (v >= 4294967296.0) { return 0xffffffffu; }
  return u32(v);
}

fn decode_float32(bits: u32) -> f32 { return bitcast<f32>(bits); }
fn decode_bfloat16(bits: u32) -> f32 { return bf16_to_f32(bits); }
fn decode_float16(bits: u32) -> f32 { return f16_to_f32(bits); }
fn decode_int32(bits: u32) -> f32 { return f32(bitcast<i32>(bits)); }
fn decode_uint32(bits: u32) -> f32 { return f32(bits); }
fn decode_uint8(bits: u32) -> f32 { return f32(bits); }
fn decode_bool(bits: u32) -> f32 { return f32(bits); }

fn encode_float32(v: f32) -> u32 { return bitcast<u32>(v); }
fn encode_bfloat16(v: f32) -> u32 { return f32_to_bf16(v); }
fn encode_float16(v: f32) -> u32 { return f32_to_f16(v); }
fn encode_int32(v: f32) -> u32 { return bitcast<u32>(f32_to_i32(v)); }
fn encode_uint32(v: f32) -> u32 { return f32_to_u32(v); }
fn encode_uint8(v: f32) -> u32 { return min(f32_to_u32(v), 255u); }
fn encode_bool(v: f32) -> u32 { return select(0u, 1u, v != 0.0); }

fn int_decode_int32(bits: u32) -> i32 { return bitcast<i32>(bits); }
fn int_decode_uint8(bits: u32) -> i32 { return i32(bits); }
fn int_decode_bool(bits: u32) -> i32 { return i32(bits); }

fn int_encode_int32(v: i32) -> u32 { return bitcast<u32>(v); }
fn int_encode_uint8(v: i32) -> u32 { return u32(clamp(v, 0, 255)); }
fn int_encode_bool(v: i32) -> u32 { return select(0u, 1u, v != 0); }
