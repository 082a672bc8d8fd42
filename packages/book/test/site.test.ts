// The built book in a real browser: headless Chromium (Debian's chromium package, driven by playwright-core;
// nothing is downloaded) opens every page of the site that global-setup.ts built and serves. A page fails on
// a console error, a request that fails, a link or image that does not resolve (anchors included), or a
// formula left unrendered. Then the local search must find the RoPE chapter, the sidebar must list every
// chapter of the registries, and each chapter page must link to its files.
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { type Browser, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { allChapters, learnerFile, ROOT, solutionFile } from '../../../scripts/chapters.ts';
import { chapterLink, linkOf } from '../src/sidebar.ts';
import { BOOK, DIST } from './global-setup.ts';

const CHROMIUM = '/usr/bin/chromium';
const SCREENSHOTS = join(BOOK, 'screenshots');
const site = inject('site');

/** Every page of the build, as the address a link uses: index.html is its folder's "/". */
function builtPages(dir = DIST): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return entry.name === 'assets' ? [] : builtPages(path);
    if (!entry.name.endsWith('.html')) return [];
    return [`/${relative(DIST, path)}`.replace(/(^|\/)index\.html$/, '$1')];
  });
}

/** The book's own pages (not the generated code pages) that write formulas, from their markdown. */
function pagesWithFormulas(dir = join(ROOT, 'docs')): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return entry.name === 'code' ? [] : pagesWithFormulas(path);
    if (!entry.name.endsWith('.md')) return [];
    // Code (fenced or inline) may hold a "$" of its own: only the prose counts.
    const prose = readFileSync(path, 'utf8')
      .replace(/^ *(`{3,}|~{3,})[\s\S]*?^ *\1/gm, '')
      .replace(/`[^`\n]*`/g, '');
    return prose.includes('$') ? [linkOf(relative(join(ROOT, 'docs'), path))] : [];
  });
}

const FORMULA_PAGES = pagesWithFormulas();

let browser: Browser;
let page: Page;

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`no browser at ${CHROMIUM}: install Debian's chromium package (apt-get install chromium), as .ci/run does`);
  }
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    timeout: 30_000,
    // This machine's network is closed: Chromium's background connections would only fail, noisily.
    args: [
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(15_000);
});

afterAll(async () => {
  await browser?.close();
});

/** Each address fetched once: its status and its HTML, for the links of every page that point at it. */
const fetched = new Map<string, Promise<{ status: number; html: string }>>();
function fetchOnce(url: string) {
  if (!fetched.has(url))
    fetched.set(
      url,
      fetch(url).then(async (r) => ({ status: r.status, html: await r.text() })),
    );
  return fetched.get(url)!;
}

interface Seen {
  urls: string[];
  ids: string[];
  formulas: number;
  mathErrors: number;
  /** The page's prose, formulas and code taken out: what is left must hold no TeX. */
  prose: string;
}

/** Vue sets __vue_app__ on its root element once the app has mounted: the page has hydrated. */
const hydrated = () => page.waitForFunction(() => '__vue_app__' in (document.querySelector('#app') ?? {}));

/**
 * Shows a page in the browser. The book's pages are loaded from their address. The code pages, ninety and
 * more from one template, are reached as a reader reaches them, by following a link inside the running
 * site: a full load of each would take a minute of CI time to test the same template's hydration again.
 */
async function open(path: string): Promise<void> {
  if (!path.startsWith('/code/')) {
    await page.goto(site + path);
    await hydrated();
    return;
  }
  if (!page.url().startsWith(site)) {
    await page.goto(`${site}/`);
    await hydrated();
  }
  await page.evaluate((path) => {
    // The page's content (the page component inside .vp-doc) is a new element once the next page renders.
    document.querySelector('.vp-doc > div')?.setAttribute('data-left', '');
    const link = Object.assign(document.createElement('a'), { href: path });
    document.body.append(link);
    link.click();
    link.remove();
  }, path);
  await page.waitForFunction((path) => location.pathname === path && document.querySelector('.vp-doc > div:not([data-left])'), path);
}

/** Opens a page and reports what is wrong with it, one line per problem. */
async function problemsOf(path: string): Promise<string[]> {
  const problems: string[] = [];
  const onConsole = (m: { type(): string; text(): string }) => {
    if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
  };
  const onPageError = (error: Error) => problems.push(`uncaught error: ${error.message}`);
  const onFailed = (r: { url(): string; failure(): { errorText: string } | null }) => {
    // A prefetch that the next navigation cancels is not a failure; every address is fetched on its own below.
    if (r.failure()?.errorText !== 'net::ERR_ABORTED') problems.push(`request failed: ${r.url()} (${r.failure()?.errorText})`);
  };
  const onResponse = (r: { url(): string; status(): number }) => {
    if (r.status() >= 400) problems.push(`status ${r.status()}: ${r.url()}`);
  };
  page.on('console', onConsole);
  page.on('pageerror', onPageError);
  page.on('requestfailed', onFailed);
  page.on('response', onResponse);
  try {
    await open(path);
    const seen: Seen = await page.evaluate(() => {
      const doc = document.querySelector('.vp-doc');
      const prose = doc?.cloneNode(true) as HTMLElement | undefined;
      prose?.querySelectorAll('mjx-container, pre, code').forEach((e) => e.remove());
      return {
        urls: [
          ...[...document.querySelectorAll('a[href]')].map((a) => (a as HTMLAnchorElement).href),
          ...[...document.querySelectorAll('link[href]')].map((l) => (l as HTMLLinkElement).href),
          ...[...document.querySelectorAll('[src]')].map((e) => (e as HTMLImageElement).src),
        ],
        ids: [...document.querySelectorAll('[id]')].map((e) => e.id),
        // Typeset: MathJax's SVG, drawn with a width.
        formulas: [...(doc?.querySelectorAll('mjx-container > svg') ?? [])].filter((svg) => svg.getBoundingClientRect().width > 0).length,
        mathErrors: doc?.querySelectorAll('mjx-merror, [data-mjx-error]').length ?? 0,
        prose: prose?.textContent ?? '',
      };
    });
    problems.push(...(await brokenLinks(path, seen)));
    if (seen.mathErrors) problems.push(`${seen.mathErrors} formula(s) MathJax could not typeset`);
    const tex = /\$|\\[a-zA-Z]{2,}/.exec(seen.prose);
    if (tex) problems.push(`unrendered TeX in the text: ...${seen.prose.slice(Math.max(0, tex.index - 40), tex.index + 40)}...`);
    if (FORMULA_PAGES.includes(path) && seen.formulas === 0) problems.push('the page writes formulas but none is rendered');
  } finally {
    page.off('console', onConsole);
    page.off('pageerror', onPageError);
    page.off('requestfailed', onFailed);
    page.off('response', onResponse);
  }
  return problems;
}

async function brokenLinks(path: string, seen: Seen): Promise<string[]> {
  const problems: string[] = [];
  for (const url of new Set(seen.urls)) {
    const { origin, hash } = new URL(url);
    // Links to other sites are not followed: this machine may have no network.
    if (origin !== site) continue;
    const target = url.replace(/#.*$/, '');
    const { status, html } = await fetchOnce(target);
    if (status !== 200) problems.push(`broken link: ${url} (status ${status})`);
    const id = decodeURIComponent(hash.slice(1));
    if (!id) continue;
    const found = target === site + path ? seen.ids.includes(id) : html.includes(`id="${id}"`);
    if (!found) problems.push(`broken anchor: ${url} (no element with id "${id}")`);
  }
  return problems;
}

describe('every page of the built site', () => {
  const pages = builtPages();
  it('the build holds the book', () => {
    expect(pages).toContain('/');
    expect(pages).toContain('/week1/1.2-rope.html');
  });
  for (const path of pages) {
    it(`${path} renders without errors, and its links, images and formulas work`, async () => {
      expect(await problemsOf(path)).toEqual([]);
    });
  }
});

describe('the book', () => {
  it('local search finds "RoPE" and leads to its chapter', async () => {
    await open('/');
    await page.getByRole('button', { name: 'Search' }).click();
    await page.locator('.VPLocalSearchBox input').fill('RoPE');
    // The best match comes first: the chapter itself or one of its sections.
    const first = page.locator('.VPLocalSearchBox a.result').first();
    await expect(first.getAttribute('href')).resolves.toMatch(/^\/week1\/1\.2-rope\.html(#|$)/);
    await first.click();
    await page.waitForURL((url) => url.pathname === '/week1/1.2-rope.html');
    // The site swaps the page in after the URL changes: wait for the chapter's title to be rendered.
    await page.locator('h1', { hasText: '1.2 RoPE' }).waitFor({ timeout: 15_000 });
  });

  it('the sidebar lists every chapter of the registries, linked to its page', async () => {
    await open('/');
    const links = await page.locator('.VPSidebar a').evaluateAll((as) => as.map((a) => a.getAttribute('href')));
    for (const chapter of allChapters()) {
      expect(links, `chapter ${chapter.id}`).toContain(chapterLink(chapter));
    }
  });

  it('each chapter page links to its stub, solution, test and fixtures', async () => {
    for (const c of allChapters()) {
      await open(chapterLink(c));
      const links = await page.locator('.vp-doc a').evaluateAll((as) => as.map((a) => a.getAttribute('href')));
      const files = [...c.files.flatMap((f) => [learnerFile(c, f), solutionFile(c, f)]), learnerFile(c, c.test)];
      for (const file of files) expect(links, `chapter ${c.id}`).toContain(`/code/${file}/`);
      const fixtures = links.filter((href) => /^\/code\/(fixtures|models)\//.test(href ?? ''));
      expect(fixtures.length, `chapter ${c.id} links to no fixture`).toBeGreaterThan(0);
    }
  });

  it('the progress page says how to see the table: the static site has no grader', async () => {
    await open('/progress.html');
    await expect(page.locator('.vp-doc').textContent()).resolves.toContain('pnpm docs:dev');
  });

  it('a chapter page looks right (screenshot in packages/book/screenshots/)', async () => {
    await open('/week1/1.2-rope.html');
    mkdirSync(SCREENSHOTS, { recursive: true });
    await page.screenshot({ path: join(SCREENSHOTS, '1.2-rope.png') });
    await expect(page.locator('.VPSidebar').isVisible()).resolves.toBe(true);
    await expect(page.locator('.VPDocAsideOutline').isVisible()).resolves.toBe(true);
  });
});
