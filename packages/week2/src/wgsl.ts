// Your week 2 WGSL kernels (wgsl/*.wgsl), read and compiled once. Given: the chapters' work is in the .wgsl
// files.
//
// A stub kernel file starts with a line `// NotImplemented(chapter 2.3)`: while that line is there, loading the
// kernel throws the chapter's NotImplemented, so its tests say "not started" instead of failing on an empty
// kernel. Delete the line when you start writing the kernel.
import { readFileSync } from 'node:fs';
import * as tc from '@tiny-llm/tensor-core';
import { NotImplemented } from '@tiny-llm/week1/not-implemented';

const STUB_MARKER = /^\/\/ NotImplemented\(chapter (\d\.\d)\)/m;
const kernels = new Map<string, tc.WgslKernel>();

/** The kernel of wgsl/<file> (its entry point `main`), compiled at its first run. */
export function week2Kernel(file: string): tc.WgslKernel {
  const cached = kernels.get(file);
  if (cached) return cached;
  const source = readFileSync(new URL(`../wgsl/${file}`, import.meta.url), 'utf8');
  const stub = STUB_MARKER.exec(source);
  if (stub) throw new NotImplemented(stub[1], `the kernel wgsl/${file}`);
  const kernel = new tc.WgslKernel(file.replace(/\.wgsl$/, ''), source);
  kernels.set(file, kernel);
  return kernel;
}
