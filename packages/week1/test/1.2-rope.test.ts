// Chapter 1.2, graded: rotary position embedding against the golden fixture (computed in float64 by
// PyTorch, fixtures/ops/rope), traditional and Qwen2-style, with one offset or one offset per batch row.
import * as tc from '@tiny-llm/tensor-core';
import { goldenOp } from '@tiny-llm/tensor-core/testing';
import { expectGolden, float64 as f64, ropeMistakes } from '@tiny-llm/grading';
import { describe, it } from 'vitest';
import { RoPE } from '@solution/week1';

const f = goldenOp('rope');
type Case = (typeof f.cases)[number];
const AXES = ['b', 'l', 'h', 'd'];

/** The case's offsets, one per batch row. */
function offsetsOf(c: Case, rows: number): number[] {
  const offset = c.offset as number | number[];
  return typeof offset === 'number' ? new Array<number>(rows).fill(offset) : offset;
}

/** A RoPE for case c with a table just long enough for its last position. */
function ropeFor(c: Case): RoPE {
  const [b, l, , d] = f.get(c, 'x').shape;
  return new RoPE(d, Math.max(...offsetsOf(c, b)) + l, c.base as number, c.traditional as boolean);
}

describe('1.2 rope: RoPE.forward against the fixture', () => {
  for (const c of f.cases) {
    const style = c.traditional ? 'traditional (2i, 2i+1)' : 'Qwen2 (i, i + D/2)';
    const offset = c.offset as number | number[];
    const x = f.get(c, 'x');
    it(`${c.name}: ${style}, base ${c.base}, offset ${JSON.stringify(offset)}, x ${tc.formatShape(x.shape)}`, () => {
      // Offset 0 is the default: call without it, as a prefill of a fresh sequence does.
      const out = offset === 0 ? ropeFor(c).forward(x) : ropeFor(c).forward(x, offset);
      const options = { base: c.base as number, traditional: c.traditional as boolean, offsets: offsetsOf(c, x.shape[0]) };
      expectGolden(out, f.get(c, 'out'), { axes: AXES, mistakes: ropeMistakes(f64.toND(x), options) });
    });
  }
});

describe('1.2 rope: one RoPE serves every call', () => {
  it('the same RoPE, called row by row with each row its own offset, against the float64 reference', () => {
    const c = f.cases.find((k) => k.name === 'c5')!; // offsets [0, 5, 100]
    const rope = ropeFor(c);
    const x = f.get(c, 'x');
    offsetsOf(c, x.shape[0]).forEach((o, row) => {
      const alone = tc.slice(x, [[row, row + 1]]);
      const options = { base: c.base as number, traditional: false, offsets: [o] };
      const expected = f64.rope(f64.toND(alone), options);
      expectGolden(rope.forward(alone, o), expected, {
        what: `row ${row} at offset ${o}`,
        axes: AXES,
        mistakes: ropeMistakes(f64.toND(alone), options),
      });
    });
  });
});
