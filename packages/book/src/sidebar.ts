// The site's sidebar: the pages around the course, then one group per week with its chapters in the
// order of the chapter registries (packages/<week>/chapters.json). A new chapter appears by adding its
// row there; any other new page by one line in BOOK_PAGES.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { DefaultTheme } from 'vitepress';
import { type Chapter, chaptersOf, ROOT, WEEKS } from '../../../scripts/chapters.ts';

export const DOCS = join(ROOT, 'docs');

/** The pages outside the weeks, in sidebar order, as paths under docs/. README.md is the home page. */
export const BOOK_PAGES = ['README.md', 'architecture.md', 'engine.md', 'serving.md', 'gpu.md', 'progress.md'];

/** A page's title is its first heading, so the sidebar says what the page says. */
export function titleOf(page: string): string {
  const markdown = readFileSync(join(DOCS, page), 'utf8');
  const title = /^#\s+(.+)$/m.exec(markdown)?.[1];
  if (!title) throw new Error(`docs/${page} has no "# " heading to name it in the sidebar`);
  return title;
}

/** The site's address of a page under docs/: README.md is served as the folder's index. */
export function linkOf(page: string): string {
  return `/${page.replace(/(^|\/)README\.md$/, '$1').replace(/\.md$/, '.html')}`;
}

/** The site's address of a chapter's page (the registry names it by its path in the repository). */
export const chapterLink = (chapter: Chapter) => linkOf(chapter.docs.replace(/^docs\//, ''));

function weekGroup(week: string): DefaultTheme.SidebarItem | undefined {
  const chapters = chaptersOf(week);
  if (chapters.length === 0) return undefined;
  const overview = `${week}/README.md`;
  const items: DefaultTheme.SidebarItem[] = [];
  if (existsSync(join(DOCS, overview))) items.push({ text: 'Overview', link: linkOf(overview) });
  // Chapters that share a page (an extension graded by its own test) get one entry: the first.
  const seen = new Set<string>();
  for (const chapter of chapters) {
    if (seen.has(chapter.docs)) continue;
    seen.add(chapter.docs);
    items.push({ text: `${chapter.id} ${chapter.title}`, link: chapterLink(chapter) });
  }
  const text = existsSync(join(DOCS, overview)) ? titleOf(overview) : `Week ${week.replace('week', '')}`;
  return { text, collapsed: false, items };
}

export function sidebar(): DefaultTheme.SidebarItem[] {
  const book = BOOK_PAGES.map((page) => ({ text: titleOf(page), link: linkOf(page) }));
  const weeks = WEEKS.map(weekGroup).filter((group) => group !== undefined);
  return [...book, ...weeks];
}
