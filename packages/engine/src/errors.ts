// Errors the CLI reports as one line, without a stack trace: the user gave something wrong (a flag, a path, a
// token id, a prompt too long). Anything else is a bug: the CLI prints its message and, with TINY_LLM_DEBUG=1,
// its stack.
import { createRequire } from 'node:module';
import * as tc from '@tiny-llm/tensor-core';

/** Something wrong with what the user asked for. Exit code 1. */
export class UserError extends Error {
  readonly exitCode: number = 1;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'UserError';
  }
}

/** A malformed command line (unknown flag, missing value, unknown command). Exit code 2, like most CLIs. */
export class UsageError extends UserError {
  override readonly exitCode: number = 2;
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

const require = createRequire(import.meta.url);

/** The stub files of a learner's chapter ("1.3" -> packages/week1/src/grouped-attention.ts), from its week's chapters.json. */
function learnerFilesOf(chapter: string): string | undefined {
  const week = `week${chapter.split('.')[0]}`;
  try {
    const chapters = require(`@tiny-llm/${week}/chapters.json`) as { id: string; files: string[] }[];
    const files = chapters.find((c) => c.id === chapter)?.files;
    return files?.map((f) => `packages/${week}/${f}`).join(' and ');
  } catch {
    return undefined;
  }
}

/** The learner stubs throw `NotImplemented` (packages/week1/src/not-implemented.ts), with the chapter. */
export function isNotImplemented(err: unknown): err is Error & { chapter: string } {
  return err instanceof Error && err.name === 'NotImplemented' && typeof (err as { chapter?: unknown }).chapter === 'string';
}

/** Turns a learner stub's NotImplemented into the plain sentence the CLI prints. */
export function learnerNotImplemented(err: Error & { chapter: string }): UserError {
  const file = learnerFilesOf(err.chapter) ?? `the week ${err.chapter.split('.')[0]} stubs`;
  return new UserError(`the learner's chapter ${err.chapter} is not implemented yet; run with --solution reference or finish ${file}`, {
    cause: err,
  });
}

/** Runs fn and turns a learner stub's NotImplemented into a UserError. */
export function withLearnerErrors<T>(fn: () => T): T {
  const rethrow = (err: unknown): never => {
    throw isNotImplemented(err) ? learnerNotImplemented(err) : err;
  };
  try {
    const result = fn();
    // An async call of the learner's code fails later, through its promise.
    return result instanceof Promise ? (result.catch(rethrow) as T) : result;
  } catch (err) {
    return rethrow(err);
  }
}

/**
 * What a model on a GPU can run into that is no bug: an op the GPU backend lacks, or a buffer beyond the
 * device's limits. Either becomes a UserError naming the op or the limit; anything else is returned as it is.
 */
export function deviceErrorOf(err: unknown): unknown {
  if (err instanceof tc.UnsupportedOpError && err.backend !== 'cpu') {
    return new UserError(`${err.op} is not implemented on the ${err.backend} backend, which runs this model; run it with --device cpu`, {
      cause: err,
    });
  }
  if (err instanceof tc.DeviceLimitError) {
    return new UserError(`the model does not fit this GPU's ${err.limit}: ${err.message}; run it with --device cpu`, { cause: err });
  }
  return err;
}

/**
 * The first line of an error's message (the CLI prints one line), with the next when the first only introduces
 * it: a learner's file that does not compile reads "Transform failed with 1 error:", then its file, line and error.
 */
export function oneLine(err: unknown): string {
  const [first = '', next] = (err instanceof Error ? err.message : String(err)).split('\n').filter((line) => line.trim() !== '');
  return first.endsWith(':') && next !== undefined ? `${first} ${next.trim()}` : first;
}
