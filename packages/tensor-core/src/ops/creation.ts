// Creating tensors: from JavaScript data, constants and ranges.
import type { Backend } from '../backend/backend.ts';
import { cpu } from '../backend/cpu.ts';
import { assertDType, isFloating, storageView, type DType } from '../dtype.ts';
import { checkShape, formatShape, sizeOf } from '../shape.ts';
import { Tensor } from '../tensor.ts';
import { empty, getDefaultBackend } from './util.ts';

export interface CreateOptions {
  dtype?: DType;
  shape?: readonly number[];
  device?: Backend;
}

type NestedNumbers = number | boolean | NestedNumbers[];

/**
 * A tensor from numbers: a nested array, a flat array with `shape`, or a typed array. Values are given as
 * numbers in every dtype (float16/bfloat16 included; they are rounded to nearest even).
 *
 * Without a dtype, as in numpy and MLX: an array of integers is int32, an array with any fractional or
 * non-finite number is float32, booleans are bool, and a typed array keeps its type (Float64Array becomes
 * float32). `tc.tensor([0, 1, 2])` is int32; write `tc.tensor([0, 1, 2], { dtype: 'float32' })` for floats.
 */
export function tensor(data: NestedNumbers | ArrayLike<number>, options: CreateOptions = {}): Tensor {
  const inferred: number[] = [];
  let flat: ArrayLike<number>;
  if (ArrayBuffer.isView(data)) {
    flat = data as ArrayLike<number>;
    inferred.push(flat.length);
  } else {
    flat = flatten(data as NestedNumbers, inferred);
  }
  const shape = options.shape ? checkShape(options.shape, 'tensor') : inferred;
  if (sizeOf(shape) !== flat.length) {
    throw new RangeError(`tensor: ${flat.length} values do not fill the shape ${formatShape(shape)}`);
  }
  const dtype = assertDType(options.dtype ?? defaultDType(data, flat), 'tensor');
  return fromNumbers(flat, dtype, shape, options.device ?? getDefaultBackend());
}

function defaultDType(data: unknown, flat: ArrayLike<number>): DType {
  if (data instanceof Int32Array) return 'int32';
  if (data instanceof Uint32Array) return 'uint32';
  if (data instanceof Uint8Array) return 'uint8';
  if (ArrayBuffer.isView(data)) return 'float32';
  if (typeof firstLeaf(data) === 'boolean') return 'bool';
  const integers = flat.length > 0 && Array.prototype.every.call(flat, (v: number) => Number.isSafeInteger(v) && Math.abs(v) < 2 ** 31);
  return integers ? 'int32' : 'float32';
}

function firstLeaf(data: unknown): unknown {
  while (Array.isArray(data)) data = data[0];
  return data;
}

function flatten(data: NestedNumbers, shape: number[]): number[] {
  const out: number[] = [];
  const walk = (node: NestedNumbers, depth: number) => {
    if (Array.isArray(node)) {
      if (shape.length === depth) shape.push(node.length);
      else if (shape[depth] !== node.length) throw new RangeError('tensor: ragged nested array (rows of different lengths)');
      for (const child of node) walk(child, depth + 1);
    } else {
      if (shape.length !== depth) throw new RangeError('tensor: ragged nested array (numbers at different depths)');
      out.push(typeof node === 'boolean' ? Number(node) : node);
    }
  };
  walk(data, 0);
  return out;
}

/** Builds on the CPU (converting half types with the native kernel), then moves to `device`. */
function fromNumbers(values: ArrayLike<number>, dtype: DType, shape: number[], device: Backend): Tensor {
  const n = values.length;
  const direct = dtype !== 'float16' && dtype !== 'bfloat16';
  const stage = cpu.allocate(direct ? dtype : 'float32', n);
  const view = storageView(direct ? dtype : 'float32', stage.buffer, stage.byteOffset, n);
  if (dtype === 'bool') for (let i = 0; i < n; i++) view[i] = values[i] ? 1 : 0;
  else view.set(values as ArrayLike<number>);
  let t = new Tensor(stage, direct ? dtype : 'float32', shape);
  if (!direct) {
    const converted = empty(shape, dtype, cpu);
    cpu.unary('copy', t, converted);
    t.dispose();
    t = converted;
  }
  return toDevice(t, device);
}

/** Moves a CPU tensor to `device` (no-op when it is already there). */
export function toDevice(t: Tensor, device: Backend): Tensor {
  if (t.backend === device) return t;
  if (t.backend !== cpu) throw new Error(`toDevice: move ${t.describe()} to the CPU first (await toCPU(t))`);
  const moved = new Tensor(device.upload(cpu.readSync(t)), t.dtype, [...t.shape]);
  t.dispose();
  return moved;
}

/** Copies a tensor from any backend to the CPU. */
export async function toCPU(t: Tensor): Promise<Tensor> {
  if (t.backend === cpu) return t;
  return new Tensor(cpu.upload(await t.backend.read(t)), t.dtype, [...t.shape]);
}

export function full(shape: readonly number[], value: number, options: Omit<CreateOptions, 'shape'> = {}): Tensor {
  checkShape(shape, 'full');
  const dtype = options.dtype ?? 'float32';
  return fromNumbers(new Float64Array(sizeOf(shape)).fill(value), dtype, [...shape], options.device ?? getDefaultBackend());
}

export function zeros(shape: readonly number[], options: Omit<CreateOptions, 'shape'> = {}): Tensor {
  return full(shape, 0, options);
}

export function ones(shape: readonly number[], options: Omit<CreateOptions, 'shape'> = {}): Tensor {
  return full(shape, 1, options);
}

/** start, start + step, ... below stop (numpy's arange). `arange(n)` counts 0..n-1. Default dtype int32. */
export function arange(start: number, stop?: number, step = 1, options: Omit<CreateOptions, 'shape'> = {}): Tensor {
  if (stop === undefined) [start, stop] = [0, start];
  if (step === 0 || !Number.isFinite(step)) throw new RangeError(`arange: step must be a non-zero finite number, got ${step}`);
  const n = Math.max(0, Math.ceil((stop - start) / step));
  const integral = Number.isInteger(start) && Number.isInteger(step);
  const dtype = options.dtype ?? (integral ? 'int32' : 'float32');
  if (!isFloating(dtype) && !integral) throw new TypeError(`arange: fractional range cannot be ${dtype}`);
  const values = new Float64Array(n);
  for (let i = 0; i < n; i++) values[i] = start + i * step;
  return fromNumbers(values, dtype, [n], options.device ?? getDefaultBackend());
}
