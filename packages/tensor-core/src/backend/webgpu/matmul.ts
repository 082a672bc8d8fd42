// Matrix products on the GPU (kernels/matmul.wgsl): the tiled kernel and, for at most MAX_ROWS rows (a decode
// step's), the GEMV kernel that streams the weights once. Both take a dense b of any float dtype
// and strides, or an MLX-quantized weight.
import { unsupported } from '../backend.ts';
import { isFloating } from '../../dtype.ts';
import { sizeOf } from '../../shape.ts';
import type { GpuRuntime } from './runtime.ts';
import { kernel } from './shader.ts';
import { coalesce, describe, walkParams, type View } from './views.ts';

/** An MLX-quantized weight W [N, K] as views: packed words [N, K * bits / 32], scales and biases [N, K / groupSize]. */
export interface QuantizedViews {
  words: View;
  scales: View;
  biases: View;
  bits: number;
  groupSize: number;
}

type BOperand = { dense: View } | { quantized: QuantizedViews };

/** a [...batch, M, K] @ b [...batch, K, N] -> out float32 [...batch, M, N]; batch dims already broadcast. */
export function matmul(rt: GpuRuntime, a: View, b: View, out: View): void {
  if (!isFloating(a.dtype) || !isFloating(b.dtype) || out.dtype !== 'float32') {
    throw unsupported('webgpu', `matmul of ${a.dtype} and ${b.dtype} into ${out.dtype}`);
  }
  run(rt, 'matmul', a, { dense: b }, out);
}

/** x [M, K] @ W.T -> out float32 [M, N] for a quantized W [N, K]; scales and biases contiguous, at one offset. */
export function quantizedMatmul(rt: GpuRuntime, x: View, w: QuantizedViews, out: View): void {
  run(rt, 'quantizedMatmul', x, { quantized: w }, out);
}

function run(rt: GpuRuntime, op: string, a: View, b: BOperand, out: View): void {
  const nd = out.shape.length;
  const [M, N] = [out.shape[nd - 2], out.shape[nd - 1]];
  const K = a.shape[a.shape.length - 1];
  const batchShape = out.shape.slice(0, nd - 2);
  if (M * N * sizeOf(batchShape) === 0) return;
  const dense = 'dense' in b ? b.dense : null;
  const quantized = 'quantized' in b ? b.quantized : null;
  // Batch dims: the strides of a, b and out over out's batch dims (b has none when quantized), merged.
  const batchStrides = (v: View | null) => (v ? v.strides.slice(0, v.strides.length - 2) : batchShape.map(() => 0));
  const batch = coalesce(batchShape, [a, dense, out].map(batchStrides));
  const walk = walkParams(op, batch, () => `the batch of ${describe(out)}`);
  const matrix = (v: View | null) => (v ? v.strides.slice(v.strides.length - 2) : [0, 0]);
  const params = {
    m: M,
    n: N,
    k: K,
    offsets: [a.offset, (dense ?? quantized!.words).offset, out.offset, quantized?.scales.offset ?? 0],
    a_strides: matrix(a),
    b_strides: matrix(dense),
    out_strides: matrix(out),
    batch_shape: walk.shape,
    batch_strides: walk.strides,
  };
  const groupScales = quantized?.scales ?? dense!;
  const operands = {
    dtypes: { a: a.dtype, b: (dense ?? quantized!.words).dtype, scales: groupScales.dtype, biases: groupScales.dtype },
    buffers: {
      a: a.buffer,
      b: (dense ?? quantized!.words).buffer,
      scales: groupScales.buffer,
      biases: (quantized?.biases ?? dense!).buffer,
      out: out.buffer,
    },
    params,
  };
  const module = kernel('matmul');
  const gemv = M <= module.constant('MAX_ROWS');
  const format = readFormat(dense, K, gemv);
  const shared = {
    B_FORMAT: module.constant(format),
    BITS: quantized?.bits ?? 4,
    GROUP_SIZE: quantized?.groupSize ?? 32,
    NBATCH: walk.ndim,
  };
  const nBatch = sizeOf(batchShape);

  if (gemv) {
    const wg = Math.min(256, rt.invocations);
    // Enough invocations per column to cover its chunks, at most 32; a power of two for the tree sum.
    const chunks = K / (format === 'FORMAT_QUANTIZED' ? 32 : format === 'FORMAT_HALF_WORDS' ? 2 : 1);
    const tpc = Math.min(32, wg, 2 ** Math.ceil(Math.log2(Math.max(chunks, 1))));
    rt.dispatch(op, module, {
      ...operands,
      entryPoint: 'gemv',
      constants: { ...shared, WG: wg, TPC: tpc, ROWS: 2 ** Math.ceil(Math.log2(M)), B_BF16: Number(dense?.dtype === 'bfloat16') },
      workgroups: rt.grid(Math.ceil(N / (wg / tpc)), nBatch),
    });
    return;
  }
  // 16x16 invocations of 4x4 outputs (64x64 tiles) where the device allows 256 invocations; 8x8 (32x32
  // tiles) otherwise, e.g. the 128-invocation default of the compatibility (GLES) feature level.
  const wide = rt.invocations >= 256 && rt.limits.maxComputeWorkgroupSizeY >= 16;
  const threads = wide ? 16 : 8;
  const tile = threads * 4;
  rt.dispatch(op, module, {
    ...operands,
    constants: { ...shared, WX: threads, WY: threads, BK: 16 },
    workgroups: [Math.ceil(N / tile), Math.ceil(M / tile), nBatch],
  });
}

/**
 * How the kernels read b: quantized; for the GEMV, half-precision rows with stride 1 that start on a word a
 * word (two values) at a time; else element by element.
 */
function readFormat(dense: View | null, K: number, gemv: boolean): 'FORMAT_ELEMENTS' | 'FORMAT_HALF_WORDS' | 'FORMAT_QUANTIZED' {
  if (!dense) return 'FORMAT_QUANTIZED';
  const [sK, sN] = dense.strides.slice(-2);
  const half = dense.dtype === 'bfloat16' || dense.dtype === 'float16';
  const batchEven = dense.strides.slice(0, -2).every((s) => s % 2 === 0);
  const wordRows = sK === 1 && K % 2 === 0 && sN % 2 === 0 && dense.offset % 2 === 0 && batchEven;
  return gemv && half && wordRows ? 'FORMAT_HALF_WORDS' : 'FORMAT_ELEMENTS';
}
