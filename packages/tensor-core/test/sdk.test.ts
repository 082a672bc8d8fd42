// The extension SDK: an addon built only against tiny_llm/extension.h runs on tensor-core's thread pool.
import { describe, expect, it } from 'vitest';
import * as tc from '../src/index.ts';
import { expectClose, seeded } from '../src/testing.ts';

describe('extension SDK example kernel', () => {
  const example = tc.loadBuiltAddon('sdk_example');
  example.connect(tc.native.sdkTable());

  it('shares the pool of tensor-core', () => {
    expect(example.numThreads()).toBe(tc.native.numThreads());
  });

  it('computes alpha * x + beta like a plain loop, over sizes that do and do not split across threads', () => {
    for (const n of [1, 1000, 300001]) {
      const values = seeded(n, n);
      const x = tc.tensor(values);
      const out = tc.empty([n]);
      example.scaleShiftInto(x.native(), out.native(), 2.5, -1);
      expectClose(
        out.toArray(),
        values.map((v) => Math.fround(Math.fround(2.5 * Math.fround(v)) - 1)),
        0,
      );
    }
  });

  it('rejects bad arguments with the op name instead of crashing', () => {
    const x = tc.ones([4]);
    expect(() => example.scaleShiftInto(x.native(), tc.empty([3]).native(), 1, 0)).toThrow(
      /scaleShiftInto: expected float32 x and out of one size/,
    );
    expect(() => example.scaleShiftInto(tc.transpose(tc.ones([2, 2])).native(), tc.empty([4]).native(), 1, 0)).toThrow(
      /scaleShiftInto: x must be contiguous/,
    );
    expect(() => example.scaleShiftInto({}, x.native(), 1, 0)).toThrow(/scaleShiftInto: argument 0 is not a tensor view/);
    const [buffer, meta] = x.native();
    const start = meta[0]; // x's byte offset in its buffer
    const tooLong = { buffer, byteOffset: start, dtype: 0, shape: [100], strides: [1] };
    expect(() => example.scaleShiftInto(tooLong, x.native(), 1, 0)).toThrow(/scaleShiftInto: argument 0 reaches outside its storage/);
    const handMade = { buffer, byteOffset: start + 4, dtype: 0, shape: [3], strides: [1] };
    const out = tc.empty([3]);
    example.scaleShiftInto(handMade, out.native(), 1, 0);
    expect(Array.from(out.toArray())).toEqual([1, 1, 1]);
  });
});
