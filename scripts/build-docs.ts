// pnpm docs:build: renders the book (docs/**/*.md) to HTML in docs/.site/ and fails on a dead link.
//
// Every relative link is checked against the repository: a page, a file, or a folder that exists.
// Links between pages become links between the rendered .html files; links to the rest of the repository
// keep pointing at the files themselves.
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { marked } from 'marked';
import { ROOT } from './chapters.ts';

const DOCS = join(ROOT, 'docs');
const SITE = join(DOCS, '.site');

function pages(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (name.startsWith('.')) return [];
    if (statSync(path).isDirectory()) return pages(path);
    return name.endsWith('.md') ? [path] : [];
  });
}

const isExternal = (href: string) => /^[a-z][a-z0-9+.-]*:/i.test(href) || href.startsWith('#');

/** The rendered file of a page: README.md becomes index.html. */
function htmlPath(page: string): string {
  const rel = relative(DOCS, page).replace(/README\.md$/, 'index.md');
  return join(SITE, rel.replace(/\.md$/, '.html'));
}

function checkAndRewrite(page: string, href: string, dead: string[]): string {
  if (isExternal(href)) return href;
  const [path, anchor] = href.split('#');
  const target = resolve(dirname(page), decodeURIComponent(path));
  if (!existsSync(target)) {
    dead.push(`${relative(ROOT, page)}: dead link ${href}`);
    return href;
  }
  const suffix = anchor ? `#${anchor}` : '';
  const inDocs = target.startsWith(DOCS + '/') || target === DOCS;
  if (inDocs && target.endsWith('.md')) return relative(dirname(htmlPath(page)), htmlPath(target)) + suffix;
  return relative(dirname(htmlPath(page)), target) + suffix;
}

function render(page: string, dead: string[]): void {
  const markdown = readFileSync(page, 'utf8');
  const title = /^#\s+(.+)$/m.exec(markdown)?.[1] ?? 'tiny-llm';
  const renderer = new marked.Renderer();
  const link = renderer.link.bind(renderer);
  renderer.link = (token) => link({ ...token, href: checkAndRewrite(page, token.href, dead) });
  const body = marked.parse(markdown, { renderer, async: false }) as string;
  const out = htmlPath(page);
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(
    out,
    `<!doctype html>\n<html><head><meta charset="utf-8"><title>${title}</title>` +
      `<style>body{max-width:46rem;margin:2rem auto;padding:0 1rem;font:16px/1.55 system-ui,sans-serif}` +
      `pre{background:#f4f4f4;padding:.8rem;overflow-x:auto}code{font-size:.92em}table{border-collapse:collapse}` +
      `td,th{border:1px solid #ccc;padding:.25rem .5rem}</style></head><body>\n${body}</body></html>\n`,
  );
}

function main(): void {
  rmSync(SITE, { recursive: true, force: true });
  const dead: string[] = [];
  const all = pages(DOCS);
  for (const page of all) render(page, dead);
  if (dead.length) {
    console.error(dead.join('\n'));
    console.error(`docs: ${dead.length} dead link(s)`);
    process.exit(1);
  }
  console.log(`docs: ${all.length} pages rendered to ${relative(ROOT, SITE)}/`);
}

main();
