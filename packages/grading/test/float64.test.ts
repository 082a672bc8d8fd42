// The float64 references are goldens of their own (for the cases the fixtures lack) and the source of the
// diagnoses: they must reproduce the fixtures, which PyTorch computed in float64, to ~float64 precision.
import * as tc from '@tiny-llm/tensor-core';
import { goldenOp } from '@tiny-llm/tensor-core/testing';
import { describe, expect, it } from 'vitest';
import { expectValues, float64 as f64, goldenModel, topTwo } from '../src/index.ts';

const nd = f64.toND;

describe('float64 references reproduce the fixtures', () => {
  it('softmax (every case)', () => {
    const f = goldenOp('softmax');
    expect(f.cases.length).toBeGreaterThan(0);
    for (const c of f.cases) {
      const out = f.get(c, 'out');
      // The 'stable' inputs near 1000 are stored as float32 (1000 +- 6e-5), rounded after PyTorch's float64 pass.
      expectValues(f64.softmax(nd(f.get(c, 'x')), c.axis as number).data, out.toArray(), out.shape, { atol: 1e-5, what: c.name });
    }
  });

  it('attention, with and without masks and scales (every case)', () => {
    const f = goldenOp('attention');
    for (const c of f.cases) {
      const [q, k, v] = ['q', 'k', 'v'].map((n) => nd(f.get(c, n)));
      const mask = c.mask === 'tensor' ? nd(f.get(c, 'mask')) : undefined;
      const out = f.get(c, 'out');
      expectValues(f64.attention(q, k, v, { scale: c.scale as number | undefined, mask }).data, out.toArray(), out.shape, {
        atol: 1e-6,
        what: c.name,
      });
    }
  });

  it('grouped-query attention, causal masks (every case)', () => {
    const f = goldenOp('gqa');
    for (const c of f.cases) {
      const [q, k, v] = ['q', 'k', 'v'].map((n) => nd(f.get(c, n)));
      const mask = c.mask === 'tensor' ? nd(f.get(c, 'mask')) : c.mask === 'causal' ? ('bottom-right' as const) : undefined;
      const out = f.get(c, 'out');
      const got = f64.attention(q, k, v, { scale: c.scale as number | undefined, mask, kvHeadOf: f64.groupedHead });
      expectValues(got.data, out.toArray(), out.shape, { atol: 1e-6, what: c.name });
    }
    const masks = goldenOp('causal_mask');
    for (const c of masks.cases) {
      expect(Array.from(f64.causalMask(c.L as number, c.S as number).data)).toEqual(Array.from(masks.get(c, 'out').toArray()));
    }
  });

  it('RoPE, both conventions, one offset or one per row (every case)', () => {
    const f = goldenOp('rope');
    for (const c of f.cases) {
      const x = nd(f.get(c, 'x'));
      const offsets = [c.offset as number | number[]].flat();
      const rows = offsets.length === 1 ? new Array<number>(x.shape[0]).fill(offsets[0]) : offsets;
      const out = f.get(c, 'out');
      const got = f64.rope(x, { base: c.base as number, traditional: c.traditional as boolean, offsets: rows });
      expectValues(got.data, out.toArray(), out.shape, { atol: 1e-6, what: c.name });
    }
  });

  it('RMSNorm and the MLP (every case)', () => {
    const norms = goldenOp('rms_norm');
    for (const c of norms.cases) {
      const out = norms.get(c, 'out');
      const got = f64.rmsNorm(nd(norms.get(c, 'x')), nd(norms.get(c, 'weight')), c.eps as number);
      expectValues(got.data, out.toArray(), out.shape, { atol: 1e-5, rtol: 1e-6, what: c.name });
    }
    const mlps = goldenOp('mlp');
    for (const c of mlps.cases) {
      const out = mlps.get(c, 'out');
      const got = f64.mlp(nd(mlps.get(c, 'x')), nd(mlps.get(c, 'w_gate')), nd(mlps.get(c, 'w_up')), nd(mlps.get(c, 'w_down')));
      expectValues(got.data, out.toArray(), out.shape, { atol: 1e-6, what: c.name });
    }
  });
});

describe('the float64 model reproduces the fixture models', () => {
  for (const name of ['qwen2-tiny', 'qwen2-tiny-untied', 'qwen2-tiny-bf16', 'qwen2-tiny-4bit', 'qwen3-tiny']) {
    it(`${name}: every layer of prompt 0, every prompt's logits, and the greedy tokens it leads with`, () => {
      const model = goldenModel(name);
      const float64 = model.float64();
      for (let l = 0; l < model.numLayers; l++) {
        const input = nd(tc.expandDims(model.layerIn(l), 0));
        const out = model.layerOut(l);
        expectValues(float64.layer(l, input).data, out.toArray(), out.shape, { atol: 1e-5, what: `layer ${l}` });
      }
      for (const p of model.prompts) {
        expectValues(float64.logits(p.ids).data, p.logits.toArray(), p.logits.shape, { atol: 1e-5, what: `prompt ${p.index}` });
        // Along the golden continuation, the float64 argmax is the golden token (or a near-tie).
        const sequence = [...p.ids, ...p.greedy];
        const logits = float64.logits(sequence.slice(0, -1));
        const vocab = float64.config.vocabSize;
        p.greedy.forEach((token, t) => {
          const position = p.ids.length - 1 + t;
          const { best, margin } = topTwo(logits.data.subarray(position * vocab, (position + 1) * vocab));
          if (margin > 1e-6) expect(best, `prompt ${p.index}, greedy token ${t}`).toBe(token);
        });
      }
    });
  }
});
