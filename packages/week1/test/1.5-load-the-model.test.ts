// Chapter 1.5, graded: the Qwen2 model loaded from a checkpoint, against fixtures/models/<name>/golden.safetensors
// (computed in float64 by PyTorch + transformers from the same weights). Layer by layer first, so that a
// wrong formula is caught where it happens: the embedding, each block given the golden input of that block,
// the final norm; then the logits of whole prompts and 16 greedy tokens (no KV cache: a full forward pass
// per token).
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { expectClose, FIXTURES_DIR } from '@tiny-llm/tensor-core/testing';
import { describe, expect, it } from 'vitest';
import { Qwen2ModelWeek1 } from '@solution/week1';

/** Shape, dtype and NaN, each with a message that says what is wrong; then the values within atol. */
function expectGolden(what: string, actual: Tensor, expected: Tensor, atol = 1e-4): void {
  const want = [1, ...expected.shape]; // the goldens have no batch dimension; the model's tensors do
  expect([...actual.shape], `${what}: expected shape ${tc.formatShape(want)}, got ${actual.describe()}`).toEqual(want);
  expect(actual.dtype, `${what}: week 1 computes in float32, got ${actual.dtype}`).toBe('float32');
  const values = actual.toArray();
  const nan = Array.prototype.findIndex.call(values, Number.isNaN);
  expect(nan, `${what}: NaN at index ${nan}`).toBe(-1);
  expectClose(values, expected.toArray(), atol);
}

/**
 * The golden checks of one model of fixtures/models: prompt 0 layer by layer (each block given the golden
 * input of that block, so an error shows in the first layer that has it), then every prompt's logits and
 * its 16 greedy tokens.
 */
function describeGoldenModel(title: string, name: string): void {
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
      expectGolden('embedding', model().embedding.forward(ids), golden.get('prompt0.layer0.in'));
    });

    for (let l = 0; l < layers; l++) {
      it(`layers[${l}].forward(golden input of layer ${l}, 'causal') = its golden output`, () => {
        const x = batchOf(golden.get(`prompt0.layer${l}.in`));
        expectGolden(`layer ${l}`, model().layers[l].forward(x, 'causal'), golden.get(`prompt0.layer${l}.out`));
      });
    }

    it(`norm.forward(golden output of layer ${layers - 1}) = the final hidden state`, () => {
      const x = batchOf(golden.get(`prompt0.layer${layers - 1}.out`));
      expectGolden('final norm', model().norm.forward(x), golden.get('prompt0.norm.out'));
    });

    for (let i = 0; i < prompts; i++) {
      const prompt = golden.get(`prompt${i}`);
      it(`prompt ${i} (${prompt.size} tokens): the logits of every position (atol 1e-4)`, () => {
        expectGolden(`prompt ${i} logits`, model().forward(batchOf(prompt)), golden.get(`prompt${i}.logits`));
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

// tied embeddings (f32); an lm_head of its own, 8 query heads on 2 kv heads, rope_theta 1e4; bf16 weights;
// MLX 4-bit weights (dequantized at load).
for (const name of ['qwen2-tiny', 'qwen2-tiny-untied', 'qwen2-tiny-bf16', 'qwen2-tiny-4bit']) {
  describeGoldenModel('1.5 load the model', name);
}

describe('1.5 load the model: the shape of the output', () => {
  it('forward(ids [1, L]) returns float32 logits [1, L, vocab]', () => {
    const model = Qwen2ModelWeek1.load(`${FIXTURES_DIR}models/qwen2-tiny`);
    const ids = tc.tensor([3, 1, 4, 1, 5, 9, 2], { dtype: 'int32', shape: [1, 7] });
    const logits = model.forward(ids);
    expect([...logits.shape], 'logits: one row of vocab_size scores per position').toEqual([1, 7, 512]);
    expect(logits.dtype, 'week 1 computes in float32').toBe('float32');
  });

  it('runs a batch of two sequences at once: [2, L] -> [2, L, vocab], each row as if alone', () => {
    const model = Qwen2ModelWeek1.load(`${FIXTURES_DIR}models/qwen2-tiny`);
    const rows = [
      [3, 1, 4, 1, 5],
      [9, 2, 6, 5, 3],
    ];
    const both = model.forward(tc.tensor(rows, { dtype: 'int32' }));
    expect([...both.shape]).toEqual([2, 5, 512]);
    const [first, second] = tc.split(both, 2, 0);
    const alone = (row: number[]): Tensor => model.forward(tc.tensor([row], { dtype: 'int32' }));
    expectClose(first.toArray(), alone(rows[0]).toArray(), 1e-5);
    expectClose(second.toArray(), alone(rows[1]).toArray(), 1e-5);
  });
});

/** The error `fn` throws (a stub's NotImplemented is thrown on, so that the test reports it as such). */
function errorOf(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    if ((err as Error).name === 'NotImplemented') throw err;
    return err as Error;
  }
  throw new Error('expected an error, but the call returned normally');
}

describe('1.5 load the model: errors', () => {
  it('a directory that is not a model: the error says so', () => {
    // fixtures/ops holds safetensors files but no config.json: tc.openModelDir's error explains that.
    expect(errorOf(() => Qwen2ModelWeek1.load(`${FIXTURES_DIR}ops`)).message).toMatch(/not a model directory/);
  });

  it('a mixture-of-experts model (chapter 3.3): the error names the unsupported model type', () => {
    expect(errorOf(() => Qwen2ModelWeek1.load(`${FIXTURES_DIR}models/qwen2-moe-tiny`)).message).toMatch(/qwen2_moe/);
  });
});
