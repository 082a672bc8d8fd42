// The GPU the WebGPU test files run on: whatever adapter initWebGPU finds (here and in CI, Mesa's software
// GLES). There is no skip: without an adapter every test fails with initWebGPU's message.
import { afterAll, beforeAll, beforeEach } from 'vitest';
import * as tc from '../src/index.ts';

/** Registers the suite's set-up and returns the backend (valid inside tests). */
export function useGpu(): () => tc.WebGPUBackend {
  let gpu: tc.WebGPUBackend | null = null;
  let initError: unknown = null;
  beforeAll(async () => {
    try {
      gpu = await tc.initWebGPU();
    } catch (err) {
      initError = err;
    }
  });
  beforeEach(() => {
    if (initError) throw initError;
  });
  afterAll(() => gpu?.destroy());
  return () => gpu!;
}
