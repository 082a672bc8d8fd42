// The book's site: the pages of the repository's docs/ folder, where they are, rendered by VitePress.
import { fileURLToPath } from 'node:url';
import type { Plugin } from 'vite';
import { defineConfig } from 'vitepress';
import { progressPlugin } from '../src/progress.ts';
import { repoLinks } from '../src/repo-files.ts';
import { DOCS, sidebar } from '../src/sidebar.ts';

/**
 * The pages live in docs/, outside this package, where Node's resolution finds no Vue: their compiled
 * imports of Vue resolve as if made from here, to the one Vue the theme uses.
 */
function vueFromThisPackage(): Plugin {
  return {
    name: 'tiny-llm:vue-from-book',
    enforce: 'pre',
    resolveId(source, importer, options) {
      if (!/^vue($|\/)/.test(source) || !importer?.startsWith(DOCS)) return null;
      return this.resolve(source, fileURLToPath(import.meta.url), { ...options, skipSelf: true });
    },
  };
}

const ICON =
  '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect width="16" height="16" rx="3" fill="#3451b2"/><text x="8" y="12" font-size="10" font-family="sans-serif" text-anchor="middle" fill="#fff">t</text></svg>';

export default defineConfig({
  title: 'tiny-llm',
  description: 'LLM inference from tensor operations up: a Qwen2 serving engine in TypeScript',
  // An icon in the page itself: without one, every browser asks for /favicon.ico and gets a 404.
  head: [['link', { rel: 'icon', href: `data:image/svg+xml,${encodeURIComponent(ICON)}` }]],
  srcDir: '../../docs',
  outDir: 'dist',
  // The pages are written to be read in the repository too, where a folder's README.md is its index.
  rewrites: { 'README.md': 'index.md', ':folder(.*)/README.md': ':folder/index.md' },
  // A dead link fails the build (VitePress's default, stated because the book relies on it).
  ignoreDeadLinks: false,
  markdown: {
    // $...$ and $$...$$ rendered to SVG by MathJax at build time: no script, no fonts to load.
    math: true,
    config: repoLinks,
  },
  vite: { plugins: [vueFromThisPackage(), progressPlugin()] },
  themeConfig: {
    sidebar: sidebar(),
    search: { provider: 'local' },
    outline: [2, 3],
  },
});
