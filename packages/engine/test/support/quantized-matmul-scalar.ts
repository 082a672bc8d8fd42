// Run by test/quantized-matmul.test.ts in a child process with TINY_LLM_NO_SIMD=1 (the SIMD choice is made
// once per process): prints the kernels in use and the scaled error of each case, as JSON.
import * as tc from '@tiny-llm/tensor-core';
import { FIXTURES_DIR } from '@tiny-llm/tensor-core/testing';
import { quantizedMatmul } from '../../src/model/quantized-matmul.ts';
import { Qwen2Model } from '../../src/model/qwen2.ts';
import { engineKernels } from '../../src/model/native.ts';
import { EXACT, fusedCase, makeProblem, reference, scaledError } from './quantized-matmul-cases.ts';

const results: { name: string; error: number }[] = [];
for (const bits of [2, 3, 4, 5, 6, 8]) {
  for (const [m, group] of [
    [1, 32],
    [5, 64],
    [37, 128],
  ]) {
    const p = makeProblem(m, 45, 256, bits, group, { xDtype: m === 5 ? 'bfloat16' : 'float32', scaleDtype: 'float16' });
    const y = quantizedMatmul(p.x, p.w, EXACT);
    results.push({ name: `${bits}-bit g${group} M=${m}`, error: scaledError(y.toArray(), reference(p)) });
  }
}
// The fused prologues and epilogues (native/fusion.cc), scalar.
for (const kinds of [
  ['norm', 'bias', 'residual'],
  ['swiglu', 'residual'],
]) {
  for (const [bits, m] of [
    [4, 1],
    [3, 3],
    [8, 37],
  ]) {
    const c = fusedCase(m, 45, 256, bits, 64, kinds, m + bits);
    const y = quantizedMatmul(c.x, c.w, { bias: c.bias, residual: c.residual, norm: c.norm, swiglu: c.swiglu, ...EXACT });
    results.push({ name: `${bits}-bit M=${m} ${kinds.join('+')}`, error: scaledError(y.toArray(), c.expected) });
  }
}
// The decode attention kernel (native/attention_decode.cc), scalar: fused decode steps against composed ones.
for (const name of ['qwen2-tiny-4bit', 'qwen3-tiny']) {
  const dir = `${FIXTURES_DIR}models/${name}`;
  const fused = Qwen2Model.load(dir, EXACT);
  const composed = Qwen2Model.load(dir, { fusedKernels: false, ...EXACT });
  const cf = fused.newCache();
  const cc = composed.newCache();
  const prompt = tc.tensor([[3, 17, 5, 42]], { dtype: 'int32' });
  fused.forward(prompt, cf);
  composed.forward(prompt, cc);
  let error = 0;
  for (const id of [8, 11, 2]) {
    const step = tc.tensor([[id]], { dtype: 'int32' });
    error = Math.max(error, scaledError(fused.forwardLastLogits(step, cf).toArray(), composed.forwardLastLogits(step, cc).toArray()));
  }
  results.push({ name: `${name}: fused decode steps`, error });
}
console.log(JSON.stringify({ simd: engineKernels().cpuFeatures().simd, results }));
