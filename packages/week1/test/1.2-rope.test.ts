// Chapter 1.2, graded: rotary position embedding against the golden fixture (computed in float64 by
// PyTorch, fixtures/ops/rope), traditional and Qwen2-style, with one offset or one offset per batch row.
import * as tc from '@tiny-llm/tensor-core';
import { expectClose, goldenOp } from '@tiny-llm/tensor-core/testing';
import { describe, it } from 'vitest';
import { RoPE } from '@solution/week1';
import { expectGolden } from './support.ts';

const f = goldenOp('rope');

/** A RoPE for case c with a table just long enough for its last position. */
function ropeFor(c: (typeof f.cases)[number]): RoPE {
  const [, l, , d] = f.get(c, 'x').shape;
  const lastStart = Math.max(...[c.offset as number | number[]].flat());
  return new RoPE(d, lastStart + l, c.base as number, c.traditional as boolean);
}

describe('1.2 rope: RoPE.forward against the fixture', () => {
  for (const c of f.cases) {
    const style = c.traditional ? 'traditional (2i, 2i+1)' : 'Qwen2 (i, i + D/2)';
    const offset = c.offset as number | number[];
    it(`${c.name}: ${style}, base ${c.base}, offset ${JSON.stringify(offset)}, x ${tc.formatShape(f.get(c, 'x').shape)}`, () => {
      const rope = ropeFor(c);
      // Offset 0 is the default: call without it, as a prefill of a fresh sequence does.
      const out = offset === 0 ? rope.forward(f.get(c, 'x')) : rope.forward(f.get(c, 'x'), offset);
      expectGolden(out, f.get(c, 'out'));
    });
  }
});

describe('1.2 rope: one RoPE serves every call', () => {
  it('per-row offsets give each row what a call with that row alone and its offset gives', () => {
    const c = f.cases.find((k) => k.name === 'c5')!; // offsets [0, 5, 100]
    const rope = ropeFor(c);
    const x = f.get(c, 'x');
    const offsets = c.offset as number[];
    const batched = rope.forward(x, offsets);
    offsets.forEach((o, row) => {
      const alone = rope.forward(tc.slice(x, [[row, row + 1]]), o);
      expectClose(tc.slice(batched, [[row, row + 1]]).toArray(), alone.toArray(), 1e-6);
    });
  });
});
