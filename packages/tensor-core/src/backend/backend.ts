// The backend interface: the kernels every device implements. Ops (src/ops/*) check shapes and dtypes,
// allocate the output, and call exactly one of these; a backend never sees an invalid argument.
import type { DType, StorageArray } from '../dtype.ts';
import type { QuantizedWeight } from '../io/quantized.ts';
import type { Tensor } from '../tensor.ts';

/** A block of device memory. Tensors are views onto one; `refs` counts the live tensors that share it. */
export interface Storage {
  readonly backend: Backend;
  readonly byteLength: number;
  refs: number;
  released: boolean;
}

export type UnaryOp = 'copy' | 'neg' | 'exp' | 'log' | 'sqrt' | 'rsqrt' | 'sigmoid' | 'silu' | 'abs' | 'tanh' | 'cos' | 'sin';
export type BinaryOp = 'add' | 'sub' | 'mul' | 'div' | 'maximum' | 'minimum' | 'pow' | 'equal' | 'less' | 'greater';
export type ReduceOp = 'sum' | 'max' | 'min' | 'argmax' | 'logsumexp';

export const UNARY_OPS: readonly UnaryOp[] = ['copy', 'neg', 'exp', 'log', 'sqrt', 'rsqrt', 'sigmoid', 'silu', 'abs', 'tanh', 'cos', 'sin'];
export const BINARY_OPS: readonly BinaryOp[] = ['add', 'sub', 'mul', 'div', 'maximum', 'minimum', 'pow', 'equal', 'less', 'greater'];
export const REDUCE_OPS: readonly ReduceOp[] = ['sum', 'max', 'min', 'argmax', 'logsumexp'];

/**
 * Conventions for every kernel: `out` is allocated by the op on this backend and is written whole;
 * inputs are views of any strides (0 for broadcast dimensions), already broadcast to the shape the kernel
 * expects. Elementwise kernels compute in float32 for float dtypes (float64 for integer ones) and convert
 * on load and store.
 */
export interface Backend {
  readonly name: string;

  allocate(dtype: DType, size: number): Storage;
  /** Copies host data (in storage form: bf16/f16 as raw 16-bit words) into new device memory. */
  upload(data: StorageArray): Storage;
  /** Returns the storage back to the backend; tensors must not use it afterwards. */
  release(storage: Storage): void;
  /** The logical values of `x`, contiguous, in storage form. Works on every backend. */
  read(x: Tensor): Promise<StorageArray>;
  /** Same as `read`, synchronously; only backends whose memory the CPU can see implement it. */
  readSync?(x: Tensor): StorageArray;

  /** out = op(x), elementwise; with 'copy' it converts dtypes and may write a strided `out`. */
  unary(op: UnaryOp, x: Tensor, out: Tensor): void;
  /** out = op(a, b), elementwise; a and b have out's shape (broadcast with stride 0). */
  binary(op: BinaryOp, a: Tensor, b: Tensor, out: Tensor): void;
  /** out = cond ? a : b, elementwise; all three have out's shape. */
  where(cond: Tensor, a: Tensor, b: Tensor, out: Tensor): void;
  /** Reduces the last axis of x: out has x's shape without it. argmax writes int32. */
  reduce(op: ReduceOp, x: Tensor, out: Tensor): void;
  /** Numerically stable softmax over the last axis (float32 accumulation). */
  softmax(x: Tensor, out: Tensor): void;
  /** Inclusive prefix sum over the last axis. */
  cumsum(x: Tensor, out: Tensor): void;
  /** Indices (int32) that sort the last axis of x; stable. */
  argsort(x: Tensor, out: Tensor, descending: boolean): void;
  /** a [...batch, M, K] @ b [...batch, K, N] -> out float32 [...batch, M, N]; batch dims already broadcast. */
  matmul(a: Tensor, b: Tensor, out: Tensor): void;
  /**
   * out[i, ...] = table[indices[i], ...]: rows of a table (embeddings). indices are contiguous int32/uint32;
   * the kernel checks their range (a GPU reports a bad one at the next read).
   */
  take(table: Tensor, indices: Tensor, out: Tensor): void;
  /** out[..., j] = x[..., indices[..., j]] along the last axis; x and indices share their other dims. */
  takeAlongAxis(x: Tensor, indices: Tensor, out: Tensor): void;

  /** Fused kernels (ops/fast.ts). */
  rmsNorm(x: Tensor, weight: Tensor, eps: number, out: Tensor): void;
  rope(x: Tensor, cos: Tensor, sin: Tensor, positions: Tensor, traditional: boolean, out: Tensor): void;
  /** out float32 [M, N] = x [M, K] @ dequantize(w).T for an MLX-quantized weight w of logical shape [N, K]. */
  quantizedMatmul(x: Tensor, w: QuantizedWeight, out: Tensor): void;
  /**
   * out float32 [...w.shape] = the values w stands for. Optional: the CPU's tc.dequantize computes them in
   * io/quantized.ts; a backend that holds quantized weights provides it so that they need not come back.
   */
  dequantize?(w: QuantizedWeight, out: Tensor): void;
  /**
   * softmax(q k^T * scale + mask) v in one kernel, for q [..., Hq, L, D] and k, v [..., Hkv, S, D] with q's
   * leading dims; mask is an additive view of shape [..., Hq, L, S], 'causal' (aligned to the bottom right)
   * or null. Optional: without it, fast.sdpa composes matmul and softmax.
   */
  sdpa?(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | 'causal' | null, scale: number, out: Tensor): void;
}

/** A kernel a backend does not have, naming the op; a program may catch it to say what to run instead. */
export class UnsupportedOpError extends Error {
  constructor(
    readonly backend: string,
    readonly op: string,
  ) {
    super(`${op}: not implemented on the ${backend} backend (move the tensor to the CPU with toCPU())`);
    this.name = 'UnsupportedOpError';
  }
}

/** The error a backend throws for a kernel it does not have. */
export function unsupported(backend: string, op: string): Error {
  return new UnsupportedOpError(backend, op);
}

/** A buffer, binding or grid beyond what the device allows, naming the limit (e.g. maxBufferSize). */
export class DeviceLimitError extends RangeError {
  constructor(
    message: string,
    readonly limit: string,
  ) {
    super(message);
    this.name = 'DeviceLimitError';
  }
}
