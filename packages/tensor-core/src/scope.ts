// tidy(fn): every tensor created inside fn is disposed when fn returns, except those it returns or keeps.
// GPU memory is not garbage collected and CPU buffers are pooled, so the engine runs each step in one.
import type { Tensor } from './tensor.ts';

const scopes: Set<Tensor>[] = [];

export function trackInScope(t: Tensor): void {
  scopes[scopes.length - 1]?.add(t);
}

/** Keeps `t` alive past the innermost tidy scope. */
export function keep<T extends Tensor>(t: T): T {
  scopes[scopes.length - 1]?.delete(t);
  return t;
}

export function tidy<T>(fn: () => T): T {
  const scope = new Set<Tensor>();
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
    if (result instanceof Promise) {
      throw new Error('tidy: the function returned a Promise; tidy scopes are synchronous');
    }
  } catch (err) {
    scopes.pop();
    for (const t of scope) t.dispose();
    throw err;
  }
  scopes.pop();
  const returned = new Set<Tensor>();
  collectTensors(result, returned);
  for (const t of scope) {
    if (returned.has(t)) scopes[scopes.length - 1]?.add(t);
    else t.dispose();
  }
  return result;
}

function collectTensors(value: unknown, into: Set<Tensor>): void {
  if (value === null || typeof value !== 'object') return;
  if ('storage' in value && 'dispose' in value) {
    into.add(value as Tensor);
  } else if (Array.isArray(value)) {
    for (const v of value) collectTensors(v, into);
  } else if (value instanceof Map) {
    for (const v of value.values()) collectTensors(v, into);
  } else if (Object.getPrototypeOf(value) === Object.prototype) {
    for (const v of Object.values(value)) collectTensors(v, into);
  }
}
