// Errors the CLI reports as one line, without a stack trace: the user gave something wrong (a flag, a path, a
// token id, a prompt too long). Anything else is a bug: the CLI prints its message and, with TINY_LLM_DEBUG=1,
// its stack.
import { createRequire } from 'node:module';

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
  return new UserError(
    `the learner's chapter ${err.chapter} is not implemented yet; run with --solution reference or finish ${file}`,
    { cause: err },
  );
}

/** Runs fn and turns a learner stub's NotImplemented into a UserError. */
export function withLearnerErrors<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (isNotImplemented(err)) throw learnerNotImplemented(err);
    throw err;
  }
}

/** The first line of an error's message (the CLI prints one line). */
export function oneLine(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return message.split('\n')[0];
}
