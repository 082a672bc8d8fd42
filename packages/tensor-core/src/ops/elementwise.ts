// Elementwise ops with numpy broadcasting. Numbers mix with tensors and take the tensor's dtype.
import type { BinaryOp, UnaryOp } from '../backend/backend.ts';
import { assertDType, floatResultType, isFloating, promoteTypes, type DType } from '../dtype.ts';
import { broadcastShapes } from '../shape.ts';
import { Tensor } from '../tensor.ts';
import { broadcastTo } from './shape.ts';
import { backendOf, describeValue, empty, scalarTensor, type TensorLike } from './util.ts';

/** `name` is the op the caller called, for errors (astype and contiguous run the 'copy' kernel). */
function unary(op: UnaryOp, x: Tensor, dtype?: DType, name: string = op): Tensor {
  if (!(x instanceof Tensor)) throw new TypeError(`${name}: expected a Tensor, got ${describeValue(x)}`);
  dtype ??= floatResultType(x.dtype);
  const backend = backendOf(name, x);
  const out = empty(x.shape, dtype, backend);
  backend.unary(op, x, out);
  return out;
}

export const exp = (x: Tensor) => unary('exp', x);
export const log = (x: Tensor) => unary('log', x);
export const sqrt = (x: Tensor) => unary('sqrt', x);
export const rsqrt = (x: Tensor) => unary('rsqrt', x);
export const sigmoid = (x: Tensor) => unary('sigmoid', x);
/** x * sigmoid(x), computed so that large negative inputs keep their tiny (not zero) outputs. */
export const silu = (x: Tensor) => unary('silu', x);
export const tanh = (x: Tensor) => unary('tanh', x);
export const cos = (x: Tensor) => unary('cos', x);
export const sin = (x: Tensor) => unary('sin', x);
export const neg = (x: Tensor) => unary('neg', x, x.dtype === 'bool' ? 'int32' : x.dtype);
export const abs = (x: Tensor) => unary('abs', x, x.dtype);

/** A converted copy (float -> int truncates toward zero and saturates; floats round to nearest even). */
export function astype(x: Tensor, dtype: DType): Tensor {
  assertDType(dtype, 'astype');
  return unary('copy', x, dtype, 'astype');
}

/** A contiguous copy of x (or x itself when it is already contiguous). */
export function contiguous(x: Tensor): Tensor {
  if (!(x instanceof Tensor)) throw new TypeError(`contiguous: expected a Tensor, got ${describeValue(x)}`);
  if (x.isContiguous) return x;
  return unary('copy', x, x.dtype, 'contiguous');
}

/** Resolves the operands of a binary op: numbers become tensors of the other side's dtype. */
function operands(op: string, a: TensorLike, b: TensorLike): [Tensor, Tensor] {
  if (typeof a === 'number' && typeof b === 'number') throw new TypeError(`${op}: at least one operand must be a Tensor`);
  if (typeof a === 'number') a = scalarTensor(a, scalarDType(a, b as Tensor), (b as Tensor).backend);
  if (typeof b === 'number') b = scalarTensor(b, scalarDType(b, a), a.backend);
  if (!(a instanceof Tensor) || !(b instanceof Tensor)) {
    throw new TypeError(`${op}: expected Tensors or numbers, got ${describeValue(a)} and ${describeValue(b)}`);
  }
  return [a, b];
}

/** A number takes the tensor's dtype, unless that would lose it (0.5 next to an int32 tensor). */
function scalarDType(value: number, other: Tensor): DType {
  if (isFloating(other.dtype)) return other.dtype;
  return Number.isInteger(value) && other.dtype !== 'bool' ? other.dtype : 'float32';
}

function binary(op: BinaryOp, aIn: TensorLike, bIn: TensorLike, resultType: (t: DType) => DType): Tensor {
  const [a, b] = operands(op, aIn, bIn);
  const backend = backendOf(op, a, b);
  const shape = broadcastShapes(op, a.shape, b.shape);
  const out = empty(shape, resultType(promoteTypes(a.dtype, b.dtype)), backend);
  backend.binary(op, broadcastTo(a, shape), broadcastTo(b, shape), out);
  return out;
}

const same = (t: DType) => t;
const toBool = () => 'bool' as DType;

export const add = (a: TensorLike, b: TensorLike) => binary('add', a, b, same);
export const sub = (a: TensorLike, b: TensorLike) => binary('sub', a, b, same);
export const mul = (a: TensorLike, b: TensorLike) => binary('mul', a, b, same);
/** True division: integer operands give float32. */
export const div = (a: TensorLike, b: TensorLike) => binary('div', a, b, floatResultType);
export const maximum = (a: TensorLike, b: TensorLike) => binary('maximum', a, b, same);
export const minimum = (a: TensorLike, b: TensorLike) => binary('minimum', a, b, same);
export const pow = (a: TensorLike, b: TensorLike) => binary('pow', a, b, (t) => (isFloating(t) ? t : 'float32'));
export const equal = (a: TensorLike, b: TensorLike) => binary('equal', a, b, toBool);
export const less = (a: TensorLike, b: TensorLike) => binary('less', a, b, toBool);
export const greater = (a: TensorLike, b: TensorLike) => binary('greater', a, b, toBool);

/**
 * cond ? a : b, elementwise with broadcasting; the result has a and b's promoted dtype (float32 when both
 * are numbers: `tc.where(hidden, -Infinity, 0)` is an additive mask).
 */
export function where(cond: Tensor, a: TensorLike, b: TensorLike): Tensor {
  if (!(cond instanceof Tensor)) throw new TypeError(`where: expected a Tensor as the condition, got ${describeValue(cond)}`);
  if (typeof a === 'number' && typeof b === 'number') a = scalarTensor(a, 'float32', cond.backend);
  const [ta, tb] = operands('where', a, b);
  const backend = backendOf('where', cond, ta, tb);
  const shape = broadcastShapes('where', cond.shape, ta.shape, tb.shape);
  const out = empty(shape, promoteTypes(ta.dtype, tb.dtype), backend);
  backend.where(broadcastTo(cond, shape), broadcastTo(ta, shape), broadcastTo(tb, shape), out);
  return out;
}
