// The chapter registry: packages/weekN/chapters.json says which stub files, test file and book page make
// up each chapter. The grader, the stub check, the swap command and the solution switch all read it here.
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));

export interface Chapter {
  id: string;
  title: string;
  week: string;
  /**
   * The learner's files, relative to packages/<week>: `src/F` (TypeScript), `native/F` (C++ kernels) and
   * `wgsl/F` (GPU kernels), whose solutions are packages/reference/src/<week>/F,
   * packages/reference/native/<week>/F and packages/reference/wgsl/<week>/F.
   */
  files: string[];
  /** The graded test file, relative to packages/<week>. */
  test: string;
  docs: string;
}

export const WEEKS = ['week1', 'week2', 'week3'];

export function chaptersOf(week: string): Chapter[] {
  const path = `${ROOT}packages/${week}/chapters.json`;
  if (!existsSync(path)) return [];
  const list = JSON.parse(readFileSync(path, 'utf8')) as Omit<Chapter, 'week'>[];
  return list.map((c) => ({ ...c, week }));
}

export function allChapters(): Chapter[] {
  return WEEKS.flatMap(chaptersOf);
}

export function findChapter(id: string): Chapter {
  const chapter = allChapters().find((c) => c.id === id);
  if (!chapter) {
    throw new Error(
      `unknown chapter "${id}"; the chapters are ${allChapters()
        .map((c) => c.id)
        .join(', ')}`,
    );
  }
  return chapter;
}

/** A chapter file of the learner's (packages/week2/native/quantized_matmul.cc), relative to the repository. */
export function learnerFile(chapter: Chapter, file: string): string {
  return `packages/${chapter.week}/${file}`;
}

/**
 * Its solution: src/F -> packages/reference/src/<week>/F, native/F -> packages/reference/native/<week>/F,
 * wgsl/F -> packages/reference/wgsl/<week>/F.
 */
export function solutionFile(chapter: Chapter, file: string): string {
  const slash = file.indexOf('/');
  return `packages/reference/${file.slice(0, slash)}/${chapter.week}/${file.slice(slash + 1)}`;
}
