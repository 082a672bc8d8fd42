// pnpm chapter solve <id>: puts the reference solution of one chapter in place of the learner's files,
// keeping the learner's own work in packages/<week>/.learner-backup/.
// pnpm chapter restore <id>: brings the learner's files back.
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { parseArgs } from 'node:util';
import { findChapter, learnerFile, ROOT, solutionFile, type Chapter } from './chapters.ts';

function paths(chapter: Chapter, file: string) {
  return {
    learner: `${ROOT}${learnerFile(chapter, file)}`,
    backup: `${ROOT}packages/${chapter.week}/.learner-backup/${file}`,
    reference: `${ROOT}${solutionFile(chapter, file)}`,
  };
}

/**
 * A solution file as it reads in the learner's package: the reference reaches its earlier weeks by relative
 * paths ('../week1/index.ts'), the learner's packages by name ('@tiny-llm/week1').
 */
function asLearnerFile(source: string): string {
  return source.replace(/(['"])\.\.\/(week\d)\/index\.ts\1/g, '$1@tiny-llm/$2$1');
}

function solve(id: string): void {
  const chapter = findChapter(id);
  for (const file of chapter.files) {
    const p = paths(chapter, file);
    if (existsSync(p.backup)) {
      throw new Error(`chapter ${id}: ${file} is already swapped for the solution (restore it first: pnpm chapter restore ${id})`);
    }
  }
  for (const file of chapter.files) {
    const p = paths(chapter, file);
    mkdirSync(dirname(p.backup), { recursive: true });
    copyFileSync(p.learner, p.backup);
    writeFileSync(p.learner, asLearnerFile(readFileSync(p.reference, 'utf8')));
    const rebuild = file.startsWith('native/') ? ' (rebuild it: pnpm build)' : '';
    console.log(`${file}: the solution is in place${rebuild}; your version is kept in packages/${chapter.week}/.learner-backup/${file}`);
  }
}

function restore(id: string): void {
  const chapter = findChapter(id);
  for (const file of chapter.files) {
    const p = paths(chapter, file);
    if (!existsSync(p.backup)) throw new Error(`chapter ${id}: no saved copy of ${file} to restore`);
    copyFileSync(p.backup, p.learner);
    rmSync(p.backup);
    console.log(`${file}: your version is back`);
  }
}

function positionalsOrUsage(): string[] {
  try {
    return parseArgs({ allowPositionals: true, options: {} }).positionals;
  } catch (err) {
    console.error(`${(err as Error).message}\n${USAGE}`);
    process.exit(2);
  }
}

const USAGE = 'usage: pnpm chapter solve <chapter>   (e.g. 1.3)\n       pnpm chapter restore <chapter>';
try {
  const [command, id, ...extra] = positionalsOrUsage();
  if (command === 'solve' && id && !extra.length) solve(id);
  else if (command === 'restore' && id && !extra.length) restore(id);
  else {
    console.error(USAGE);
    process.exit(2);
  }
} catch (err) {
  console.error((err as Error).message);
  process.exit(1);
}
