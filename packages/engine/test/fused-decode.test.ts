// The fused decode path of the week 2 model: the work fused into quantizedMatmul and Linear (an RMSNorm or
// SwiGLU prologue, bias and residual epilogues; native/fusion.cc), the dense linear layer (native/dense_panels.cc),
// the one-kernel decode attention (native/attention_decode.cc) with DecodeKvCache.reserve/commit, and the quantized
// embedding lookup, each against a float64 reference or the composed ops.
import * as tc from '@tiny-llm/tensor-core';
import { expectClose, FIXTURES_DIR } from '@tiny-llm/tensor-core/testing';
import { describe, expect, it } from 'vitest';
import { Linear } from '../src/model/linear.ts';
import { DecodeKvCache } from '../src/model/kv-cache.ts';
import { Qwen2Model } from '../src/model/qwen2.ts';
import { quantizedMatmul } from '../src/model/quantized-matmul.ts';
import { EXACT, fusedCase, scaledError } from './support/quantized-matmul-cases.ts';

const KINDS: string[][] = [['bias'], ['residual'], ['norm'], ['swiglu'], ['norm', 'bias', 'residual'], ['swiglu', 'residual']];

describe('quantizedMatmul with fused work', () => {
  // M = 1 and 3: the decode kernels (one and several x rows); M = 37: prefill (the GEMM on dequantized blocks).
  // K = 2048 at 4 bits: rows of 1 KB, which take the two-row tiles; K = 256: the four-row tiles.
  for (const [bits, group, k] of [
    [4, 64, 256],
    [4, 64, 2048],
    [8, 32, 256],
    [2, 64, 256],
    [3, 64, 192],
  ]) {
    for (const kinds of KINDS) {
      it(`${bits}-bit, group ${group}, K = ${k}: ${kinds.join(' + ')} (M = 1, 3, 37)`, () => {
        for (const m of [1, 3, 37]) {
          const c = fusedCase(m, 45, k, bits, group, kinds, m + k + bits);
          const y = quantizedMatmul(c.x, c.w, { bias: c.bias, residual: c.residual, norm: c.norm, swiglu: c.swiglu, ...EXACT });
          expect(y.shape).toEqual([m, 45]);
          expect(scaledError(y.toArray(), c.expected), `M = ${m}`).toBeLessThan(1e-4);
        }
      });
    }
  }

  it('the residual may be the output shape of any rank; bad fusion arguments throw', () => {
    const c = fusedCase(6, 24, 128, 4, 32, ['residual', 'bias']);
    const x = tc.reshape(c.x, [2, 3, 128]);
    const residual = tc.reshape(c.residual!, [2, 3, 24]);
    const y = quantizedMatmul(x, c.w, { bias: c.bias, residual, ...EXACT });
    expect(y.shape).toEqual([2, 3, 24]);
    expect(scaledError(y.toArray(), c.expected)).toBeLessThan(1e-4);
    expect(() => quantizedMatmul(c.x, c.w, { bias: tc.zeros([23]) })).toThrow(/fused bias must be float32 \[24\]/);
    expect(() => quantizedMatmul(c.x, c.w, { residual: tc.zeros([6, 23]) })).toThrow(/fused residual/);
    expect(() => quantizedMatmul(c.x, c.w, { norm: { weight: tc.ones([127]), eps: 1e-6 } })).toThrow(/rmsNorm weight must be \[128\]/);
    expect(() => quantizedMatmul(c.x, c.w, { swiglu: true })).toThrow(/twice the weight's 128 input features/);
  });
});

describe('Linear with dense weights: the same fusion around the panels kernel (native/dense_panels.cc)', () => {
  for (const dtype of ['float32', 'bfloat16'] as const) {
    for (const kinds of KINDS) {
      it(`${dtype} weight: ${kinds.join(' + ')} (M = 1, 3, 37, 200)`, () => {
        for (const m of [1, 3, 37, 200]) {
          const c = fusedCase(m, 40, 128, 8, 64, kinds, m + 11);
          // The dequantized weight as a dense one: float32 holds it exactly (the float64 reference applies);
          // bf16 rounds it, so that case is held to the composed ops on the same bf16 weight.
          const dense = tc.astype(tc.dequantize(c.w), dtype);
          const linear = new Linear(dense, c.bias, 'test');
          const y = linear.forward(c.x, { norm: c.norm, swiglu: c.swiglu, residual: c.residual });
          expect(y.shape).toEqual([m, 40]);
          if (dtype === 'float32') {
            expect(scaledError(y.toArray(), c.expected), `M = ${m}`).toBeLessThan(1e-4);
          } else {
            // bf16 weights: compare with the composed ops on the same weight.
            let input = c.x;
            if (c.swiglu) input = tc.mul(tc.silu(tc.slice(c.x, [null, [0, 128]])), tc.slice(c.x, [null, [128, 256]]));
            if (c.norm) input = tc.fast.rmsNorm(input, c.norm.weight, c.norm.eps);
            let want = tc.matmul(input, tc.transpose(dense));
            if (c.bias) want = tc.add(want, c.bias);
            if (c.residual) want = tc.add(c.residual, want);
            expect(scaledError(y.toArray(), want.toArray()), `M = ${m}`).toBeLessThan(1e-5);
          }
        }
      });
    }
  }
});

describe('DecodeKvCache.reserve and commit (the fused attention writes the cache itself)', () => {
  it('grows in chunks, keeps what is stored, and counts committed rows', () => {
    const cache = new DecodeKvCache({ chunkSize: 4 });
    const k = tc.reshape(tc.astype(tc.arange(2 * 3 * 8), 'float32'), [1, 2, 3, 8]);
    cache.updateAndFetch(k, k);
    const r = cache.reserve(1, 2, 8, 2, tc.cpu);
    expect(r.offset).toBe(3);
    expect(r.keys.shape).toEqual([1, 2, 8, 8]);
    expect(cache.offset).toBe(3);
    cache.commit(2);
    expect(cache.offset).toBe(5);
    // The first 3 positions survived the growth.
    const kept = tc.slice(r.keys, [null, null, [0, 3]]);
    expect(Array.from(kept.toArray())).toEqual(Array.from(k.toArray()));
    expect(() => cache.commit(4)).toThrow(/DecodeKvCache.commit: cannot add 4 positions to 5 in a capacity of 8/);
    expect(() => cache.reserve(1, 3, 8, 1, tc.cpu)).toThrow(/KvCache: the cache holds \[B=1, Hkv=2, S, D=8\], got \[B=1, Hkv=3, L, D=8\]/);
  });
});

describe('fused decode kernels against the composed ops, on the fixture models', () => {
  // Each model twice: fused kernels (the default) and composed ops; a prefill, then decode steps, logits close.
  for (const name of ['qwen2-tiny', 'qwen2-tiny-bf16', 'qwen2-tiny-4bit', 'qwen3-tiny', 'qwen2-moe-tiny', 'qwen2-tiny-untied']) {
    it(`${name}: a pass over 5 tokens (the decode kernel, several tokens at once), then 6 decode steps`, () => {
      const dir = `${FIXTURES_DIR}models/${name}`;
      const fused = Qwen2Model.load(dir, EXACT);
      const composed = Qwen2Model.load(dir, { fusedKernels: false, ...EXACT });
      const ids = [3, 17, 5, 42, 8, 11, 2, 29, 7, 13, 4];
      const cf = fused.newCache();
      const cc = composed.newCache();
      const prompt = tc.tensor([ids.slice(0, 5)], { dtype: 'int32' });
      expectClose(fused.forward(prompt, cf).toArray(), composed.forward(prompt, cc).toArray(), 1e-5);
      for (let p = 5; p < ids.length; p++) {
        const step = tc.tensor([[ids[p]]], { dtype: 'int32' });
        expectClose(fused.forwardLastLogits(step, cf).toArray(), composed.forwardLastLogits(step, cc).toArray(), 1e-5);
      }
      expect(cf[0].offset).toBe(ids.length);
    });
  }

  it('a batch of two sequences decodes as each alone', () => {
    const m = Qwen2Model.load(`${FIXTURES_DIR}models/qwen2-tiny-4bit`);
    const both = m.newCache();
    const one = m.newCache();
    const two = m.newCache();
    m.forward(
      tc.tensor(
        [
          [3, 4, 5],
          [9, 8, 7],
        ],
        { dtype: 'int32' },
      ),
      both,
    );
    m.forward(tc.tensor([[3, 4, 5]], { dtype: 'int32' }), one);
    m.forward(tc.tensor([[9, 8, 7]], { dtype: 'int32' }), two);
    const batched = m.forwardLastLogits(tc.tensor([[6], [1]], { dtype: 'int32' }), both).toArray() as Float32Array;
    const a = m.forwardLastLogits(tc.tensor([[6]], { dtype: 'int32' }), one).toArray() as Float32Array;
    const b = m.forwardLastLogits(tc.tensor([[1]], { dtype: 'int32' }), two).toArray() as Float32Array;
    expectClose(batched.slice(0, a.length), a, 1e-5);
    expectClose(batched.slice(a.length), b, 1e-5);
  });

  it('the quantized embedding lookup equals dequantize of the rows', () => {
    const m = Qwen2Model.load(`${FIXTURES_DIR}models/qwen2-tiny-4bit`);
    const ids = tc.tensor([[0, 5, m.config.vocabSize - 1]], { dtype: 'int32' });
    const got = m.embedding.forward(ids);
    expect(got.shape).toEqual([1, 3, m.config.hiddenSize]);
    const md = tc.openModelDir(`${FIXTURES_DIR}models/qwen2-tiny-4bit`);
    const table = tc.dequantize(md.quantizedWeight('model.embed_tokens'));
    const want = tc.take(table, tc.tensor([0, 5, m.config.vocabSize - 1], { dtype: 'int32' }));
    expectClose(got.toArray(), want.toArray(), 0);
  });
});
