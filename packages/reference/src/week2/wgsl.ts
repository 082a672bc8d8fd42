// The reference solutions of week 2's WGSL kernels (packages/reference/wgsl/week2), read and compiled once.
import { readFileSync } from 'node:fs';
import * as tc from '@tiny-llm/tensor-core';

const kernels = new Map<string, tc.WgslKernel>();

/** The kernel of wgsl/week2/<file> (its entry point `main`), compiled at its first run. */
export function week2Kernel(file: string): tc.WgslKernel {
  let kernel = kernels.get(file);
  if (!kernel) {
    kernel = new tc.WgslKernel(file.replace(/\.wgsl$/, ''), readFileSync(new URL(`../../wgsl/week2/${file}`, import.meta.url), 'utf8'));
    kernels.set(file, kernel);
  }
  return kernel;
}
