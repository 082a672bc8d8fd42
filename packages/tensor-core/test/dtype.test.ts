// Half-precision conversions, bit for bit, against an independent model of round-to-nearest-even: the
// nearest representable value, computed in float64 over the list of all 65536 half-precision patterns.
import { describe, expect, it } from 'vitest';
import * as tc from '../src/index.ts';
import { seeded } from '../src/testing.ts';

function f16Value(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 31) return m ? NaN : sign * Infinity;
  return e === 0 ? sign * m * 2 ** -24 : sign * (1 + m / 1024) * 2 ** (e - 15);
}

function bf16Value(h: number): number {
  const view = new DataView(new ArrayBuffer(4));
  view.setUint32(0, h << 16);
  return view.getFloat32(0);
}

/** The nearest pattern to v among the non-negative finite patterns (ascending), ties to the even pattern. */
function nearest(v: number, values: number[], patterns: number[], overflow: number, infPattern: number): number {
  const sign = v < 0 || Object.is(v, -0) ? 0x8000 : 0;
  const a = Math.abs(v);
  // Values past the largest finite one are compared with `overflow`, the next step of the format (where
  // infinity sits in round-to-nearest-even).
  let lo = 0;
  let hi = values.length - 1;
  if (a >= values[hi]) {
    const below = values[hi];
    if (a - below < overflow - a || (a - below === overflow - a && (patterns[hi] & 1) === 0)) return sign | patterns[hi];
    return sign | infPattern;
  }
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (values[mid] <= a) lo = mid;
    else hi = mid;
  }
  const dLo = a - values[lo];
  const dHi = values[hi] - a;
  if (dLo < dHi) return sign | patterns[lo];
  if (dHi < dLo) return sign | patterns[hi];
  return sign | ((patterns[lo] & 1) === 0 ? patterns[lo] : patterns[hi]);
}

function finitePositive(decode: (h: number) => number, expMask: number) {
  const patterns: number[] = [];
  for (let h = 0; h < 0x8000; h++) if ((h & expMask) !== expMask) patterns.push(h);
  return { patterns, values: patterns.map(decode) };
}

const F16 = { ...finitePositive(f16Value, 0x7c00), overflow: 65536, inf: 0x7c00, decode: f16Value };
const BF16 = { ...finitePositive(bf16Value, 0x7f80), overflow: 2 ** 128, inf: 0x7f80, decode: bf16Value };

/** Float32 inputs that exercise every rounding path: random bits, halfway points, subnormals, specials. */
function testInputs(format: typeof F16): Float32Array {
  const bits = new Uint32Array(seeded(40000, 5).map((r) => Math.floor((r + 1) * 2 ** 31) >>> 0));
  const values = Array.from(new Float32Array(bits.buffer));
  for (let i = 0; i + 1 < format.values.length; i += 97) {
    const [a, b] = [format.values[i], format.values[i + 1]];
    values.push(a, b, (a + b) / 2, -(a + b) / 2, Math.fround((a + b) / 2) * (1 + 2 ** -20));
  }
  const max = format.values[format.values.length - 1];
  values.push(
    0,
    -0,
    Infinity,
    -Infinity,
    NaN,
    max,
    (max + format.overflow) / 2,
    1e-45,
    -1e-45,
    2 ** -149,
    1e-8,
    6e-8,
    3e-8,
    65519,
    65520,
    3.4e38,
  );
  return Float32Array.from(values);
}

for (const [name, format] of [
  ['float16', F16],
  ['bfloat16', BF16],
] as const) {
  describe(`${name} conversions`, () => {
    it(`every ${name} pattern widens to the exact float32 value`, () => {
      const words = new Uint16Array(65536).map((_, i) => i);
      const halves = new tc.Tensor(tc.cpu.upload(words), name, [65536]);
      const widened = halves.toArray();
      const viaKernel = tc.astype(halves, 'float32').toArray();
      for (let h = 0; h < 65536; h++) {
        const expected = format.decode(h);
        if (Number.isNaN(expected)) {
          expect(Number.isNaN(widened[h]) && Number.isNaN(viaKernel[h]), `pattern ${h}`).toBe(true);
        } else {
          expect(Object.is(widened[h], expected) && Object.is(viaKernel[h], expected), `pattern ${h.toString(16)}`).toBe(true);
        }
      }
    });

    it(`float32 -> ${name} rounds to nearest even, keeps signs, infinities and NaN`, () => {
      const inputs = testInputs(format);
      const converted = tc.astype(tc.tensor(inputs), name);
      const words = tc.cpu.readSync(converted) as Uint16Array;
      for (let i = 0; i < inputs.length; i++) {
        const v = inputs[i];
        if (Number.isNaN(v)) {
          expect(Number.isNaN(format.decode(words[i])), `NaN stays NaN`).toBe(true);
          continue;
        }
        const expected = nearest(v, format.values, format.patterns, format.overflow, format.inf);
        if (words[i] !== expected) {
          expect.fail(`${v} -> 0x${words[i].toString(16)}, expected 0x${expected.toString(16)}`);
        }
      }
    });
  });
}

describe('integer conversions', () => {
  it('truncate toward zero and saturate', () => {
    const x = tc.tensor([1.9, -1.9, 3e9, -3e9, 300, -5, NaN]);
    expect(tc.astype(x, 'int32').toList()).toEqual([1, -1, 2147483647, -2147483648, 300, -5, 0]);
    expect(tc.astype(x, 'uint8').toList()).toEqual([1, 0, 255, 0, 255, 0, 0]);
    expect(tc.astype(x, 'bool').toList()).toEqual([1, 1, 1, 1, 1, 1, 1]);
    expect(tc.astype(tc.tensor([4294967295], { dtype: 'uint32' }), 'float32').toList()).toEqual([4294967296]);
  });
});
