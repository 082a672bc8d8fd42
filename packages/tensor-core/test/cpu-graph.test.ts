// CpuBackend.capture and CpuGraph (src/backend/cpu-graph.ts): a function's native calls recorded once and made
// again; replays compute on the inputs' current contents, checked against the same arithmetic in JavaScript.
import * as tc from '@tiny-llm/tensor-core';
import { describe, expect, it } from 'vitest';

/** The ArrayBuffers a recorded call passes to its kernel (tensors go to bindings as [buffer, meta]). */
function buffersOf(calls: readonly tc.NativeCall[]): Set<ArrayBuffer> {
  const out = new Set<ArrayBuffer>();
  for (const { args } of calls) for (const a of args) if (Array.isArray(a) && a[0] instanceof ArrayBuffer) out.add(a[0]);
  return out;
}

describe('CpuBackend.capture', () => {
  it('records the native calls of a function; a replay computes on the inputs as they are then', () => {
    const x = tc.tensor([1, 2, 3, 4], { shape: [2, 2], dtype: 'float32' });
    const y = tc.tensor([10, 20, 30, 40], { shape: [2, 2], dtype: 'float32' });
    const graph = tc.cpu.capture(() => tc.keep(tc.tidy(() => tc.add(tc.mul(x, y), x))));
    expect(graph.result.toArray()).toEqual(Float32Array.from([11, 42, 93, 164]));
    expect(graph.calls.length).toBe(2); // mul, add
    const [buffer, meta] = x.native();
    const xs = new Float32Array(buffer, meta[0], 4);
    xs.set([-1, 0.5, 2, 3]);
    graph.replay();
    const expected = [-1, 0.5, 2, 3].map((v, i) => v * [10, 20, 30, 40][i] + v);
    expect(Array.from(graph.result.toArray())).toEqual(expected);
  });

  it("keeps the graph's temporaries to itself: tensors allocated afterwards never get their buffers", () => {
    const x = tc.random.normal([64, 64], { seed: 3 });
    // Temporaries of the size of x are freed inside the captured function, as a model step frees its own.
    const graph = tc.cpu.capture(() =>
      tc.keep(
        tc.tidy(() => {
          const a = tc.exp(x);
          const b = tc.mul(a, x);
          a.dispose();
          return tc.add(b, x);
        }),
      ),
    );
    const graphBuffers = buffersOf(graph.calls);
    const later = Array.from({ length: 8 }, () => tc.exp(x));
    for (const t of later) expect(graphBuffers.has(t.native()[0])).toBe(false);
    for (const t of later) t.dispose();
  });

  it("records the calls of an extension addon that the function itself loads (its package's first call)", () => {
    const x = tc.tensor([1, 2, 3], { dtype: 'float32' });
    const out = tc.empty([3]);
    const url = new URL('../build/Release/sdk_example.node', import.meta.url);
    const graph = tc.cpu.capture(() => tc.loadExtension(url, 'the SDK example').scaleShiftInto(x.native(), out.native(), 2, 1));
    const [buffer, meta] = x.native();
    new Float32Array(buffer, meta[0], 3).set([10, 20, 30]);
    graph.replay();
    expect(Array.from(out.toArray())).toEqual([21, 41, 61]);
  });

  it('puts every binding back, also when the function throws', () => {
    const bindings = Object.fromEntries(Object.entries(tc.native));
    expect(() =>
      tc.cpu.capture(() => {
        tc.add(tc.ones([2]), tc.ones([3]));
      }),
    ).toThrow(/broadcast/);
    for (const [name, f] of Object.entries(tc.native)) expect(f, name).toBe(bindings[name]);
    const { calls } = tc.recordNativeCalls(() => tc.ones([2]).toArray());
    for (const [name, f] of Object.entries(tc.native)) expect(f, name).toBe(bindings[name]);
    expect(calls.every((c) => Object.values(bindings).includes(c.kernel))).toBe(true);
  });
});
