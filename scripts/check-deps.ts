// pnpm check:deps: the workspace packages import one another in one direction, and only what they declare.
//
// dependency-cruiser resolves every import of every module (TypeScript's type-only imports included, as the
// packages' exports map them); this script folds the modules into their packages and checks two rules:
//   - a package imports another only if its package.json lists it (else it works by accident of the layout);
//   - no package reaches itself through others (a cycle: packages that cannot be built or understood apart).
// Modules inside one package may import each other both ways (a tensor and its backend); packages may not.
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { cruise, type ICruiseResult } from 'dependency-cruiser';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
process.chdir(ROOT);

interface Package {
  name: string;
  declared: Set<string>;
  /** Package folder → one import that makes the edge (for the message). */
  imports: Map<string, string>;
}

const packages = new Map<string, Package>();
for (const folder of readdirSync('packages')) {
  const json = JSON.parse(readFileSync(`packages/${folder}/package.json`, 'utf8'));
  const declared = new Set(Object.keys({ ...json.dependencies, ...json.devDependencies, ...json.peerDependencies }));
  packages.set(folder, { name: json.name, declared, imports: new Map() });
}

const packageOf = (path: string) => /^packages\/([^/]+)\//.exec(path)?.[1];

const { output } = await cruise(['packages'], {
  exclude: { path: ['node_modules', '/dist/', '\\.vitepress/(cache|dist)', '/build/'] },
  doNotFollow: { path: 'node_modules' },
  tsPreCompilationDeps: true,
  enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'node', 'default'], extensions: ['.ts', '.mjs', '.js'] },
});
for (const module of (output as ICruiseResult).modules) {
  const from = packageOf(module.source);
  if (!from) continue;
  for (const dep of module.dependencies) {
    const to = packageOf(dep.resolved);
    if (to && to !== from && !packages.get(from)!.imports.has(to))
      packages.get(from)!.imports.set(to, `${module.source} imports ${dep.module}`);
  }
}

const problems: string[] = [];
for (const [folder, pkg] of packages) {
  for (const [to, example] of pkg.imports) {
    const name = packages.get(to)!.name;
    if (!pkg.declared.has(name))
      problems.push(`${pkg.name} imports ${name} without listing it in packages/${folder}/package.json (${example})`);
  }
}

// A depth-first walk: an edge back to a package still on the path closes a cycle.
const state = new Map<string, 'open' | 'done'>();
function walk(folder: string, path: string[]): void {
  state.set(folder, 'open');
  for (const to of packages.get(folder)!.imports.keys()) {
    if (state.get(to) === 'open') {
      const cycle = [...path.slice(path.indexOf(to)), folder, to];
      const edges = cycle.slice(1).map((b, i) => `  ${packages.get(cycle[i])!.imports.get(b)}`);
      problems.push(`a cycle of packages: ${cycle.map((f) => packages.get(f)!.name).join(' → ')}\n${edges.join('\n')}`);
    } else if (!state.has(to)) {
      walk(to, [...path, folder]);
    }
  }
  state.set(folder, 'done');
}
for (const folder of packages.keys()) if (!state.has(folder)) walk(folder, []);

if (problems.length) {
  console.error(problems.join('\n'));
  process.exit(1);
}
const order = [...packages.values()].map((p) => `${p.name.replace('@tiny-llm/', '')} → ${[...p.imports.keys()].join(', ') || '(none)'}`);
console.log(`check:deps: ${packages.size} packages, no cycle, every import declared\n  ${order.join('\n  ')}`);
