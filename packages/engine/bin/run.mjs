// `pnpm tiny-llm <command>` and `pnpm demo`: node packages/engine/bin/run.mjs cli|demo [args]. Runs the entry
// from the bundle of the current sources (bundle.mjs says why a bundle, not tsx), in this process.
import { ENTRIES, loadEntry } from './bundle.mjs';

const [name, ...args] = process.argv.slice(2);
if (!(name in ENTRIES)) {
  process.stderr.write(`run.mjs: the first argument names the entry (${Object.keys(ENTRIES).join(' or ')}), not ${name}\n`);
  process.exit(2);
}
// The bundle's source map turns a stack trace back into the TypeScript files' lines, for TINY_LLM_DEBUG=1.
if (process.env.TINY_LLM_DEBUG === '1') process.setSourceMapsEnabled(true);
const { runFromShell } = await loadEntry(name);
process.exitCode = await runFromShell(args);
