// The book's links into the repository, made to work on the site. The pages link to the code the way a
// reader of the repository follows them (`../../packages/week1/src/attention.ts`), and there is no git host
// to send those links to. So every file or folder of the repository that the book links to gets a page of
// its own at /code/<path>/: a source file highlighted, a safetensors fixture's tensors and metadata, a
// folder's entries (each with its page). The links are rewritten to those pages, and VitePress's dead-link
// check then covers them like any link between pages.
import { existsSync, openSync, readdirSync, readFileSync, readSync, closeSync, statSync } from 'node:fs';
import { dirname, extname, join, relative, resolve } from 'node:path';
import type { MarkdownRenderer } from 'vitepress';
import { allChapters, type Chapter, learnerFile, ROOT, solutionFile } from '../../../scripts/chapters.ts';
import { chapterLink, DOCS } from './sidebar.ts';

/**
 * The site page of a repository path. A folder's index page, so that the address ends in "/" whatever the
 * file's extension: VitePress takes a link ending in ".ts" or ".json" for a file, not a page, and would
 * not check it.
 */
export const codePage = (repoPath: string) => `/code/${repoPath}/`;

const isExternal = (href: string) => /^[a-z][a-z0-9+.-]*:/i.test(href) || href.startsWith('//');

/**
 * Where a link of the markdown file `page` goes on the site. Links between pages stay as they are, but a
 * README.md is served as its folder's index.html (see `rewrites` in the config); links to the rest of the
 * repository go to its code page.
 */
export function siteHref(page: string, href: string): string {
  if (isExternal(href) || href.startsWith('#') || href.startsWith('/')) return href;
  const [path, hash] = href.split('#');
  const suffix = hash === undefined ? '' : `#${hash}`;
  const target = resolve(dirname(page), decodeURIComponent(path)).replace(/\/+$/, '');
  if (target.startsWith(`${DOCS}/`)) return href.replace(/(^|\/)README\.md(?=$|#)/, '$1index.md');
  const repoPath = relative(ROOT, target);
  if (repoPath.startsWith('..')) throw new Error(`${relative(ROOT, page)}: the link ${href} leaves the repository`);
  return codePage(repoPath) + suffix;
}

/** The chapters of each book page: a page may hold two (an extension graded by its own test). */
function chaptersByPage(): Map<string, Chapter[]> {
  const byPage = new Map<string, Chapter[]>();
  for (const chapter of allChapters()) byPage.set(chapter.docs, [...(byPage.get(chapter.docs) ?? []), chapter]);
  return byPage;
}

const testOf = (c: Chapter) => learnerFile(c, c.test);

/** The section every chapter page ends with on the site: its files, from the chapter registry. */
export function chapterFilesSection(page: string): string {
  const chapters = chaptersByPage().get(relative(ROOT, page));
  if (!chapters) return '';
  const links = (paths: string[]) => [...new Set(paths)].map((p) => `[${p}](${relative(dirname(page), join(ROOT, p))})`).join(', ');
  return [
    '',
    '## Files of this chapter',
    '',
    `- Your code: ${links(chapters.flatMap((c) => c.files.map((f) => learnerFile(c, f))))}`,
    `- The reference solution: ${links(chapters.flatMap((c) => c.files.map((f) => solutionFile(c, f))))}`,
    `- The tests: ${links(chapters.map(testOf))}`,
    '',
  ].join('\n');
}

/** markdown-it plugin: the rewritten links, and each chapter page's files section. */
export function repoLinks(md: MarkdownRenderer): void {
  const parse = md.parse.bind(md);
  // env.path is the markdown file being rendered (VitePress sets it for pages and for the search index).
  md.parse = (src, env) => parse(src + (env?.path ? chapterFilesSection(env.path) : ''), env);
  md.core.ruler.push('repo-links', (state) => {
    const page: string | undefined = state.env?.path;
    if (!page) return;
    for (const token of state.tokens.flatMap((t) => t.children ?? [])) {
      const href = token.type === 'link_open' ? token.attrGet('href') : null;
      if (href) token.attrSet('href', siteHref(page, href));
    }
  });
}

function markdownFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    // Dot folders hold the site's build; code/ holds the template of the pages made here.
    if (name.startsWith('.') || path === join(DOCS, 'code')) return [];
    if (statSync(path).isDirectory()) return markdownFiles(path);
    return name.endsWith('.md') ? [path] : [];
  });
}

/** Markdown links, inline and reference-style. A link this misses fails the build as a dead link. */
const LINK_RE = /\]\(\s*<?([^)\s>]+)|^\s*\[[^\]]+\]:\s*<?(\S+?)>?\s*$/gm;

/** Names that are never shown: build outputs, dependencies, hidden files. */
const skipped = (name: string) => name.startsWith('.') || ['node_modules', 'build', 'dist'].includes(name);

function entriesOf(folder: string): string[] {
  return readdirSync(join(ROOT, folder))
    .filter((name) => !skipped(name))
    .sort()
    .map((name) => `${folder}/${name}`);
}

/** The repository paths that get a page: what the book links to, each chapter's files, what linked folders hold. */
export function repoPaths(): string[] {
  const paths = new Set<string>();
  const add = (repoPath: string) => {
    if (paths.has(repoPath) || !existsSync(join(ROOT, repoPath))) return;
    paths.add(repoPath);
    if (statSync(join(ROOT, repoPath)).isDirectory()) entriesOf(repoPath).forEach(add);
  };
  for (const page of markdownFiles(DOCS)) {
    for (const [, inline, reference] of readFileSync(page, 'utf8').matchAll(LINK_RE)) {
      const href = siteHref(page, inline ?? reference);
      if (href.startsWith('/code/')) add(href.slice('/code/'.length).replace(/\/(#.*)?$/, ''));
    }
  }
  for (const c of allChapters()) {
    c.files.forEach((f) => [learnerFile(c, f), solutionFile(c, f)].forEach(add));
    add(testOf(c));
  }
  return [...paths].sort();
}

const LANGUAGES: Record<string, string> = {
  '.ts': 'ts',
  '.js': 'js',
  '.mjs': 'js',
  '.json': 'json',
  '.md': 'md',
  '.py': 'python',
  '.sh': 'sh',
  '.h': 'cpp',
  '.hpp': 'cpp',
  '.cc': 'cpp',
  '.cpp': 'cpp',
  '.c': 'c',
  '.yaml': 'yaml',
  '.txt': 'txt',
  '.wgsl': 'wgsl',
};

/** Above this a text file (a tokenizer.json of megabytes) is described, not shown. */
const MAX_SHOWN_BYTES = 100_000;

const formatSize = (bytes: number) =>
  bytes < 1024 ? `${bytes} B` : bytes < 1024 ** 2 ? `${(bytes / 1024).toFixed(1)} KB` : `${(bytes / 1024 ** 2).toFixed(1)} MB`;

/** Text in a table cell: a pipe would end the cell. */
const cell = (text: string) => text.replace(/\|/g, '\\|');

function fenced(text: string, lang: string): string {
  // The fence must be longer than any run of backticks in the text.
  const longest = Math.max(0, ...(text.match(/`+/g) ?? []).map((run) => run.length));
  const fence = '`'.repeat(Math.max(3, longest + 1));
  return `${fence}${lang}\n${text.replace(/\n$/, '')}\n${fence}`;
}

/** A safetensors file starts with a little-endian u64 header length and the JSON header. */
function safetensorsHeader(path: string): Record<string, { dtype: string; shape: number[] } | Record<string, string>> {
  const fd = openSync(path, 'r');
  try {
    const length = Buffer.alloc(8);
    readSync(fd, length, 0, 8, 0);
    const header = Buffer.alloc(Number(length.readBigUInt64LE()));
    readSync(fd, header, 0, header.length, 8);
    return JSON.parse(header.toString('utf8'));
  } finally {
    closeSync(fd);
  }
}

function safetensorsBody(path: string): string {
  const { __metadata__: metadata, ...tensors } = safetensorsHeader(path);
  const rows = Object.entries(tensors).map(([name, t]) => `| \`${cell(name)}\` | ${t.dtype} | [${(t.shape as number[]).join(', ')}] |`);
  const parts = [`${Object.keys(tensors).length} tensors:`, '', '| tensor | dtype | shape |', '| --- | --- | --- |', ...rows];
  if (metadata) parts.push('', 'Metadata:', '', fenced(JSON.stringify(metadata, null, 2), 'json'));
  return parts.join('\n');
}

function folderBody(folder: string): string {
  const rows = entriesOf(folder).map((entry) => {
    const stat = statSync(join(ROOT, entry));
    const name = entry.slice(folder.length + 1) + (stat.isDirectory() ? '/' : '');
    return `| [${cell(name)}](${codePage(entry)}) | ${stat.isDirectory() ? '' : formatSize(stat.size)} |`;
  });
  return ['| entry | size |', '| --- | --- |', ...rows].join('\n');
}

function fileBody(repoPath: string): string {
  const path = join(ROOT, repoPath);
  const size = statSync(path).size;
  if (repoPath.endsWith('.safetensors')) return `A safetensors file of ${formatSize(size)}. ${safetensorsBody(path)}`;
  const lang = LANGUAGES[extname(repoPath)];
  if (!lang) return `A file of ${formatSize(size)}.`;
  if (size > MAX_SHOWN_BYTES) return `A ${lang} file of ${formatSize(size)}, too large to show here.`;
  return fenced(readFileSync(path, 'utf8'), lang);
}

/** What the chapter registry says a file is: the stub, solution or test of which chapters. */
function rolesOf(repoPath: string): string[] {
  return allChapters().flatMap((c) => {
    const chapter = `[${c.id} ${c.title}](${chapterLink(c)})`;
    const roles: string[] = [];
    if (c.files.some((f) => learnerFile(c, f) === repoPath)) roles.push(`Your code for chapter ${chapter}.`);
    if (c.files.some((f) => solutionFile(c, f) === repoPath)) roles.push(`The reference solution of chapter ${chapter}.`);
    if (testOf(c) === repoPath) roles.push(`The tests of chapter ${chapter}.`);
    return roles;
  });
}

/** The page of one repository path, as markdown. */
export function codePageContent(repoPath: string): string {
  const isFolder = statSync(join(ROOT, repoPath)).isDirectory();
  const body = isFolder ? folderBody(repoPath) : fileBody(repoPath);
  return [`# \`${repoPath}${isFolder ? '/' : ''}\``, '', ...rolesOf(repoPath), '', body, ''].join('\n');
}

/** The pages of docs/code/[path]/index.md, a VitePress dynamic route. */
export function codePages(): { params: { path: string }; content: string }[] {
  return repoPaths().map((path) => ({ params: { path }, content: codePageContent(path) }));
}
