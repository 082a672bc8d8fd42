// @tiny-llm/tensor-core: tensors, ops in the style of numpy/MLX, a native CPU backend and a WebGPU backend.
export { Tensor, type NativeView } from './tensor.ts';
export { DTYPES, isFloating, itemSize, promoteTypes, type DType } from './dtype.ts';
export { broadcastShapes, formatShape, sizeOf } from './shape.ts';
export { tidy, keep } from './scope.ts';
export { DeviceLimitError, UnsupportedOpError, type Backend, type Storage } from './backend/backend.ts';
export { cpu, type MatmulPrecision, type MemoryInfo } from './backend/cpu.ts';
export { native, loadBuiltAddon } from './native.ts';
export { extensionGetter, loadExtension, recordNativeCalls, type NativeCall } from './extension.ts';
export { CpuGraph } from './backend/cpu-graph.ts';
export { cpuFeatures, SIMD_LEVELS, type CpuFeatures, type SimdLevel } from './cpu-features.ts';
export { getDefaultBackend, setDefaultBackend, empty } from './ops/util.ts';

export { tensor, full, zeros, ones, arange, toDevice, toCPU, type CreateOptions } from './ops/creation.ts';
export {
  add,
  sub,
  mul,
  div,
  neg,
  exp,
  log,
  sqrt,
  rsqrt,
  sigmoid,
  silu,
  maximum,
  minimum,
  where,
  equal,
  less,
  greater,
  abs,
  tanh,
  cos,
  sin,
  pow,
  astype,
  contiguous,
} from './ops/elementwise.ts';
export { sum, mean, max, min, argmax, logsumexp, softmax, cumsum, argsort, sort, topk, takeAlongAxis } from './ops/reduce.ts';
export { matmul, take, tril, triu } from './ops/linalg.ts';
export {
  reshape,
  transpose,
  swapaxes,
  moveaxis,
  expandDims,
  squeeze,
  broadcastTo,
  slice,
  concat,
  stack,
  split,
  type SliceSpec,
} from './ops/shape.ts';
export * as random from './ops/random.ts';
export * as fast from './ops/fast.ts';

export {
  readSafetensors,
  loadSafetensors,
  saveSafetensors,
  openCheckpoint,
  SafetensorsFile,
  Checkpoint,
  type TensorInfo,
} from './io/safetensors.ts';
export {
  openModelDir,
  parseModelConfig,
  readModelConfig,
  ModelDir,
  SUPPORTED_MODEL_TYPES,
  type ModelDirOptions,
  type ModelConfig,
  type ModelType,
  type MoeConfig,
  type QuantizationConfig,
  type LinearWeights,
} from './io/model-dir.ts';
export { QuantizedWeight, dequantize, quantize, type QuantizeOptions } from './io/quantized.ts';

import { readSafetensors } from './io/safetensors.ts';
/** One tensor of a safetensors file (a view over the mapped file when its data is aligned). */
export function fromSafetensors(path: string, name: string) {
  return readSafetensors(path).get(name);
}

// The GPU backend; `webgpu` (Dawn) is loaded only when initWebGPU is called.
export {
  initWebGPU,
  WebGPUBackend,
  GpuStorage,
  WgslKernel,
  type WebGPUOptions,
  type KernelArgs,
  type ParamValues,
} from './backend/webgpu/index.ts';
