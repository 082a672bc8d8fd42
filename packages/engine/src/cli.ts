// The engine's command line: `pnpm tiny-llm <command> [flags]` (node packages/engine/bin/run.mjs cli).
//
//   generate   raw completion of a prompt, streamed to stdout (stats on stderr)
//   chat       the chat template, one turn (--message) or an interactive session, with tools
//   logits     every position's logits of a list of token ids, for parity checks
//   bench      prefill and decode tokens/s next to this machine's ceilings, on a model or a config's shape
//
// The argument parser is small and explicit: each command lists its flags and their types, unknown flags and
// missing values are usage errors (exit 2), bad input is a one-line error (exit 1), and a stack trace is only
// printed for bugs (with TINY_LLM_DEBUG=1).
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { isAbsolute, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Tensor } from '@tiny-llm/tensor-core';
import { loadTokenizer, type TinyTokenizer } from '@tiny-llm/tokenizer';
import { deviceErrorOf, isNotImplemented, learnerNotImplemented, oneLine, UsageError, UserError } from './errors.ts';
import {
  checkPromptFits,
  DEFAULT_NUM_DRAFT,
  formatSpeculative,
  formatStats,
  generate,
  generateSpeculative,
  makeSampler,
  type GenerateOptions,
} from './generate.ts';
import {
  checkModelDir,
  closeDevice,
  DEFAULT_KV_CACHE_MB,
  DEVICES,
  learnerMakeSampler,
  learnerSpeculativeDecode,
  loadModel,
  loadToolRunner,
  SOLUTIONS,
  WEEKS,
  type KvCacheChoice,
  type ModelChoice,
} from './registry.ts';
import type { EngineModel } from './session.ts';
import { atLeast, defineFlags, flagsHelp, inRange, parseFlags, type FlagSpecs, type FlagValues } from './flags.ts';
import { progressBar } from './progress.ts';
import { RANDOM_DTYPES } from './random-weights.ts';
import { LONG_CLIENTS, LONG_PROMPT_TOKENS } from './bench-serve-mixed.ts';

// ---- paths ------------------------------------------------------------------------------------------------------

/** The repository root (this file is packages/engine/src/cli.ts). */
export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const DEFAULT_MODEL = 'models/tiny-qwen2-py';

/**
 * The directory the user typed the command in. pnpm runs a script from the package's folder and passes the
 * user's directory as INIT_CWD; run directly (node, tsx), the process's own cwd is the user's.
 */
export function userCwd(): string {
  const viaPnpm = ['tiny-llm', 'demo', 'serve'].includes(process.env.npm_lifecycle_event ?? '');
  return viaPnpm && process.env.INIT_CWD ? process.env.INIT_CWD : process.cwd();
}

/** An input path: absolute, else relative to the user's directory, else (the embedded models) to the repo root. */
export function resolveInput(path: string): string {
  if (isAbsolute(path)) return path;
  const mine = resolve(userCwd(), path);
  if (existsSync(mine)) return mine;
  const repo = resolve(REPO_ROOT, path);
  return existsSync(repo) ? repo : mine;
}

/** An output path: relative to the user's directory. */
export function resolveOutput(path: string): string {
  return resolve(userCwd(), path);
}

/** A path as short as it can be said (relative to the user's directory when inside it). */
export function displayPath(path: string): string {
  const rel = relative(userCwd(), path);
  return rel && !rel.startsWith('..') && !isAbsolute(rel) ? rel : path;
}

// ---- flags ------------------------------------------------------------------------------------------------------

/** A command: its help, and its run on the raw arguments (parsed against its own flags). */
interface Command {
  summary: string;
  usage: string;
  flags: FlagSpecs;
  /** Extra help text after the flags. */
  notes?: string;
  run: (name: string, args: readonly string[]) => Promise<void>;
}

/** Declares a command whose `run` receives its flags typed by their declaration. */
function command<const S extends FlagSpecs>(
  spec: Omit<Command, 'flags' | 'run'> & { flags: S; run: (flags: FlagValues<S>) => Promise<void> },
): Command {
  return { ...spec, run: (name, args) => spec.run(parseFlags(name, args, spec.flags)) };
}

export const MODEL_FLAGS = defineFlags({
  model: { kind: 'string', value: 'DIR', help: 'a model directory (Hugging Face or MLX layout)', default: DEFAULT_MODEL },
  solution: {
    kind: 'string',
    choices: SOLUTIONS,
    help: "whose code runs: the reference solution (by default the engine, its fast form) or the learner's (packages/week1, week2, week3)",
    default: 'reference',
  },
  week: {
    kind: 'int',
    value: 'N',
    choices: WEEKS,
    help: "run week N's plain chapter model of the solution (1: no KV cache; 2: KV cache, quantized weights; 3: week 2's with mixture-of-experts layers)",
  },
  'tensor-parallel': {
    kind: 'int',
    value: 'N',
    help: 'split the model over N ranks, threads of this process (chapter 3.6): heads and MLP columns, an all-reduce after o_proj and down_proj',
    default: '1',
    check: atLeast(1),
  },
  device: {
    kind: 'string',
    choices: DEVICES,
    help: "where the model runs; webgpu runs a chapter model (the reference's week 2 unless --week) on the GPU WebGPU finds (docs/gpu.md)",
    default: 'cpu',
  },
  exact: {
    kind: 'bool',
    help: "quantized weights multiply float32 activations, the chapters' arithmetic (default: the engine rounds activations to int16 for 4- and 8-bit weights, as llama.cpp does to int8; the chapter models are always exact)",
  },
});
type ModelFlags = FlagValues<typeof MODEL_FLAGS>;

/** The --solution, --week, --device, --tensor-parallel and --exact flags. */
export const choiceOf = (flags: ModelFlags): ModelChoice => ({
  solution: flags.solution,
  week: flags.week,
  device: flags.device,
  tensorParallel: flags['tensor-parallel'],
  exact: flags.exact,
});

const SAMPLING_FLAGS = defineFlags({
  'max-tokens': { kind: 'int', value: 'N', help: 'the most tokens to generate', default: '256', check: atLeast(0) },
  temperature: { kind: 'number', value: 'T', help: '0 is greedy; higher samples more freely', default: '0', check: atLeast(0) },
  'top-k': { kind: 'int', value: 'K', help: 'sample among the K most likely tokens only', check: atLeast(1) },
  'top-p': { kind: 'number', value: 'P', help: 'sample among the most likely tokens whose mass reaches P', check: inRange(0, 1, true) },
  'min-p': { kind: 'number', value: 'M', help: 'drop tokens less likely than M times the most likely one', check: inRange(0, 1) },
  seed: { kind: 'int', value: 'S', help: 'makes sampling reproducible' },
});

function helpText(name: string, cmd: Command): string {
  const notes = cmd.notes ? ['', cmd.notes] : [];
  return [`tiny-llm ${name}: ${cmd.summary}`, '', `usage: ${cmd.usage}`, '', 'flags:', ...flagsHelp(cmd.flags), ...notes].join('\n');
}

// ---- shared steps -----------------------------------------------------------------------------------------------

const log = (line: string) => process.stderr.write(`${line}\n`);

/** The --model directory, checked to be a model directory (a clear message if it is not). */
export function modelDirOf(flags: ModelFlags): string {
  return checkedModelDir(flags.model ?? DEFAULT_MODEL, '--model');
}

/** A model directory given as `flag` PATH, resolved and checked. */
function checkedModelDir(path: string, flag: string): string {
  const dir = resolveInput(path);
  try {
    checkModelDir(dir);
  } catch (err) {
    throw new UserError((err as Error).message.replace(dir, displayPath(dir)).replace(/^--model /, `${flag} `));
  }
  return dir;
}

/** Loads a model with a progress bar (on a terminal) and a line saying what was loaded. */
export async function loadWithProgress(dir: string, choice: ModelChoice): Promise<EngineModel> {
  const bar = progressBar(`loading ${displayPath(dir)}`);
  const t0 = performance.now();
  let model: EngineModel;
  try {
    model = await loadModel(dir, { ...choice, onProgress: (done, total) => bar.update(done, total) });
  } finally {
    bar.done();
  }
  const c = model.config;
  const cache = model.cached ? '' : ', no KV cache';
  log(
    `loaded ${displayPath(dir)} (${c.modelType}, ${c.numHiddenLayers} layers, hidden ${c.hiddenSize}, vocab ${c.vocabSize}; ` +
      `${model.description}${cache}, on ${model.device}) in ${((performance.now() - t0) / 1e3).toFixed(2)} s`,
  );
  return model;
}

export function loadTokenizerOf(dir: string): TinyTokenizer {
  try {
    return loadTokenizer(dir);
  } catch (err) {
    throw new UserError(`cannot load the tokenizer of ${displayPath(dir)}: ${oneLine(err).replace(/^loadTokenizer: /, '')}`);
  }
}

/** The generation options of the sampling flags (the learner's own sampler when it samples). */
export async function generationOptions(
  flags: ModelFlags & FlagValues<typeof SAMPLING_FLAGS> & { 'ignore-eos'?: boolean },
  defaultMaxTokens: number,
): Promise<GenerateOptions> {
  const temperature = flags.temperature ?? 0;
  const options: GenerateOptions = {
    maxTokens: flags['max-tokens'] ?? defaultMaxTokens,
    temperature,
    topK: flags['top-k'],
    topP: flags['top-p'],
    minP: flags['min-p'],
    seed: flags.seed,
    ignoreEos: flags['ignore-eos'] ?? false,
  };
  if (flags.solution === 'learner' && temperature > 0) {
    const make = await learnerMakeSampler();
    options.sampler = make({ temperature, topK: options.topK, topP: options.topP, minP: options.minP, seed: options.seed });
  }
  return options;
}

// ---- commands ---------------------------------------------------------------------------------------------------
// Each command is its flags, then the function that runs it, then its entry (summary, usage, notes) in COMMANDS.

const GENERATE_FLAGS = defineFlags({
  ...MODEL_FLAGS,
  prompt: { kind: 'string', value: 'TEXT', help: 'the text to continue (required)' },
  'draft-model': {
    kind: 'string',
    value: 'DIR',
    help: 'speculative decoding (chapter 3.4): a small model of the same tokenizer drafts for --model',
  },
  'num-draft': {
    kind: 'int',
    value: 'K',
    help: 'tokens the draft proposes per round',
    default: String(DEFAULT_NUM_DRAFT),
    check: atLeast(1),
  },
  ...SAMPLING_FLAGS,
  'ignore-eos': { kind: 'bool', help: 'keep going past end-of-sequence tokens (until --max-tokens)' },
});

async function runGenerate(flags: FlagValues<typeof GENERATE_FLAGS>): Promise<void> {
  if (flags.prompt === undefined) throw new UsageError('generate: --prompt TEXT is required (see tiny-llm generate --help)');
  if (flags['num-draft'] !== undefined && flags['draft-model'] === undefined)
    throw new UsageError('generate: --num-draft needs --draft-model DIR');
  const dir = modelDirOf(flags);
  const tokenizer = loadTokenizerOf(dir);
  // A draft that cannot be used is said before anything loads or runs.
  const draftDir = flags['draft-model'] === undefined ? undefined : checkedDraft(dir, flags['draft-model']);
  const model = await loadWithProgress(dir, choiceOf(flags));
  const options = await generationOptions(flags, 256);
  const ids = tokenizer.encode(flags.prompt);
  checkPromptFits(model, ids);
  if (draftDir !== undefined)
    return runSpeculative(flags, model, await loadWithProgress(draftDir, choiceOf(flags)), tokenizer, ids, options);
  const session = model.newSession();
  const result = await generate(model, session, tokenizer, ids, options, (text) => process.stdout.write(text));
  session.dispose();
  if (process.stdout.isTTY) process.stdout.write('\n');
  log(`[${formatStats(result.stats)}]`);
}

/**
 * The --draft-model directory, checked to be a model directory whose tokenizer is the target's: the same
 * vocabulary, merges and added tokens (a draft proposes token ids, which must mean what they mean to the target).
 */
function checkedDraft(targetDir: string, path: string): string {
  const draftDir = checkedModelDir(path, '--draft-model');
  loadTokenizerOf(draftDir);
  const vocabularyOf = (dir: string) => {
    const { model, added_tokens } = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
    return JSON.stringify([model, added_tokens]);
  };
  if (vocabularyOf(draftDir) !== vocabularyOf(targetDir)) {
    throw new UserError(
      `--draft-model ${displayPath(draftDir)}: its tokenizer is not the one of ${displayPath(targetDir)} (tokenizer.json has another ` +
        'vocabulary, merges or added tokens); a draft model must share the target tokenizer',
    );
  }
  return draftDir;
}

/** generate --draft-model: the text, the stats, then the target alone on the same prompt for the speed-up. */
async function runSpeculative(
  flags: FlagValues<typeof GENERATE_FLAGS>,
  target: EngineModel,
  draft: EngineModel,
  tokenizer: TinyTokenizer,
  ids: number[],
  options: GenerateOptions,
): Promise<void> {
  const numDraft = flags['num-draft'] ?? DEFAULT_NUM_DRAFT;
  const decode = flags.solution === 'learner' ? await learnerSpeculativeDecode() : undefined;
  const it = generateSpeculative(target, draft, tokenizer, ids, { ...options, numDraft, decode });
  let step = await it.next();
  for (; !step.done; step = await it.next()) process.stdout.write(step.value.text);
  const { stats } = step.value;
  if (process.stdout.isTTY) process.stdout.write('\n');
  log(`[${formatStats(stats)}]`);
  log(`[${formatSpeculative(stats.speculative!)}]`);
  if (stats.generatedTokens < 2) return;
  // The same number of tokens from the target alone (past any end of sequence), for the decode speed-up.
  const session = target.newSession();
  const alone = await generate(target, session, tokenizer, ids, { ...options, maxTokens: stats.generatedTokens, ignoreEos: true });
  session.dispose();
  const speedUp = stats.decodeTokensPerS / alone.stats.decodeTokensPerS;
  log(`[the target alone on this prompt: decode ${alone.stats.decodeTokensPerS.toFixed(1)} tok/s; speed-up ${speedUp.toFixed(2)}x]`);
}

const CHAT_FLAGS = defineFlags({
  ...MODEL_FLAGS,
  message: { kind: 'string', value: 'TEXT', help: 'one user turn: print the reply and exit' },
  system: { kind: 'string', value: 'TEXT', help: "a system message (else the template's default)" },
  tools: { kind: 'string', value: 'FILE.json', help: 'a JSON list of OpenAI-style function schemas the model may call' },
  'run-tools': {
    kind: 'bool',
    help: 'run the calls with the built-in demo tools and feed the results back until the model answers (chapter 3.7)',
  },
  ...SAMPLING_FLAGS,
  'max-tokens': { ...SAMPLING_FLAGS['max-tokens'], default: '512' },
  'print-prompt': { kind: 'bool', help: 'print the rendered prompt of --message and exit (no model run)' },
});

async function runChat(flags: FlagValues<typeof CHAT_FLAGS>): Promise<void> {
  const { Conversation, chatInteractive, chatOnce, readToolsFile, renderChatPrompt } = await import('./chat.ts');
  const dir = modelDirOf(flags);
  const toolsFile = flags.tools !== undefined ? readToolsFile(resolveInput(flags.tools)) : undefined;
  const tokenizer = loadTokenizerOf(dir);
  // --run-tools: the tools of the file (each must be a built-in one), or every built-in tool.
  const toolRunner = flags['run-tools'] ? await loadToolRunner(flags.solution ?? 'reference', toolsFile) : undefined;
  const tools = toolRunner?.schemas ?? toolsFile;
  const chatOptions = { system: flags.system, tools, toolRunner };
  if (flags['print-prompt']) {
    if (flags.message === undefined) throw new UsageError('chat: --print-prompt needs --message TEXT');
    const messages = [
      ...(flags.system !== undefined ? [{ role: 'system' as const, content: flags.system }] : []),
      { role: 'user' as const, content: flags.message },
    ];
    process.stdout.write(renderChatPrompt(tokenizer, messages, tools));
    return;
  }
  const model = await loadWithProgress(dir, choiceOf(flags));
  const options = await generationOptions(flags, 512);
  const conversation = new Conversation(model, tokenizer, chatOptions);
  const io = { out: process.stdout, err: process.stderr };
  try {
    if (flags.message !== undefined) await chatOnce(conversation, flags.message, options, io);
    else await chatInteractive(conversation, options, { ...io, input: process.stdin });
  } finally {
    conversation.dispose();
  }
}

const LOGITS_FLAGS = defineFlags({
  ...MODEL_FLAGS,
  ids: { kind: 'string', value: '1,2,3', help: 'the token ids, comma-separated' },
  prompt: { kind: 'string', value: 'TEXT', help: 'or a text, tokenized with the model tokenizer' },
  out: { kind: 'string', value: 'FILE', help: 'write a safetensors file with the tensor `logits` [L, vocab] (else print the top tokens)' },
  top: { kind: 'int', value: 'N', help: 'tokens per position in the printed summary', default: '5', check: atLeast(1) },
});

async function runLogits(flags: FlagValues<typeof LOGITS_FLAGS>): Promise<void> {
  const { computeLogits, formatLogits, parseIds, writeLogits } = await import('./logits.ts');
  if ((flags.ids === undefined) === (flags.prompt === undefined)) {
    throw new UsageError('logits: give the tokens as --ids 1,2,3 or as --prompt TEXT (one of them; see tiny-llm logits --help)');
  }
  const dir = modelDirOf(flags);
  const tokenizer = flags.ids === undefined ? loadTokenizerOf(dir) : undefined;
  const ids = tokenizer ? tokenizer.encode(flags.prompt ?? '') : parseIds(flags.ids ?? '');
  const model = await loadWithProgress(dir, choiceOf(flags));
  const t0 = performance.now();
  const logits: Tensor = await computeLogits(model, ids);
  const seconds = (performance.now() - t0) / 1e3;
  if (flags.out !== undefined) {
    const out = resolveOutput(flags.out);
    writeLogits(out, logits, ids);
    log(`wrote logits float32 [${logits.shape.join(', ')}] to ${displayPath(out)} (${seconds.toFixed(3)} s)`);
  } else {
    const label = tokenizer ? (id: number) => tokenizer.decode([id]) : undefined;
    process.stdout.write(`${formatLogits(logits, ids, flags.top ?? 5, label)}\n`);
  }
  logits.dispose();
}

/** The engine's paged KV cache (batch and serve): its size, and prefix caching. */
const KV_CACHE_FLAGS = defineFlags({
  'kv-cache-mb': {
    kind: 'int',
    value: 'MB',
    help: "the engine's KV cache: a pool of pages of 16 tokens shared by every request (paged attention)",
    default: String(DEFAULT_KV_CACHE_MB),
    check: atLeast(1),
  },
  'no-prefix-cache': { kind: 'bool', help: 'compute every prompt whole: no sharing of the pages of a prefix an earlier request computed' },
});

/** The continuous-batching scheduler's flags (batch and serve), with their default batch. */
const schedulerFlags = (maxBatch: number) =>
  defineFlags({
    'max-batch': { kind: 'int', value: 'N', help: 'requests decoding together', default: String(maxBatch), check: atLeast(1) },
    'prefill-chunk': {
      kind: 'int',
      value: 'T',
      help: 'prompt tokens prefilled per step (chunked prefill)',
      default: '256',
      check: atLeast(1),
    },
    ...KV_CACHE_FLAGS,
  });

/** The --kv-cache-mb and --no-prefix-cache flags. */
const kvCacheOf = (flags: FlagValues<typeof KV_CACHE_FLAGS>): KvCacheChoice => ({
  kvCacheMb: flags['kv-cache-mb'],
  prefixCaching: flags['no-prefix-cache'] ? false : undefined,
});

const BATCH_FLAGS = defineFlags({
  ...MODEL_FLAGS,
  prompts: {
    kind: 'string',
    value: 'FILE.jsonl',
    help: 'one JSON object per line: {"prompt": "...", "max_tokens": 48, "temperature": 0, "top_k", "top_p", "min_p", "seed", "ignore_eos"}',
  },
  ...schedulerFlags(8),
  'max-tokens': { ...SAMPLING_FLAGS['max-tokens'], help: 'the most tokens per prompt, where its line gives no max_tokens' },
  out: { kind: 'string', value: 'FILE.jsonl', help: 'write the results there (else to stdout)' },
});

async function runBatchCommand(flags: FlagValues<typeof BATCH_FLAGS>): Promise<void> {
  const { readPrompts, runBatch } = await import('./batch.ts');
  const { loadScheduler } = await import('./registry.ts');
  if (flags.prompts === undefined) throw new UsageError('batch: --prompts FILE.jsonl is required (see tiny-llm batch --help)');
  const dir = modelDirOf(flags);
  const prompts = readPrompts(resolveInput(flags.prompts), flags['max-tokens'] ?? 256);
  const tokenizer = loadTokenizerOf(dir);
  const maxBatch = flags['max-batch'] ?? 8;
  const prefillChunk = flags['prefill-chunk'] ?? 256;
  const { scheduler, description } = await loadScheduler(dir, choiceOf(flags), { maxBatch, prefillChunk, ...kvCacheOf(flags) });
  log(`batch: ${prompts.length} prompts on ${description}, at most ${maxBatch} at a time, prefill chunks of ${prefillChunk} tokens`);
  const make = flags.solution === 'learner' ? await learnerMakeSampler() : makeSampler;
  const samplerOf = (p: { temperature: number; topK?: number; topP?: number; minP?: number; seed?: number }) =>
    p.temperature > 0 ? make({ temperature: p.temperature, topK: p.topK, topP: p.topP, minP: p.minP, seed: p.seed }) : undefined;
  const { results, seconds, generated } = await runBatch(scheduler, tokenizer, prompts, samplerOf);
  const lines = `${results.map((r) => JSON.stringify(r)).join('\n')}\n`;
  if (flags.out !== undefined) {
    const out = resolveOutput(flags.out);
    try {
      writeFileSync(out, lines);
    } catch (err) {
      throw new UserError(`--out ${out}: cannot write it (${oneLine(err)})`);
    }
  } else {
    process.stdout.write(lines);
  }
  log(`[${prompts.length} prompts, ${generated} tokens generated in ${seconds.toFixed(2)} s: ${(generated / seconds).toFixed(1)} tok/s]`);
}

/** Chapter 3.5: prefill and decode in separate workers (serve and bench-serve). */
const DISAGGREGATED_FLAGS = defineFlags({
  disaggregated: {
    kind: 'bool',
    help: "prefill and decode in separate worker threads, each with the engine's model and a page pool of --kv-cache-mb; a request's pages move to the decode worker after its first token",
  },
});

/** --disaggregated runs the engine's paged model: the chapter models (--week, --solution learner) keep a cache per request. */
function checkDisaggregated(command: string, flags: ModelFlags & FlagValues<typeof DISAGGREGATED_FLAGS>): void {
  if (!flags.disaggregated) return;
  if (flags.week !== undefined || flags.solution === 'learner') {
    throw new UsageError(
      `${command}: --disaggregated runs the engine (the reference solution's paged model); it does not combine with --week or --solution learner`,
    );
  }
}

const SERVE_FLAGS = defineFlags({
  ...MODEL_FLAGS,
  host: { kind: 'string', value: 'HOST', help: 'the address to listen on (0.0.0.0 for every interface)', default: '127.0.0.1' },
  port: {
    kind: 'int',
    value: 'PORT',
    help: 'the port (0: any free one, printed when listening)',
    default: '8000',
    check: inRange(0, 65535),
  },
  'api-key': { kind: 'string', value: 'KEY', help: 'require "Authorization: Bearer KEY" on /v1/*' },
  ...schedulerFlags(16),
  'max-model-len': {
    kind: 'int',
    value: 'N',
    help: "the most tokens of a request, prompt and reply (default the model's context)",
    check: atLeast(2),
  },
  ...DISAGGREGATED_FLAGS,
});

async function runServeCommand(flags: FlagValues<typeof SERVE_FLAGS>): Promise<void> {
  const { runServer } = await import('./server/serve.ts');
  checkDisaggregated('serve', flags);
  const dir = modelDirOf(flags);
  await runServer({
    modelDir: dir,
    modelName: displayPath(dir),
    choice: choiceOf(flags),
    host: flags.host ?? '127.0.0.1',
    port: flags.port ?? 8000,
    apiKey: flags['api-key'],
    maxBatch: flags['max-batch'] ?? 16,
    prefillChunk: flags['prefill-chunk'] ?? 256,
    ...kvCacheOf(flags),
    maxModelLen: flags['max-model-len'],
    disaggregated: flags.disaggregated,
    log,
  });
}

const BENCH_SERVE_FLAGS = defineFlags({
  ...MODEL_FLAGS,
  url: { kind: 'string', value: 'URL', help: 'a running server (default: start one for the run, with the model flags)' },
  clients: {
    kind: 'int',
    value: 'N',
    help: 'concurrent clients, each streaming its requests one after another',
    default: '64; 8 with --disaggregated',
    check: atLeast(1),
  },
  requests: { kind: 'int', value: 'N', help: 'requests in all', default: '4 x clients', check: atLeast(1) },
  'max-tokens': { kind: 'int', value: 'N', help: 'tokens per request', default: '64', check: atLeast(1) },
  'max-batch': { kind: 'int', value: 'N', help: "the started server's batch", default: 'the clients', check: atLeast(1) },
  'prefill-chunk': { kind: 'int', value: 'T', help: "the started server's prefill chunk", check: atLeast(1) },
  json: { kind: 'string', value: 'FILE', help: 'also write the figures as JSON' },
  disaggregated: {
    kind: 'bool',
    help: `the colocated engine, then prefill and decode in separate workers, under a mixed load: the clients' short chats while ${LONG_CLIENTS} more clients send prompts of ${LONG_PROMPT_TOKENS} tokens`,
  },
});

async function runBenchServeCommand(flags: FlagValues<typeof BENCH_SERVE_FLAGS>): Promise<void> {
  const { runBenchServe } = await import('./bench-serve.ts');
  const { runBenchDisaggregated } = await import('./bench-serve-mixed.ts');
  checkDisaggregated('bench-serve', flags);
  if (flags.disaggregated && flags.url !== undefined) {
    throw new UsageError('bench-serve: --disaggregated starts the two servers it compares; it does not combine with --url');
  }
  const clients = flags.clients ?? (flags.disaggregated ? 8 : 64);
  // The started server gets the model flags, and every client in its batch unless told otherwise: waiting for
  // a slot would count in the time to first token.
  const serverFlags = {
    model: flags.model === undefined ? undefined : modelDirOf(flags),
    solution: flags.solution,
    week: flags.week,
    device: flags.device,
    'tensor-parallel': flags['tensor-parallel'],
    exact: flags.exact,
    'max-batch': flags['max-batch'] ?? clients,
    'prefill-chunk': flags['prefill-chunk'],
  };
  // A flag without a value (--exact) is passed when true.
  const serveArg = ([name, value]: [string, string | number | boolean | undefined]) =>
    value === undefined || value === false ? [] : value === true ? [`--${name}`] : [`--${name}`, String(value)];
  if (flags.disaggregated) {
    const dir = modelDirOf(flags);
    await runBenchDisaggregated({
      serveArgs: Object.entries(serverFlags).flatMap(serveArg),
      clients,
      requests: flags.requests ?? 4 * clients,
      maxTokens: flags['max-tokens'] ?? 64,
      json: flags.json === undefined ? undefined : resolveOutput(flags.json),
      promptsFrom: resolveInput('models/tiny-qwen2-py/golden.json'),
      tokenizer: loadTokenizerOf(dir),
      log: (line) => process.stdout.write(`${line}\n`),
    });
    return;
  }
  await runBenchServe({
    url: flags.url,
    serveArgs: Object.entries(serverFlags).flatMap(serveArg),
    clients,
    requests: flags.requests ?? 4 * clients,
    maxTokens: flags['max-tokens'] ?? 64,
    json: flags.json === undefined ? undefined : resolveOutput(flags.json),
    promptsFrom: resolveInput('models/tiny-qwen2-py/golden.json'),
    log: (line) => process.stdout.write(`${line}\n`),
  });
}

const BENCH_FLAGS = defineFlags({
  ...MODEL_FLAGS,
  config: {
    kind: 'string',
    value: 'CONFIG.json',
    help: 'random weights of this config.json shape instead of a model (e.g. fixtures/configs/Qwen2-0.5B-Instruct.json)',
  },
  dtype: { kind: 'string', choices: RANDOM_DTYPES, help: 'the random weights dtype (q4/q8: MLX layout, group 64)', default: 'bf16' },
  'prompt-len': { kind: 'int', value: 'N', help: 'prompt tokens to prefill', default: '256', check: atLeast(1) },
  gen: { kind: 'int', value: 'N', help: 'tokens to decode', default: '128', check: atLeast(1) },
  reps: { kind: 'int', value: 'N', help: 'measure N times and keep the best', default: '2', check: atLeast(1) },
  seed: { kind: 'int', value: 'S', help: 'the random weights and prompt', default: '0' },
  json: { kind: 'string', value: 'FILE', help: 'also write the figures as JSON' },
  batch: {
    kind: 'int',
    value: 'N',
    help: 'also measure the aggregate decode rate of N requests batched together (the engine)',
    check: atLeast(1),
  },
});
export type BenchFlags = FlagValues<typeof BENCH_FLAGS>;

async function runBenchCommand(flags: BenchFlags): Promise<void> {
  const { runBench } = await import('./bench.ts');
  await runBench(flags, { resolveInput, resolveOutput, displayPath, loadWithProgress });
}

const CONVERT_FLAGS = defineFlags({
  model: { kind: 'string', value: 'DIR', help: 'the float checkpoint to convert (Hugging Face layout)', default: DEFAULT_MODEL },
  quantize: { kind: 'string', choices: ['q4', 'q8'], help: 'bits per weight: 4 or 8 (required)' },
  'group-size': { kind: 'int', choices: [32, 64, 128], help: 'input columns that share a scale and a bias', default: '64' },
  out: { kind: 'string', value: 'DIR', help: 'the new model directory (must not exist, or be empty; required)' },
});

async function runConvertCommand(flags: FlagValues<typeof CONVERT_FLAGS>): Promise<void> {
  const { convertModel } = await import('./convert.ts');
  if (flags.quantize === undefined || flags.out === undefined) {
    throw new UsageError('convert: --quantize q4|q8 and --out DIR are required (see tiny-llm convert --help)');
  }
  const dir = modelDirOf(flags);
  const out = resolveOutput(flags.out);
  const bits = flags.quantize === 'q4' ? 4 : 8;
  const groupSize = flags['group-size'] ?? 64;
  const bar = progressBar(`quantizing ${displayPath(dir)} to ${bits} bits, groups of ${groupSize}`);
  const t0 = performance.now();
  let report: ReturnType<typeof convertModel>;
  try {
    report = convertModel(dir, out, { bits, groupSize, onProgress: (done, total) => bar.update(done, total) });
  } finally {
    bar.done();
  }
  if (report.ungrouped.length > 0) {
    const names = report.ungrouped.slice(0, 4).join(', ') + (report.ungrouped.length > 4 ? ', ...' : '');
    log(
      `${report.ungrouped.length} matrices stay in float: their columns do not split into groups of ${groupSize} (${names}); a smaller --group-size quantizes them`,
    );
  }
  const mb = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`;
  log(
    `wrote ${displayPath(out)} (${report.files.join(', ')}): ${report.quantized} matrices quantized, ${report.kept} tensors kept; ` +
      `${mb(report.sourceBytes)} -> ${mb(report.bytes)} in ${((performance.now() - t0) / 1e3).toFixed(1)} s`,
  );
}

export const COMMANDS: Record<string, Command> = {
  generate: command({
    summary: 'complete a prompt as it is (no chat template), streaming the text to stdout',
    usage:
      'tiny-llm generate --prompt TEXT [--model DIR] [--draft-model DIR [--num-draft K]] [--max-tokens N] [--temperature T] [--top-k K] [--top-p P] [--min-p M] [--seed S] [--ignore-eos]',
    flags: GENERATE_FLAGS,
    notes:
      'stdout carries exactly the generated text; the stats (prompt and generated tokens, prefill and decode\n' +
      'tokens/s) go to stderr. Example:\n  pnpm tiny-llm generate --prompt "def fibonacci(n):" --max-tokens 64\n' +
      "With --draft-model, the output is the target's own (greedy: exactly; sampled: in distribution); the stats\n" +
      'add the share of drafted tokens the target accepted, then the target alone on the same prompt for the speed-up:\n' +
      '  pnpm tiny-llm generate --draft-model models/tiny-qwen2-py-draft --prompt "def fibonacci(n):" --max-tokens 128',
    run: runGenerate,
  }),
  chat: command({
    summary: 'talk to the model through its chat template: one turn with --message, else an interactive session',
    usage:
      'tiny-llm chat [--model DIR] [--message TEXT] [--system TEXT] [--tools FILE.json] [--run-tools] [--max-tokens N] [sampling flags]',
    flags: CHAT_FLAGS,
    notes:
      'The reply stops at <|im_end|> (or another end-of-sequence token). A tool call is printed as the model\n' +
      'wrote it. The demo models were trained with the tools of models/tiny-qwen2-py/tools.json:\n' +
      '  pnpm tiny-llm chat --tools models/tiny-qwen2-py/tools.json --message "What is 37 times 12?"\n' +
      'With --run-tools the calls run (calculator, get_weather, get_time: offline demo tools), each result is\n' +
      'printed as [tool: result] and fed back, and the model replies again, until it answers (at most 5 replies).\n' +
      'Interactive: /reset forgets the conversation, /exit or Ctrl-D quits, Ctrl-C stops a reply.',
    run: runChat,
  }),
  logits: command({
    summary: 'the logits of every position of a prompt, float32 [L, vocab] (parity checks)',
    usage: 'tiny-llm logits [--model DIR] (--ids 1,2,3 | --prompt TEXT) [--out FILE.safetensors]',
    flags: LOGITS_FLAGS,
    run: runLogits,
  }),
  batch: command({
    summary: 'many prompts through continuous batching (chapters 2.6, 2.7): JSON lines in, JSON lines out',
    usage:
      'tiny-llm batch --prompts FILE.jsonl [--model DIR] [--max-batch N] [--prefill-chunk T] [--kv-cache-mb MB] [--no-prefix-cache] [--max-tokens N] [--out FILE.jsonl]',
    flags: BATCH_FLAGS,
    notes:
      'Each output line is {"index", "text", "tokens", "finish_reason"}, in the order of the input lines; the aggregate\n' +
      'tokens/s goes to stderr. Example:\n  printf \'{"prompt": "def add(a, b):"}\\n{"prompt": "class Stack:"}\\n\' > p.jsonl\n' +
      '  pnpm tiny-llm batch --prompts p.jsonl --max-tokens 32',
    run: runBatchCommand,
  }),
  serve: command({
    summary: 'an OpenAI-compatible HTTP server (chat completions, completions, tools, streaming) on continuous batching',
    usage:
      'tiny-llm serve [--model DIR] [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--max-batch N] [--prefill-chunk T] [--kv-cache-mb MB] [--no-prefix-cache] [--max-model-len N] [--disaggregated]',
    flags: SERVE_FLAGS,
    notes:
      'Endpoints: POST /v1/chat/completions, POST /v1/completions (stream or not), GET /v1/models, GET /health,\n' +
      'GET /metrics (Prometheus). One log line per request on stderr. See docs/serving.md. Example:\n' +
      '  pnpm serve\n  curl http://127.0.0.1:8000/v1/chat/completions -H "content-type: application/json" \\\n' +
      '    -d \'{"messages": [{"role": "user", "content": "Hello!"}]}\'',
    run: runServeCommand,
  }),
  'bench-serve': command({
    summary: 'the server under load: throughput, time to first token and per output token (p50, p99), /health latency',
    usage:
      'tiny-llm bench-serve [--clients N] [--requests N] [--max-tokens N] [--url URL | --model DIR --max-batch N ... [--disaggregated]] [--json FILE]',
    flags: BENCH_SERVE_FLAGS,
    notes:
      "The clients send the demo model's golden prompts (code and chat), greedy. The same load with one client is measured first.\n" +
      'With --disaggregated: the colocated engine, then prefill and decode in separate workers, each in a server of its own,\n' +
      "under short chats streaming while long prompts prefill; the chats' TTFT and TPOT (p50, p99) side by side.",
    run: runBenchServeCommand,
  }),
  convert: command({
    summary: "quantize a float checkpoint to MLX's 4- or 8-bit layout (as mlx_lm.convert -q), loadable like any MLX model",
    usage: 'tiny-llm convert [--model DIR] --quantize q4|q8 [--group-size 32|64|128] --out DIR',
    flags: CONVERT_FLAGS,
    notes:
      'Every matrix whose columns split into groups (projections, MLP, embedding) is stored as packed integers with a\n' +
      'scale and a bias per group; norms, biases and MoE routers are kept. The tokenizer files come along. Example:\n' +
      '  pnpm tiny-llm convert --quantize q4 --out /tmp/tiny-q4 && pnpm tiny-llm generate --model /tmp/tiny-q4 --prompt "def f("',
    run: runConvertCommand,
  }),
  bench: command({
    summary: 'prefill and decode tokens/s next to the memory-bandwidth and GEMM ceilings measured in the same run',
    usage:
      'tiny-llm bench [--model DIR | --config CONFIG.json [--dtype f32|bf16|q4|q8]] [--prompt-len N] [--gen N] [--batch N] [--json FILE]',
    flags: BENCH_FLAGS,
    notes:
      'decode ratio = decode tok/s x bytes of weights read per token / read bandwidth (decode is memory-bound);\n' +
      'prefill ratio = prefill tok/s x FLOPs per token / GEMM rate (prefill is compute-bound). See docs/engine.md.',
    run: runBenchCommand,
  }),
};

const GENERAL_HELP = [
  'tiny-llm: the reference engine of the tiny-llm TypeScript course',
  '',
  'usage: pnpm tiny-llm <command> [flags]',
  '',
  'commands:',
  ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`),
  '',
  `Every command takes --model DIR (default ${DEFAULT_MODEL}), --solution learner|reference (default reference: the`,
  "engine), --week N (a week's plain chapter model of that solution), --device cpu|webgpu (where it runs) and",
  '--tensor-parallel N (the model split over N threads).',
  "`tiny-llm <command> --help` lists a command's flags. Docs: docs/engine.md.",
].join('\n');

// ---- main -------------------------------------------------------------------------------------------------------

/** Runs one command line; returns the exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  const debug = process.env.TINY_LLM_DEBUG === '1';
  try {
    const [command, ...rest] = argv;
    if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
      (command === undefined ? process.stderr : process.stdout).write(`${GENERAL_HELP}\n`);
      return command === undefined ? 2 : 0;
    }
    const spec = COMMANDS[command];
    if (!spec) throw new UsageError(`unknown command ${JSON.stringify(command)} (commands: ${Object.keys(COMMANDS).join(', ')})`);
    if (rest.includes('--help') || rest.includes('-h')) {
      process.stdout.write(`${helpText(command, spec)}\n`);
      return 0;
    }
    await spec.run(command, rest);
    return 0;
  } catch (caught) {
    const err = isNotImplemented(caught) ? learnerNotImplemented(caught) : deviceErrorOf(caught);
    if (err instanceof UserError) {
      process.stderr.write(`tiny-llm: ${err.message}\n`);
      if (debug && err.cause instanceof Error) process.stderr.write(`${err.cause.stack}\n`);
      return err.exitCode;
    }
    const message = oneLine(err);
    process.stderr.write(`tiny-llm: internal error: ${message}\n`);
    if (debug) process.stderr.write(`${(err as Error)?.stack ?? ''}\n`);
    else process.stderr.write('(a bug: run with TINY_LLM_DEBUG=1 for the stack trace)\n');
    return 1;
  } finally {
    closeDevice();
  }
}

/** `pnpm tiny-llm` (packages/engine/bin/run.mjs): main, where stdout closed early (`generate ... | head`) is not an error. */
export function runFromShell(argv: readonly string[]): Promise<number> {
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
    throw err;
  });
  return main(argv);
}
