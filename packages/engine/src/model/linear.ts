// The layers of the week 2 engine that hold weights: a linear layer over a weight kept in its file dtype
// (float32, bf16, f16, or MLX-quantized), and the gated MLP built from three of them.
//
// Unlike week 1, nothing is widened at load time: weights stay in their file dtype. On the CPU a dense weight W
// (out, in) is packed once, here, into panels of 32 outputs (native/dense_panels.cc: the layout its kernels
// multiply fastest, at one row of x and at hundreds), still in its file dtype, and the pages of the mapped file it
// came from are let go; the kernels widen the 2-byte weights to float32 in registers, so decode streams them from
// memory exactly once and no float32 copy ever exists. On another backend (WebGPU) matmul reads the transposed
// view W.T in place. An MLX-quantized weight goes to quantizedMatmul (chapter 2.2), which dequantizes inside its
// kernel, with integer activations unless the layer is built with `exact` (QuantizedMatmulOptions.exact). A 4-bit
// one with integer activations, on a CPU with AVX-512 VNNI, is packed at load into panels of 16 rows instead
// (native/quantized_panels.cc: the same product, in a layout whose kernel multiplies 16 rows per instruction).
//
// forward() can also take the work around the projection (LinearFusion: an RMSNorm or SwiGLU on its input, the
// residual added to its output, and always its bias), done in the same native call: quantizedMatmul's prologue
// and epilogue, or for dense weights panelLinear's (native/fusion.cc). Each of those was a separate op of its own
// per layer and token.
import * as tc from '@tiny-llm/tensor-core';
import type { Tensor } from '@tiny-llm/tensor-core';
import { engineKernels } from './native.ts';
import { quantizedMatmul } from './quantized-matmul.ts';

/** An RMSNorm applied to a layer's input: rmsNorm(x, weight, eps), as tc.fast.rmsNorm. */
export interface InputNorm {
  weight: Tensor;
  eps: number;
}

/**
 * The work around a projection that Linear.forward can fuse into it. On the CPU it is done in the same native call
 * as the matmul (quantizedMatmul's and panelLinear's prologue and epilogue); on another backend the same ops are
 * composed.
 */
export interface LinearFusion {
  /** The input is normalised first (the RMSNorm in front of q/k/v and of the MLP). */
  norm?: InputNorm | null;
  /** The input is [..., 2 * in]: a gate half and an up half, and the layer reads silu(gate) * up. */
  swiglu?: boolean;
  /** Added to the output (the residual stream): the block's `x + layer(...)`. */
  residual?: Tensor | null;
}

/** A weight as a checkpoint holds it: a plain tensor in its file dtype, or an MLX-quantized one. */
export type Weight = Tensor | tc.QuantizedWeight;

/** How layers multiply by quantized weights: `exact` keeps activations in float32 (QuantizedMatmulOptions.exact). */
export interface QuantizedPrecision {
  exact?: boolean;
}

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
      (q) =>
        q instanceof tc.QuantizedWeight &&
        q.bits === first.bits &&
        q.groupSize === first.groupSize &&
        q.scales.dtype === first.scales.dtype,
    );
    if (!same) return null;
    const bytes = qs.reduce((n, q) => n + q.weight.size * 4 + q.scales.size * 4, 0);
    if (bytes > maxCopyBytes) return null;
    return new tc.QuantizedWeight(
      tc.keep(
        tc.concat(
          qs.map((q) => q.weight),
          0,
        ),
      ),
      tc.keep(
        tc.concat(
          qs.map((q) => q.scales),
          0,
        ),
      ),
      tc.keep(
        tc.concat(
          qs.map((q) => q.biases),
          0,
        ),
      ),
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
 * Lets go of `fused` (fuseWeights of `parts`) once `linear` has packed a layout of its own from it: a copy would
 * otherwise wait for the garbage collector, holding those weights twice until then.
 */
export function releaseFused(parts: readonly Weight[], fused: Weight, linear: Linear): void {
  if (!parts.includes(fused) && !linear.readsSourceWeight) fused.dispose();
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
  /** A dense weight on the CPU, packed into panels (packPanels); else null. */
  private readonly panels: Tensor | null;
  /** A dense weight on another backend: its transposed view [in, out]; else null. */
  private readonly wT: Tensor | null;
  private readonly quantized: tc.QuantizedWeight | null;
  /** A 4-bit weight with integer activations on a CPU with AVX-512 VNNI, packed (packQuantizedPanels); else null. */
  private readonly quantizedPanels: QuantizedPanels | null;
  /** The bias as float32 (a vector of `out` values: widened once, it costs nothing). */
  readonly bias: Tensor | null;
  /** A quantized weight multiplies float32 activations (else int16 ones, for 4 and 8 bits). */
  readonly exact: boolean;

  constructor(
    weight: Weight,
    bias: Tensor | null = null,
    readonly name = 'Linear',
    precision: QuantizedPrecision = {},
  ) {
    this.exact = precision.exact === true;
    if (weight.shape.length !== 2) {
      const what = weight instanceof tc.QuantizedWeight ? weight.toString() : weight.describe();
      throw new RangeError(`${name}: expected a 2-D weight [out, in], got ${what}`);
    }
    [this.outFeatures, this.inFeatures] = weight.shape;
    if (weight instanceof tc.QuantizedWeight) {
      this.quantizedPanels = !this.exact && quantizedPanelsSupported(weight) ? packQuantizedPanels(weight) : null;
      this.quantized = this.quantizedPanels ? null : weight;
      this.panels = this.wT = null;
    } else {
      if (!tc.isFloating(weight.dtype)) throw new TypeError(`${name}: the weight must be floating point, got ${weight.describe()}`);
      this.quantized = this.quantizedPanels = null;
      const onCpu = weight.backend === tc.cpu;
      this.panels = onCpu ? tc.keep(packPanels(weight)) : null;
      this.wT = onCpu ? null : tc.keep(tc.transpose(weight));
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

  /**
   * Rows `ids` (int32 [...]) of the weight as float32 [..., in]: the token lookup of an embedding table, which a
   * tied model multiplies as its output head. On the CPU one native call reads (widens, dequantizes) only those
   * rows, from whichever layout the layer keeps; ids must be in range.
   */
  rows(ids: Tensor): Tensor {
    if (this.wT) {
      const table = tc.transpose(this.wT);
      const rows = tc.take(table, ids);
      table.dispose();
      if (rows.dtype === 'float32') return rows;
      const widened = tc.astype(rows, 'float32');
      rows.dispose();
      return widened;
    }
    const out = tc.empty([...ids.shape, this.inFeatures], 'float32');
    const idsc = tc.contiguous(ids);
    const kernels = engineKernels();
    try {
      if (this.panels) {
        kernels.panelRows(this.panels.native(), idsc.native(), out.native());
      } else if (this.quantizedPanels) {
        const { panels, params } = this.quantizedPanels;
        kernels.dequantizePanelRows(panels.native(), params.native(), idsc.native(), out.native());
      } else {
        const q = this.quantized!;
        kernels.dequantizeRows(q.weight.native(), q.scales.native(), q.biases.native(), idsc.native(), out.native(), q.groupSize, q.bits);
      }
    } catch (err) {
      out.dispose();
      throw new Error(`${this.name}: ${(err as Error).message}`);
    } finally {
      if (idsc !== ids) idsc.dispose();
    }
    return out;
  }

  /** Whether forward reads the weight the layer was built from (else a packed layout of its own). */
  get readsSourceWeight(): boolean {
    return this.quantized !== null || this.wT !== null;
  }

  get isQuantized(): boolean {
    return this.quantized !== null || this.quantizedPanels !== null;
  }

  /**
   * x [..., in] (float32) -> [..., out] float32; with fusion.swiglu x is [..., 2 * in]. With fusion: norm first,
   * then the matmul (and bias), then the residual added.
   */
  forward(x: Tensor, fusion?: LinearFusion): Tensor {
    const swiglu = fusion?.swiglu === true;
    const inF = swiglu ? 2 * this.inFeatures : this.inFeatures;
    if (x.shape[x.ndim - 1] !== inF) {
      throw new RangeError(`${this.name}: expected x of shape [..., ${inF}]${swiglu ? ' (gate and up halves)' : ''}, got ${x.describe()}`);
    }
    const norm = fusion?.norm ?? null;
    const residual = fusion?.residual ?? null;
    if (this.quantized) {
      // One native call: the residual is fused when it is a float32 tensor the kernel can read as [rows, out].
      const fuseResidual =
        residual !== null && residual.dtype === 'float32' && residual.isContiguous && residual.size === (x.size / inF) * this.outFeatures;
      const y = quantizedMatmul(x, this.quantized, {
        bias: this.bias,
        norm,
        swiglu,
        residual: fuseResidual ? residual : null,
        exact: this.exact,
      });
      if (!residual || fuseResidual) return y;
      const out = tc.add(residual, y);
      y.dispose();
      return out;
    }
    const fused = { bias: this.bias, norm, swiglu, residual };
    if (this.quantizedPanels) return quantizedPanelLinear(x, this.quantizedPanels, this.name, fused);
    if (this.panels) return panelLinear(x, this.panels, this.outFeatures, this.name, fused);
    return denseLinear(x, this.wT!, this.name, fused);
  }
}

/** Rows of a weight packed at a time (packPanels): about this many bytes of it, in whole panels. */
const PACK_SLICE_BYTES = 16 << 20;

/**
 * A dense weight W [out, in] (any float dtype, any strides) packed for native/dense_panels.cc: [ceil(out / 32), in,
 * 32] of its dtype, the weights of 32 outputs side by side for each input. The pages of the mapped file W was read
 * from, if any, are let go: the panels are what is read from now on. That goes a slice of rows at a time, so that a
 * large matrix (a tied embedding table: 272 MB for Qwen2-0.5B in bf16) and its panels are never both resident.
 */
export function packPanels(weight: Tensor): Tensor {
  const [outF, inF] = weight.shape;
  const panels = tc.empty([Math.ceil(outF / 32), inF, 32], weight.dtype);
  const rowsPerSlice = 32 * Math.max(1, Math.floor(PACK_SLICE_BYTES / (32 * Math.max(1, inF) * tc.itemSize(weight.dtype))));
  for (let r0 = 0; r0 < outF; r0 += rowsPerSlice) {
    const r1 = Math.min(outF, r0 + rowsPerSlice);
    tc.tidy(() => {
      const rows = tc.slice(weight, [[r0, r1]]);
      engineKernels().packPanels(rows.native(), tc.slice(panels, [[r0 / 32, Math.ceil(r1 / 32)]]).native());
      tc.cpu.releaseFilePages(rows);
    });
  }
  return panels;
}

/**
 * x [..., in] @ W.T for a dense weight packed by packPanels (out features `outF`), with LinearFusion's work and the
 * bias in the same native call.
 */
function panelLinear(x: Tensor, panels: Tensor, outF: number, name: string, fusion: LinearFusion & { bias?: Tensor | null } = {}): Tensor {
  const p = panels.native();
  return cpuLinear(x, outF, name, fusion, (xn, out, ...rest) => engineKernels().panelLinear(xn, p, out, ...rest));
}

/** A 4-bit weight as native/quantized_panels.cc multiplies it: the packed values, and each group's scales and biases. */
export interface QuantizedPanels {
  /** uint32 [ceil(out / 16), in / 8, 16]: 8 values of each of 16 rows per 16 words. */
  panels: Tensor;
  /** [ceil(out / 16), in / groupSize, 2, 16] of the scales' dtype: per panel and group, 16 scales then 16 biases. */
  params: Tensor;
  outFeatures: number;
}

/** Whether Linear packs `w` into panels: a 2-D 4-bit weight on the CPU, where this process has AVX-512 VNNI. */
export function quantizedPanelsSupported(w: tc.QuantizedWeight): boolean {
  return w.bits === 4 && w.shape.length === 2 && w.weight.backend === tc.cpu && engineKernels().quantizedPanelsSupported();
}

/**
 * A 4-bit MLX weight [out, in] packed for native/quantized_panels.cc (whose header says where each value goes).
 * As with packPanels, the pages of the mapped file it came from are let go.
 */
export function packQuantizedPanels(w: tc.QuantizedWeight): QuantizedPanels {
  if (w.bits !== 4) throw new RangeError(`packQuantizedPanels: only 4-bit weights pack into panels, got ${w.toString()}`);
  const [outF, inF] = w.shape;
  const count = Math.ceil(outF / 16);
  const panels = tc.empty([count, inF / 8, 16], 'uint32');
  const params = tc.empty([count, inF / w.groupSize, 2, 16], w.scales.dtype);
  engineKernels().packQuantizedPanels(w.weight.native(), w.scales.native(), w.biases.native(), panels.native(), params.native());
  for (const t of [w.weight, w.scales, w.biases]) tc.cpu.releaseFilePages(t);
  return { panels: tc.keep(panels), params: tc.keep(params), outFeatures: outF };
}

/**
 * x [..., in] @ dequantize(W).T for a weight packed by packQuantizedPanels, x rounded to int16 per block of 32
 * values as quantizedMatmul's integer path rounds it, with LinearFusion's work and the bias in the same call.
 */
export function quantizedPanelLinear(
  x: Tensor,
  w: QuantizedPanels,
  name: string,
  fusion: LinearFusion & { bias?: Tensor | null } = {},
): Tensor {
  const [panels, params] = [w.panels.native(), w.params.native()];
  return cpuLinear(x, w.outFeatures, name, fusion, (xn, out, ...rest) =>
    engineKernels().quantizedPanelLinear(xn, panels, out, ...rest, params),
  );
}

/** The fusion's arguments of a native linear kernel after x, its weight and out: bias, residual, prologue, norm. */
type NativeLinearCall = (x: tc.NativeView, out: tc.NativeView, ...fusion: unknown[]) => void;

/**
 * x [..., in] -> [..., outF] float32 through one native kernel call on the CPU, with LinearFusion's work and the
 * bias done in it; a residual the kernel cannot read as [rows, outF] float32 is added after.
 */
function cpuLinear(x: Tensor, outF: number, name: string, fusion: LinearFusion & { bias?: Tensor | null }, call: NativeLinearCall): Tensor {
  const { norm = null, swiglu = false, residual = null, bias = null } = fusion;
  const rows = x.size / x.shape[x.ndim - 1];
  const fuseResidual = residual !== null && residual.dtype === 'float32' && residual.isContiguous && residual.size === rows * outF;
  const xc = tc.contiguous(x);
  const out = tc.empty([...x.shape.slice(0, -1), outF], 'float32');
  try {
    call(
      xc.native(),
      out.native(),
      bias?.native(),
      fuseResidual ? residual.native() : null,
      swiglu ? 2 : norm ? 1 : 0,
      norm?.weight.native(),
      norm?.eps,
    );
  } catch (err) {
    out.dispose();
    throw new Error(`${name}: ${(err as Error).message}`);
  } finally {
    if (xc !== x) xc.dispose();
  }
  if (!residual || fuseResidual) return out;
  const sum = tc.add(residual, out);
  out.dispose();
  return sum;
}

/**
 * x @ wT (+ bias) with a dense weight given as its transposed view wT [in, out], and the fusion of LinearFusion
 * composed from ops: how a weight on another backend (WebGPU) is multiplied (on the CPU weights are in panels).
 * With fusion.swiglu x is [..., 2 * in].
 */
export function denseLinear(x: Tensor, wT: Tensor, name: string, fusion: LinearFusion & { bias?: Tensor | null } = {}): Tensor {
  const inF = wT.shape[0];
  const { norm = null, swiglu = false, residual = null, bias = null } = fusion;
  let input = x;
  if (swiglu) {
    const lead = x.shape.slice(0, -1).map(() => null);
    const g = tc.slice(x, [...lead, [0, inF]]);
    const u = tc.slice(x, [...lead, [inF, 2 * inF]]);
    const a = tc.silu(g);
    input = tc.mul(a, u);
    for (const t of [g, u, a]) t.dispose();
  }
  if (norm) {
    const normed = tc.fast.rmsNorm(input, norm.weight, norm.eps);
    if (input !== x) input.dispose();
    input = normed;
  }
  let y = tc.matmul(input, wT);
  if (input !== x) input.dispose();
  if (bias) {
    const biased = tc.add(y, bias);
    y.dispose();
    y = biased;
  }
  if (!residual) return y;
  const out = tc.add(residual, y);
  y.dispose();
  return out;
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
   * (0: fuse only where the checkpoint already stores gate and up back to back); options.exact: see Linear.
   */
  constructor(
    gate: Weight,
    up: Weight,
    down: Weight,
    name = 'mlp',
    options: { fuse?: boolean; maxCopyBytes?: number } & QuantizedPrecision = {},
  ) {
    const [hidden, dim] = gate.shape;
    expectWeightShape(`${name}.gate_proj`, gate, [hidden, dim]);
    expectWeightShape(`${name}.up_proj`, up, [hidden, dim]);
    expectWeightShape(`${name}.down_proj`, down, [dim, hidden]);
    this.hiddenDim = hidden;
    const fused = options.fuse === false ? null : fuseWeights([gate, up], options.maxCopyBytes);
    const precision = { exact: options.exact };
    this.gateUp = fused ? new Linear(fused, null, `${name}.gate_up_proj`, precision) : null;
    if (fused) releaseFused([gate, up], fused, this.gateUp!);
    this.gate = fused ? null : new Linear(gate, null, `${name}.gate_proj`, precision);
    this.up = fused ? null : new Linear(up, null, `${name}.up_proj`, precision);
    this.down = new Linear(down, null, `${name}.down_proj`, precision);
  }

  get inFeatures(): number {
    return this.down.outFeatures;
  }

  /**
   * x [..., dim] -> [..., dim]. fusion.norm normalises x first, fusion.residual is added to the output: the
   * decoder block's `h + mlp(norm(h))` as two projections (quantized weights: two native calls, the norm fused
   * into gate/up and silu(gate) * up and the residual into down).
   */
  forward(x: Tensor, fusion?: { norm?: InputNorm | null; residual?: Tensor | null }): Tensor {
    const norm = fusion?.norm ?? null;
    const residual = fusion?.residual ?? null;
    if (this.gateUp) {
      const gu = this.gateUp.forward(x, { norm }); // [..., 2 * hidden]: the gate's outputs, then up's
      const out = this.down.forward(gu, { swiglu: true, residual });
      gu.dispose();
      return out;
    }
    const input = norm ? tc.fast.rmsNorm(x, norm.weight, norm.eps) : x;
    const g = this.gate!.forward(input);
    const u = this.up!.forward(input);
    if (input !== x) input.dispose();
    const a = tc.silu(g);
    const h = tc.mul(a, u);
    for (const t of [g, u, a]) t.dispose();
    const out = this.down.forward(h, { residual });
    h.dispose();
    return out;
  }
}
