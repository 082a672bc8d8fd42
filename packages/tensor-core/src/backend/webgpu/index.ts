// The WebGPU backend: device set-up (device.ts), the backend (backend.ts) and its kernels (one file per op
// family, WGSL in kernels/), and what other packages need to run WGSL kernels of their own.
export { initWebGPU, type WebGPUOptions } from './device.ts';
export { WebGPUBackend, GpuStorage, type WebGPUBackendOptions } from './backend.ts';
export { WgslKernel, type ParamValues } from './shader.ts';
export type { KernelArgs } from './extension.ts';
