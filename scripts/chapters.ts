// The chapter registry: packages/weekN/chapters.json says which stub files, test file and book page make
// up each chapter. The grader, the stub check and the swap command all read it from here.
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));

export interface Chapter {
  id: string;
  title: string;
  week: string;
  /** Stub files under packages/<week>/src, mirrored by packages/reference/src/<week>. */
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
    throw new Error(`unknown chapter "${id}"; the chapters are ${allChapters().map((c) => c.id).join(', ')}`);
  }
  return chapter;
}
