// Command-line flags: declared once per command (kind, value name, help, default, allowed values), parsed by
// node:util's parseArgs, checked against the declaration and handed to the command with their types (a
// declared `kind: 'int'` arrives as a number, `choices: WEEKS` as a Week), and printed by --help.
//
// Flags are long only (`--max-tokens 5` or `--max-tokens=5`); a value may start with dashes
// (`--prompt --verbose`) unless it is one of the command's own flags, which means the value was left out.
import { parseArgs } from 'node:util';
import { UsageError } from './errors.ts';

interface FlagHelp {
  /** The value's name in the help ("DIR", "N"); by default the choices joined by |. */
  value?: string;
  help: string;
  /** Shown in the help; the command applies it. */
  default?: string;
}

export type FlagSpec =
  | (FlagHelp & { kind: 'bool' })
  | (FlagHelp & { kind: 'string'; choices?: readonly string[]; check?: (v: string) => string | undefined })
  | (FlagHelp & { kind: 'int' | 'number'; choices?: readonly number[]; check?: (v: number) => string | undefined });

export type FlagSpecs = Record<string, FlagSpec>;

/** The type a flag's value arrives with. */
type ValueOf<F extends FlagSpec> = F extends { choices: readonly (infer C)[] }
  ? C
  : F['kind'] extends 'bool'
    ? boolean
    : F['kind'] extends 'string'
      ? string
      : number;

/** The parsed flags of a declaration: each one present only if it was given. */
export type FlagValues<S extends FlagSpecs> = { [N in keyof S]?: ValueOf<S[N]> };

/** Declares flags keeping each one's kind and choices, so that the parsed values are typed. */
export const defineFlags = <const S extends FlagSpecs>(spec: S): S => spec;

export const atLeast = (min: number) => (v: number) => (v >= min ? undefined : `must be >= ${min}`);
export const inRange =
  (lo: number, hi: number, loOpen = false) =>
  (v: number) =>
    (loOpen ? v > lo : v >= lo) && v <= hi ? undefined : `must be in ${loOpen ? '(' : '['}${lo}, ${hi}]`;

/** Parses a command's arguments; every problem is a UsageError that names the flag and says how to see the help. */
export function parseFlags<S extends FlagSpecs>(
  command: string,
  args: readonly string[],
  spec: S,
  helpCommand = `tiny-llm ${command}`,
): FlagValues<S> {
  const hint = `(see ${helpCommand} --help)`;
  const options = Object.fromEntries(
    Object.entries(spec).map(([name, f]) => [name, { type: f.kind === 'bool' ? 'boolean' : 'string' } as const]),
  );
  // Not strict: parseArgs then reports what it found as tokens, and the checks below say what is wrong in the
  // command's own words (strict mode would throw its own messages, and refuse every value that starts with -).
  const { tokens } = parseArgs({ args: [...args], options, strict: false, allowPositionals: true, tokens: true });
  const values: Record<string, string | number | boolean> = {};
  for (const token of tokens) {
    if (token.kind !== 'option') {
      const what = token.kind === 'positional' ? JSON.stringify(token.value) : '--';
      throw new UsageError(`${command}: unexpected argument ${what}; flags start with -- ${hint}`);
    }
    const { name } = token;
    const flag = Object.hasOwn(spec, name) ? spec[name] : undefined;
    if (!flag || !token.rawName.startsWith('--')) throw new UsageError(`${command}: unknown flag ${token.rawName} ${hint}`);
    if (name in values) throw new UsageError(`${command}: --${name} is given twice`);
    values[name] = parsedValue(command, name, flag, token.value, token.inlineValue, spec);
  }
  return values as FlagValues<S>;
}

function parsedValue(command: string, name: string, flag: FlagSpec, raw: string | undefined, inline: boolean | undefined, spec: FlagSpecs) {
  if (flag.kind === 'bool') {
    if (raw !== undefined) throw new UsageError(`${command}: --${name} takes no value`);
    return true;
  }
  // A flag of this command where the value should be means the value was left out.
  const isOwnFlag = raw !== undefined && !inline && raw.startsWith('--') && Object.hasOwn(spec, raw.slice(2).split('=')[0]);
  if (raw === undefined || isOwnFlag) throw new UsageError(`${command}: --${name} needs a value (${valueName(flag)})`);
  if (flag.kind === 'string') return checked(command, name, raw, raw, flag.choices, flag.check);
  const value = Number(raw);
  const ok = raw.trim() !== '' && Number.isFinite(value) && (flag.kind === 'number' || Number.isSafeInteger(value));
  if (!ok)
    throw new UsageError(`${command}: --${name} expects ${flag.kind === 'int' ? 'an integer' : 'a number'}, got ${JSON.stringify(raw)}`);
  return checked(command, name, raw, value, flag.choices, flag.check);
}

function checked<T extends string | number>(
  command: string,
  name: string,
  raw: string,
  value: T,
  choices?: readonly T[],
  check?: (v: T) => string | undefined,
): T {
  const problem = choices && !choices.includes(value) ? `must be one of ${choices.join(', ')}` : check?.(value);
  if (problem) throw new UsageError(`${command}: --${name} ${problem}, got ${raw}`);
  return value;
}

function valueName(flag: FlagSpec): string {
  if (flag.value) return flag.value;
  if ('choices' in flag && flag.choices) return flag.choices.join('|');
  return flag.kind === 'string' ? 'VALUE' : 'N';
}

/** The flags' part of a command's --help, from the same declaration. */
export function flagsHelp(spec: FlagSpecs): string[] {
  const rows = Object.entries(spec).map(([name, f]) => {
    const def = f.default !== undefined ? ` (default ${f.default})` : '';
    return [`  --${name}${f.kind === 'bool' ? '' : ` ${valueName(f)}`}`, `${f.help}${def}`];
  });
  rows.push(['  --help', 'this help']);
  const width = Math.max(...rows.map(([left]) => left.length)) + 2;
  return rows.map(([left, help]) => `${left.padEnd(width)}${help}`);
}

/** A script's flags: --help prints them and exits; a bad flag prints what is wrong and exits with 2. */
export function scriptFlags<S extends FlagSpecs>(script: string, summary: string, spec: S): FlagValues<S> {
  const args = process.argv.slice(2);
  if (args.includes('--help')) {
    process.stdout.write(`${[`${script}: ${summary}`, '', 'flags:', ...flagsHelp(spec)].join('\n')}\n`);
    process.exit(0);
  }
  try {
    return parseFlags(script, args, spec, script);
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n`);
    process.exit(2);
  }
}
