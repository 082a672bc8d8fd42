// The WebGPU backend: device set-up (device.ts), the backend (backend.ts) and its kernels (one file per op
// family, WGSL in kernels/).
export { initWebGPU, type WebGPUOptions } from './device.ts';
export { WebGPUBackend, GpuStorage, type WebGPUBackendOptions } from './backend.ts';
