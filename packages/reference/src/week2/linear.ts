// The layers of the week 2 engine that hold weights: a linear layer over a weight kept in its file dtype
// (float32, bf16, f16, or MLX-quantized), and the gated MLP built from three of them.
//
// Unlike week 1, nothing is converted at load time. A half-precision weight W (out, in) is handed to matmul as
// the transposed view W.T, built once here: the kernel reads W's rows in place and widens them to float32 in
// registers, so decode streams the 2-byte weights from memory exactly once and no float32 copy ever exists. An
// MLX-quantized weight goes to quantizedMatmul (chapter 2.2), which dequantizes inside its kernel.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { quantizedMatmul } from './quantized-matmul.ts';

/** A weight as a checkpoint holds it: a plain tensor in its file dtype, or an MLX-quantized one. */
export type Weight = Tensor | tc.QuantizedWeight;

/** Throws unless `w` is a weight of logical shape `shape`; `name` says which. */
export function expectWeightShape(name: string, w: Weight, shape: readonly number[]): void {
  const got = w.shape;
  if (got.length !== shape.length || got.some((d, i) => d !== shape[i])) {
    const what = w instanceof tc.QuantizedWeight ? w.toString() : w.describe();
    throw new RangeError(`${name}: expected a weight of shape ${tc.formatShape(shape)}, got ${what}`);
  }
}

/**
 * Fusing weights that read the same input into one matrix (q/k/v; an MLP's gate and up) turns several decode
 * matmuls, bias adds and RoPE calls into one each: per-token op overhead matters as much as bandwidth on small
 * models. Where the checkpoint stores the parts back to back (gate_proj then up_proj, in Hugging Face files)
 * the fused matrix is a view of the mapped file; otherwise the parts are copied together, in their file dtype,
 * when the fused matrix is at most this large (a one-time copy at load; bigger ones stay separate).
 */
export const FUSE_COPY_MAX_BYTES = 64 * 1024 * 1024;

/**
 * The row-wise concatenation of weights [out_i, in] -> [sum out_i, in] (same dtype, or same quantization), or
 * null when they cannot be fused (mixed kinds, or too large to copy).
 */
export function fuseWeights(parts: readonly Weight[], maxCopyBytes = FUSE_COPY_MAX_BYTES): Weight | null {
  if (parts.length === 0) return null;
  if (parts.length === 1) return parts[0];
  const first = parts[0];
  if (first.shape.length !== 2 || parts.some((w) => w.shape.length !== 2 || w.shape[1] !== first.shape[1])) return null;
  if (first instanceof tc.QuantizedWeight) {
    const qs = parts as tc.QuantizedWeight[];
    const same = qs.every(
      (q) => q instanceof tc.QuantizedWeight && q.bits === first.bits && q.groupSize === first.groupSize && q.scales.dtype === first.scales.dtype,
    );
    if (!same) return null;
    const bytes = qs.reduce((n, q) => n + q.weight.size * 4 + q.scales.size * 4, 0);
    if (bytes > maxCopyBytes) return null;
    return new tc.QuantizedWeight(
      tc.keep(tc.concat(qs.map((q) => q.weight), 0)),
      tc.keep(tc.concat(qs.map((q) => q.scales), 0)),
      tc.keep(tc.concat(qs.map((q) => q.biases), 0)),
      first.groupSize,
      first.bits,
    );
  }
  const ts = parts as Tensor[];
  if (!ts.every((t) => t instanceof tc.Tensor && t.dtype === first.dtype && tc.isFloating(t.dtype))) return null;
  const adjacent = adjacentView(ts);
  if (adjacent) return adjacent;
  const bytes = ts.reduce((n, t) => n + t.size * tc.itemSize(t.dtype), 0);
  if (bytes > maxCopyBytes) return null;
  return tc.keep(tc.concat(ts, 0));
}

/**
 * One tensor over the parts when they lie back to back in one mapped file (or other wrapped CPU memory), else
 * null. Pooled buffers are left alone: the pool may hand them out again once their tensors are disposed.
 */
function adjacentView(ts: readonly Tensor[]): Tensor | null {
  type Cpu = { buffer?: ArrayBuffer; byteOffset?: number; pooled?: boolean };
  const size = tc.itemSize(ts[0].dtype);
  const buffer = (ts[0].storage as Cpu).buffer;
  if (!buffer || ts[0].backend !== tc.cpu) return null;
  const start = (t: Tensor) => ((t.storage as Cpu).byteOffset ?? 0) + t.offset * size;
  let end = start(ts[0]);
  for (const t of ts) {
    const storage = t.storage as Cpu;
    if (storage.buffer !== buffer || storage.pooled !== false || !t.isContiguous || start(t) !== end) return null;
    end += t.size * size;
  }
  const rows = ts.reduce((n, t) => n + t.shape[0], 0);
  return new tc.Tensor(tc.cpu.wrap(buffer, start(ts[0]), end - start(ts[0])), ts[0].dtype, [rows, ts[0].shape[1]]);
}

/** x @ W.T + b, for any weight a checkpoint may hold. Output float32. */
export class Linear {
  readonly inFeatures: number;
  readonly outFeatures: number;
  /** The dense weight's transposed view [in, out] (null when quantized). */
  private readonly wT: Tensor | null;
  private readonly quantized: tc.QuantizedWeight | null;
  /** The bias as float32 (a vector of `out` values: widened once, it costs nothing). */
  readonly bias: Tensor | null;

  constructor(weight: Weight, bias: Tensor | null = null, readonly name = 'Linear') {
    if (weight.shape.length !== 2) {
      const what = weight instanceof tc.QuantizedWeight ? weight.toString() : weight.describe();
      throw new RangeError(`${name}: expected a 2-D weight [out, in], got ${what}`);
    }
    [this.outFeatures, this.inFeatures] = weight.shape;
    if (weight instanceof tc.QuantizedWeight) {
      this.quantized = weight;
      this.wT = null;
    } else {
      if (!tc.isFloating(weight.dtype)) throw new TypeError(`${name}: the weight must be floating point, got ${weight.describe()}`);
      this.quantized = null;
      this.wT = tc.keep(tc.transpose(weight));
    }
    if (bias) {
      if (bias.ndim !== 1 || bias.shape[0] !== this.outFeatures) {
        throw new RangeError(`${name}: expected a bias of shape [${this.outFeatures}], got ${bias.describe()}`);
      }
      this.bias = tc.keep(bias.dtype === 'float32' ? bias : tc.astype(bias, 'float32'));
    } else {
      this.bias = null;
    }
  }

  get isQuantized(): boolean {
    return this.quantized !== null;
  }

  /** x [..., in] (float32) -> [..., out] float32. */
  forward(x: Tensor): Tensor {
    if (x.shape[x.ndim - 1] !== this.inFeatures) {
      throw new RangeError(`${this.name}: expected x of shape [..., ${this.inFeatures}], got ${x.describe()}`);
    }
    const y = this.quantized ? quantizedMatmul(x, this.quantized) : tc.matmul(x, this.wT!);
    if (!this.bias) return y;
    const out = tc.add(y, this.bias);
    y.dispose();
    return out;
  }
}

/** The gated MLP of Qwen2: down(silu(gate(x)) * up(x)). */
export class GatedMlp {
  readonly hiddenDim: number;
  /** gate and up fused into one [2 * hidden, dim] projection when possible (see fuseWeights), else null. */
  readonly gateUp: Linear | null;
  readonly gate: Linear | null;
  readonly up: Linear | null;
  readonly down: Linear;

  /**
   * options.fuse: false keeps gate and up apart; options.maxCopyBytes: the largest fused matrix worth a copy
   * (0: fuse only where the checkpoint already stores gate and up back to back).
   */
  constructor(gate: Weight, up: Weight, down: Weight, name = 'mlp', options: { fuse?: boolean; maxCopyBytes?: number } = {}) {
    const [hidden, dim] = gate.shape;
    expectWeightShape(`${name}.gate_proj`, gate, [hidden, dim]);
    expectWeightShape(`${name}.up_proj`, up, [hidden, dim]);
    expectWeightShape(`${name}.down_proj`, down, [dim, hidden]);
    this.hiddenDim = hidden;
    const fused = options.fuse === false ? null : fuseWeights([gate, up], options.maxCopyBytes);
    this.gateUp = fused ? new Linear(fused, null, `${name}.gate_up_proj`) : null;
    this.gate = fused ? null : new Linear(gate, null, `${name}.gate_proj`);
    this.up = fused ? null : new Linear(up, null, `${name}.up_proj`);
    this.down = new Linear(down, null, `${name}.down_proj`);
  }

  get inFeatures(): number {
    return this.down.outFeatures;
  }

  /** x [..., dim] -> [..., dim]. */
  forward(x: Tensor): Tensor {
    let g: Tensor;
    let u: Tensor;
    let gu: Tensor | null = null;
    if (this.gateUp) {
      gu = this.gateUp.forward(x); // [..., 2 * hidden]: the gate's outputs, then up's (views of it below)
      const lead = gu.shape.slice(0, -1).map(() => null);
      g = tc.slice(gu, [...lead, [0, this.hiddenDim]]);
      u = tc.slice(gu, [...lead, [this.hiddenDim, 2 * this.hiddenDim]]);
    } else {
      g = this.gate!.forward(x);
      u = this.up!.forward(x);
    }
    const a = tc.silu(g);
    const h = tc.mul(a, u);
    for (const t of [g, u, a]) t.dispose();
    gu?.dispose();
    const out = this.down.forward(h);
    h.dispose();
    return out;
  }
}
