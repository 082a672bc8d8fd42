// Checks shared by the graded tests of week 1. Each failure message says what is wrong in the learner's
// terms: the shape expected and got, a dtype other than float32, the first NaN, then the worst error.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { expectClose, FIXTURES_DIR } from '@tiny-llm/tensor-core/testing';
import { describe, expect, it } from 'vitest';
import { Qwen2ModelWeek1 } from '@solution/week1';

/** Shape, dtype and NaN, each with a message that says what is wrong; returns the values. */
export function expectWellFormed(actual: Tensor, expected: Tensor, what = 'output'): ArrayLike<number> {
  const shapes = `expected ${tc.formatShape(expected.shape)}, got ${tc.formatShape(actual.shape)}`;
  expect([...actual.shape], `${what} shape: ${shapes}`).toEqual([...expected.shape]);
  expect(actual.dtype, `${what} dtype: week 1 computes in float32, got ${actual.dtype}`).toBe('float32');
  const values = actual.toArray();
  const nan = Array.prototype.findIndex.call(values, Number.isNaN);
  expect(nan, `${what} has NaN at index ${nan}`).toBe(-1);
  return values;
}

/** expectWellFormed, then the values within atol of the golden. */
export function expectGolden(actual: Tensor, expected: Tensor, atol = 1e-5, what = 'output'): void {
  expectClose(expectWellFormed(actual, expected, what), expected.toArray(), atol);
}

/**
 * The golden checks of one model of fixtures/models: prompt 0 layer by layer (each block given the golden
 * input of that block, so an error shows in the first layer that has it), then every prompt's logits and
 * its 16 greedy tokens.
 */
export function describeGoldenModel(title: string, name: string): void {
  const dir = `${FIXTURES_DIR}models/${name}`;
  const golden = tc.readSafetensors(`${dir}/golden.safetensors`);
  const prompts = Number(golden.metadata.prompts);
  const layers = golden.names.filter((n) => /^prompt0\.layer\d+\.in$/.test(n)).length;
  const newTokens = Number(golden.metadata.n_new);
  // Loaded by the first test that needs it (a failed load fails each test with its own error).
  let loaded: Qwen2ModelWeek1 | undefined;
  const model = () => (loaded ??= Qwen2ModelWeek1.load(dir));
  const batchOf = (t: Tensor) => tc.expandDims(t, 0); // [L, ...] -> [1, L, ...]

  describe(`${title}: ${name}`, () => {
    it('embedding.forward(prompt 0) = the input of layer 0', () => {
      const ids = batchOf(golden.get('prompt0'));
      expectGolden(model().embedding.forward(ids), batchOf(golden.get('prompt0.layer0.in')), 1e-4, 'embedding');
    });

    for (let l = 0; l < layers; l++) {
      it(`layers[${l}].forward(golden input of layer ${l}, 'causal') = its golden output`, () => {
        const x = batchOf(golden.get(`prompt0.layer${l}.in`));
        expectGolden(model().layers[l].forward(x, 'causal'), batchOf(golden.get(`prompt0.layer${l}.out`)), 1e-4, `layer ${l}`);
      });
    }

    it(`norm.forward(golden output of layer ${layers - 1}) = the final hidden state`, () => {
      const x = batchOf(golden.get(`prompt0.layer${layers - 1}.out`));
      expectGolden(model().norm.forward(x), batchOf(golden.get('prompt0.norm.out')), 1e-4, 'final norm');
    });

    for (let i = 0; i < prompts; i++) {
      const prompt = golden.get(`prompt${i}`);
      it(`prompt ${i} (${prompt.size} tokens): the logits of every position (atol 1e-4)`, () => {
        expectGolden(model().forward(batchOf(prompt)), batchOf(golden.get(`prompt${i}.logits`)), 1e-4, `prompt ${i} logits`);
      });
    }

    for (let i = 0; i < prompts; i++) {
      it(`prompt ${i}: ${newTokens} greedy tokens, one full forward pass each`, () => {
        const ids = Array.from(golden.get(`prompt${i}`).toArray());
        const generated: number[] = [];
        for (let step = 0; step < newTokens; step++) {
          const next = tc.tidy(() => {
            const logits = model().forward(tc.tensor([ids], { dtype: 'int32' })); // [1, L, vocab]
            return tc.argmax(tc.slice(logits, [0, -1]), -1).item(); // the last position's best token
          });
          ids.push(next);
          generated.push(next);
        }
        expect(generated).toEqual(Array.from(golden.get(`prompt${i}.greedy`).toArray()));
      });
    }
  });
}
