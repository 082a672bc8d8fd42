// `pnpm demo`: the engine on the embedded model, on a fresh clone with nothing downloaded. It loads
// models/tiny-qwen2-py (a 15.7M-parameter Qwen2 trained on Python code and tool-calling chats) and streams
// a code completion and two chat turns (one answered, one a tool call), with the speed of each.
import { resolve } from 'node:path';
import type { TinyTokenizer } from '@tiny-llm/tokenizer';
import { Conversation, readToolsFile } from './chat.ts';
import { choiceOf, DEFAULT_MODEL, displayPath, loadTokenizerOf, loadWithProgress, MODEL_FLAGS, resolveInput } from './cli.ts';
import { parseFlags } from './flags.ts';
import { deviceErrorOf, isNotImplemented, learnerNotImplemented, oneLine, UserError } from './errors.ts';
import { formatStats, generateTokens, type GenerateResult } from './generate.ts';
import { closeDevice } from './registry.ts';
import type { EngineModel } from './session.ts';

const CODE_PROMPT = 'import os\n\n\ndef list_files(path):\n';
const CHAT_TURNS = ['Hello!', 'What is 37 times 12?'];

const out = (text: string) => process.stdout.write(text);
const dim = (text: string) => (process.stdout.isTTY ? `\x1b[2m${text}\x1b[0m` : text);
const bold = (text: string) => (process.stdout.isTTY ? `\x1b[1m${text}\x1b[0m` : text);

/**
 * Streams a completion of the code prompt and stops at the end of the function: the first line that starts
 * at column 0 after the body (the next definition), so the demo shows one function, not the model
 * repeating itself.
 */
async function completeFunction(model: EngineModel, tokenizer: TinyTokenizer, prompt: string): Promise<GenerateResult['stats']> {
  const session = model.newSession();
  const stop = new AbortController();
  const it = generateTokens(model, session, tokenizer, tokenizer.encode(prompt), { maxTokens: 120, signal: stop.signal });
  let text = '';
  let printed = 0;
  for (;;) {
    const step = await it.next();
    if (step.done) {
      session.dispose();
      if (!stop.signal.aborted) out(text.slice(printed));
      return step.value.stats;
    }
    if (stop.signal.aborted) continue; // the detokenizer's flush after the stop
    text += step.value.text;
    const end = text.search(/\n[^\s]/);
    // Whole lines only, and once the next definition starts, the body without its trailing blank lines.
    // Trailing blank lines wait: they are shown only if the body goes on after them.
    const shown = (end >= 0 ? text.slice(0, end + 1) : text.slice(0, text.lastIndexOf('\n') + 1)).replace(/\n+$/, '\n');
    if (shown.length > printed) {
      out(shown.slice(printed));
      printed = shown.length;
    }
    if (end >= 0) stop.abort();
  }
}

async function demo(argv: readonly string[]): Promise<void> {
  const flags = parseFlags('demo', argv, MODEL_FLAGS);
  const dir = resolveInput(flags.model ?? DEFAULT_MODEL);
  const tokenizer = loadTokenizerOf(dir);
  const model = await loadWithProgress(dir, choiceOf(flags));
  const c = model.config;
  const cache = model.cached ? 'with a KV cache' : 'no KV cache';
  out(
    `${bold('tiny-llm demo')}: ${displayPath(dir)}, a ${c.modelType} of ${c.numHiddenLayers} layers (hidden ${c.hiddenSize}), ` +
      `on ${model.description} (${cache}) on ${model.device}\n\n`,
  );

  out(`${bold('1. Code completion')} ${dim('(raw text, greedy: `pnpm tiny-llm generate --prompt ...`)')}\n`);
  out(dim(CODE_PROMPT));
  const codeStats = await completeFunction(model, tokenizer, CODE_PROMPT);
  out(`${dim(`[${statsLine(codeStats)}]`)}\n\n`);

  const toolsPath = resolve(dir, 'tools.json');
  let tools: ReturnType<typeof readToolsFile> | undefined;
  try {
    tools = readToolsFile(toolsPath);
  } catch {
    tools = undefined; // a model without the demo's tools: chat without them
  }
  const toolsNote = tools ? `, with the tools of ${displayPath(toolsPath)}` : '';
  out(`${bold('2. Chat')} ${dim(`(the chat template${toolsNote}: \`pnpm tiny-llm chat\`)`)}\n`);
  for (const turn of CHAT_TURNS) {
    const conversation = new Conversation(model, tokenizer, { tools });
    out(`${bold('user')}: ${turn}\n${bold('assistant')}: `);
    const it = conversation.reply(turn, { maxTokens: 100 });
    let result: GenerateResult;
    for (;;) {
      const step = await it.next();
      if (step.done) {
        result = step.value;
        break;
      }
      out(step.value);
    }
    out(`\n${dim(`[${statsLine(result.stats)}]`)}\n`);
    conversation.dispose();
  }
  out(
    `\n${dim("The tool call is printed as the model wrote it; to run it and answer (chapter 3.7): pnpm tiny-llm chat --run-tools --message 'What is 37 times 12?'")}\n` +
      `${dim('More: pnpm tiny-llm --help (generate, chat, logits, batch, serve, bench, convert), docs/engine.md')}\n`,
  );
}

function statsLine(s: GenerateResult['stats']): string {
  return formatStats(s).replace(/; stopped: .*$/, '');
}

/** `pnpm demo` (packages/engine/bin/run.mjs): the exit code. */
export async function runFromShell(argv: readonly string[]): Promise<number> {
  try {
    await demo(argv);
    return 0;
  } catch (caught) {
    const err = isNotImplemented(caught) ? learnerNotImplemented(caught) : deviceErrorOf(caught);
    process.stderr.write(`demo: ${err instanceof UserError ? err.message : `internal error: ${oneLine(err)}`}\n`);
    if (process.env.TINY_LLM_DEBUG === '1') process.stderr.write(`${(err as Error).stack}\n`);
    return err instanceof UserError ? err.exitCode : 1;
  } finally {
    closeDevice();
  }
}
