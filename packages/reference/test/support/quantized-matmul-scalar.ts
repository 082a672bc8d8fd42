// Run by test/quantized-matmul.test.ts in a child process with TINY_LLM_NO_SIMD=1 (the SIMD choice is made
// once per process): prints the kernels in use and the scaled error of each case, as JSON.
import { quantizedMatmul } from '../../src/week2/quantized-matmul.ts';
import { referenceKernels } from '../../src/native.ts';
import { makeProblem, reference, scaledError } from './quantized-matmul-cases.ts';

const results: { name: string; error: number }[] = [];
for (const bits of [2, 3, 4, 5, 6, 8]) {
  for (const [m, group] of [[1, 32], [5, 64], [37, 128]]) {
    const p = makeProblem(m, 45, 256, bits, group, { xDtype: m === 5 ? 'bfloat16' : 'float32', scaleDtype: 'float16' });
    const y = quantizedMatmul(p.x, p.w);
    results.push({ name: `${bits}-bit g${group} M=${m}`, error: scaledError(y.toArray(), reference(p)) });
  }
}
console.log(JSON.stringify({ simd: referenceKernels().cpuFeatures().simd, results }));
