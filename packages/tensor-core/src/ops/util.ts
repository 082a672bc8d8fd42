// Helpers every op uses: output allocation, scalar arguments, and the checks whose errors name the op.
import type { Backend } from '../backend/backend.ts';
import { cpu } from '../backend/cpu.ts';
import { type DType, storageView } from '../dtype.ts';
import { formatShape, sizeOf } from '../shape.ts';
import { Tensor } from '../tensor.ts';

export type TensorLike = Tensor | number;

let defaultBackend: Backend = cpu;

/** The backend that creation ops use when none is given (the CPU unless changed). */
export function getDefaultBackend(): Backend {
  return defaultBackend;
}
export function setDefaultBackend(backend: Backend): void {
  defaultBackend = backend;
}

/** A new contiguous tensor with uninitialised contents; kernels fill it. */
export function empty(shape: readonly number[], dtype: DType = 'float32', backend: Backend = defaultBackend): Tensor {
  return new Tensor(backend.allocate(dtype, sizeOf(shape)), dtype, [...shape]);
}

/** Checks that every input is a live tensor on one backend, and returns that backend. */
export function backendOf(op: string, ...tensors: Tensor[]): Backend {
  const backend = tensors[0].backend;
  for (const t of tensors) {
    if (!(t instanceof Tensor)) throw new TypeError(`${op}: expected a Tensor, got ${describeValue(t)}`);
    t.assertLive(op);
    if (t.backend !== backend) {
      throw new Error(`${op}: inputs live on different backends (${backend.name} and ${t.backend.name}); move them first`);
    }
  }
  return backend;
}

/** A number becomes a 0-d tensor of `dtype` on `backend` (weakly typed: it takes the other operand's dtype). */
export function scalarTensor(value: number, dtype: DType, backend: Backend): Tensor {
  const storage = cpu.allocate('float32', 1);
  storageView('float32', storage.buffer, storage.byteOffset, 1)[0] = value;
  let t = new Tensor(storage, 'float32', []);
  if (dtype !== 'float32') {
    const converted = empty([], dtype, cpu);
    cpu.unary('copy', t, converted);
    t.dispose();
    t = converted;
  }
  if (backend === cpu) return t;
  const moved = new Tensor(backend.upload(cpu.readSync(t)), dtype, []);
  t.dispose();
  return moved;
}

export function describeValue(v: unknown): string {
  if (v instanceof Tensor) return v.describe();
  if (Array.isArray(v)) return `an array of length ${v.length}`;
  if (v === null) return 'null';
  // Objects of a class say what they are (their toString), e.g. QuantizedWeight([896, 896], 4-bit, group 64).
  const name = typeof v === 'object' ? v.constructor?.name : undefined;
  if (name === 'QuantizedWeight') return `${String(v)}, a quantized weight: tc.dequantize(w) gives its float32 tensor`;
  if (name && name !== 'Object') return `a ${name}`;
  return typeof v;
}

export function shapeError(op: string, message: string, ...tensors: Tensor[]): RangeError {
  const shapes = tensors.map((t) => t.describe()).join(', ');
  return new RangeError(`${op}: ${message}${shapes ? ` (got ${shapes})` : ''}`);
}

export { formatShape };
