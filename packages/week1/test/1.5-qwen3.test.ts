// Chapter 1.5, extension task, graded: Qwen3 with the same classes as Qwen2, against
// fixtures/models/qwen3-tiny/golden.safetensors (computed in float64 by PyTorch + transformers). Qwen3 has an
// explicit head_dim (here 32, while hidden_size / num_attention_heads is 16), no q/k/v biases, and
// normalises each head of q and k with an RMSNorm (self_attn.q_norm / k_norm) before RoPE.
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

describeGoldenModel('1.5 extension: Qwen3', 'qwen3-tiny');

describe('1.5 extension: Qwen3 attention shapes', () => {
  it('head_dim comes from the config: q has 4 heads of 32 (128 features) from a hidden size of 64', () => {
    const model = Qwen2ModelWeek1.load(`${FIXTURES_DIR}models/qwen3-tiny`);
    expect(model.config.headDim).toBe(32);
    const logits = model.forward(tc.tensor([[7, 8, 9]], { dtype: 'int32' }));
    expect([...logits.shape]).toEqual([1, 3, 512]);
  });
});
