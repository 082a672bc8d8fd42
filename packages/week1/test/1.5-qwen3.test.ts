// Chapter 1.5, extension task, graded: Qwen3 with the same classes as Qwen2, against
// fixtures/models/qwen3-tiny/golden.safetensors (computed in float64 by PyTorch + transformers). Qwen3 has an
// explicit head_dim (here 32, while hidden_size / num_attention_heads is 16), no q/k/v biases, and
// normalises each head of q and k with an RMSNorm (self_attn.q_norm / k_norm) before RoPE.
import * as tc from '@tiny-llm/tensor-core';
import { FIXTURES_DIR } from '@tiny-llm/tensor-core/testing';
import { describe, expect, it } from 'vitest';
import { Qwen2ModelWeek1 } from '@solution/week1';
import { describeGoldenModel } from './support.ts';

describeGoldenModel('1.5 extension: Qwen3', 'qwen3-tiny');

describe('1.5 extension: Qwen3 attention shapes', () => {
  it('head_dim comes from the config: q has 4 heads of 32 (128 features) from a hidden size of 64', () => {
    const model = Qwen2ModelWeek1.load(`${FIXTURES_DIR}models/qwen3-tiny`);
    expect(model.config.headDim).toBe(32);
    const logits = model.forward(tc.tensor([[7, 8, 9]], { dtype: 'int32' }));
    expect([...logits.shape]).toEqual([1, 3, 512]);
  });
});
