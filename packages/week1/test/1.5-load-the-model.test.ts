// Chapter 1.5, graded: the Qwen2 model loaded from a checkpoint, against fixtures/models/<name>/golden.safetensors
// (computed in float64 by PyTorch + transformers from the same weights). Layer by layer first, so that a
// wrong formula is caught where it happens: the embedding, each block given the golden input of that block,
// the final norm; then the logits of whole prompts and 16 greedy tokens (no KV cache: a full forward pass
// per token).
import * as tc from '@tiny-llm/tensor-core';
import { FIXTURES_DIR } from '@tiny-llm/tensor-core/testing';
import { errorOf, expectGolden, expectPromptLogits, goldenModel, LOGITS_ATOL } from '@tiny-llm/grading';
import { describe, expect, it } from 'vitest';
import { Qwen2ModelWeek1 } from '@solution/week1';
import { describeGoldenModel } from './support.ts';

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

  it('runs a batch of two prompts at once: [2, L] -> [2, L, vocab], each row its own golden logits', () => {
    const golden = goldenModel('qwen2-tiny');
    // Two prompts of one length: prompt 0, and prompt 0 reversed, whose golden is the float64 model's.
    const first = golden.prompts[0];
    const reversed = [...first.ids].reverse();
    const both = Qwen2ModelWeek1.load(golden.dir).forward(tc.tensor([first.ids, reversed], { dtype: 'int32' }));
    expect([...both.shape], 'logits [B, L, vocab]').toEqual([2, first.ids.length, 512]);
    const [row0, row1] = tc.split(both, 2, 0);
    expectPromptLogits(row0, golden, first, 'batch row 0 (prompt 0)');
    const expected = golden.float64().logits(reversed);
    expectGolden(
      row1,
      { shape: [1, ...expected.shape], data: expected.data },
      { atol: LOGITS_ATOL, what: 'batch row 1 (prompt 0 reversed)', axes: ['b', 'l', 'v'] },
    );
  });
});

describe('1.5 load the model: errors', () => {
  it('a directory that is not a model: the error says so', () => {
    // fixtures/ops holds safetensors files but no config.json: tc.openModelDir's error explains that.
    expect(errorOf(() => Qwen2ModelWeek1.load(`${FIXTURES_DIR}ops`)).message).toMatch(/not a model directory/);
  });

  it('a mixture-of-experts model (chapter 3.3): the error names the unsupported model type', () => {
    expect(errorOf(() => Qwen2ModelWeek1.load(`${FIXTURES_DIR}models/qwen2-moe-tiny`)).message).toMatch(/qwen2_moe/);
  });
});
