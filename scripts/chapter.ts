// pnpm chapter solve <id>: puts the reference solution of one chapter in place of the learner's files,
// keeping the learner's own work in packages/<week>/.learner-backup/.
// pnpm chapter restore <id>: brings the learner's files back.
import { copyFileSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import { findChapter, ROOT } from './chapters.ts';

function paths(week: string, file: string) {
  return {
    learner: `${ROOT}packages/${week}/src/${file}`,
    backup: `${ROOT}packages/${week}/.learner-backup/${file}`,
    reference: `${ROOT}packages/reference/src/${week}/${file}`,
  };
}

function solve(id: string): void {
  const chapter = findChapter(id);
  for (const file of chapter.files) {
    const p = paths(chapter.week, file);
    if (existsSync(p.backup)) {
      throw new Error(`chapter ${id}: ${file} is already swapped for the solution (restore it first: pnpm chapter restore ${id})`);
    }
  }
  for (const file of chapter.files) {
    const p = paths(chapter.week, file);
    mkdirSync(`${ROOT}packages/${chapter.week}/.learner-backup`, { recursive: true });
    copyFileSync(p.learner, p.backup);
    copyFileSync(p.reference, p.learner);
    console.log(`${file}: the solution is in place; your version is kept in packages/${chapter.week}/.learner-backup/${file}`);
  }
}

function restore(id: string): void {
  const chapter = findChapter(id);
  for (const file of chapter.files) {
    const p = paths(chapter.week, file);
    if (!existsSync(p.backup)) throw new Error(`chapter ${id}: no saved copy of ${file} to restore`);
    copyFileSync(p.backup, p.learner);
    rmSync(p.backup);
    console.log(`${file}: your version is back`);
  }
}

const [command, id] = process.argv.slice(2);
try {
  if (command === 'solve' && id) solve(id);
  else if (command === 'restore' && id) restore(id);
  else {
    console.error('usage: pnpm chapter solve <chapter>   (e.g. 1.3)\n       pnpm chapter restore <chapter>');
    process.exit(2);
  }
} catch (err) {
  console.error((err as Error).message);
  process.exit(1);
}
