// `tiny-llm chat`: conversations through the model's chat template. One turn with --message, or an interactive
// session that keeps the history (and the KV cache: each turn feeds only the tokens the template added since
// the last one). Tool schemas (--tools FILE.json, a list of OpenAI-style function schemas) go into the
// template; a tool call comes out as the model wrote it, or, with --run-tools, runs through chapter 3.7's agent
// loop: the call, the tool's result and the model's next reply are printed until it answers.
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import type { AgentOptions, AgentResult, ChatModel } from '@tiny-llm/reference/week3';
import type { ChatMessage, TinyTokenizer, ToolSchema } from '@tiny-llm/tokenizer';
import { UserError } from './errors.ts';
import { formatStats, generate, streamGenerate, type GenerateOptions, type GenerateResult } from './generate.ts';
import type { EngineModel, Session } from './session.ts';

/**
 * Reads a tools file: a JSON list of function schemas, `{"type": "function", "function": {"name", "description",
 * "parameters"}}` (a bare `{"name", ...}` is wrapped into that form).
 */
export function readToolsFile(path: string): ToolSchema[] {
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : `not valid JSON (${(err as Error).message})`;
    throw new UserError(`--tools ${path}: ${why}`);
  }
  if (!Array.isArray(value)) throw new UserError(`--tools ${path}: expected a JSON list of function schemas`);
  return value.map((entry, i) => {
    const tool = entry as Record<string, unknown> | null;
    const fn = (tool?.type === 'function' ? tool.function : tool) as Record<string, unknown> | null | undefined;
    if (!fn || typeof fn !== 'object' || typeof fn.name !== 'string' || fn.name === '') {
      throw new UserError(`--tools ${path}: entry ${i} is not a function schema ({"type": "function", "function": {"name": ...}})`);
    }
    return { type: 'function', function: fn } as ToolSchema;
  });
}

/** Chapter 3.7's agent loop over a set of tools (the reference's or the learner's: see registry.ts). */
export interface ToolRunner {
  /** The tools' schemas, shown to the model. */
  readonly schemas: ToolSchema[];
  run(model: ChatModel, messages: readonly ChatMessage[], options: AgentOptions): Promise<AgentResult>;
}

export interface ChatOptions {
  system?: string;
  tools?: ToolSchema[];
  /** Run the model's tool calls (--run-tools): each turn goes through the agent loop with these tools. */
  toolRunner?: ToolRunner;
}

/** The conversation so far as the prompt text the model reads (ending with the assistant header). */
export function renderChatPrompt(tokenizer: TinyTokenizer, messages: ChatMessage[], tools?: ToolSchema[]): string {
  if (!tokenizer.hasChatTemplate) {
    throw new UserError(`the tokenizer in ${tokenizer.modelDir} has no chat template (a base model?): use generate instead`);
  }
  return tokenizer.applyChatTemplate(messages, { tools, addGenerationPrompt: true });
}

/** A conversation with history, on one session (so the cache of earlier turns is reused). */
export class Conversation {
  readonly messages: ChatMessage[] = [];
  private readonly session: Session;

  constructor(
    readonly model: EngineModel,
    readonly tokenizer: TinyTokenizer,
    readonly options: ChatOptions = {},
  ) {
    this.session = model.newSession();
    this.reset();
  }

  reset(): void {
    this.messages.length = 0;
    if (this.options.system !== undefined) this.messages.push({ role: 'system', content: this.options.system });
  }

  /** The prompt for the conversation plus one more user message. */
  promptFor(userText: string): string {
    return renderChatPrompt(this.tokenizer, [...this.messages, { role: 'user', content: userText }], this.options.tools);
  }

  /**
   * One user turn through the agent loop: each reply of the model streams to io.out, each tool's result is
   * printed after the call; the turn, tool responses included, joins the history.
   */
  async agentTurn(runner: ToolRunner, userText: string, generation: GenerateOptions, io: ChatIo): Promise<AgentResult> {
    // Every reply runs on the conversation's session: a step prefills only the tool responses it adds.
    const model: ChatModel = {
      reply: async (messages, tools) => {
        const ids = this.tokenizer.encode(renderChatPrompt(this.tokenizer, [...messages], [...tools]));
        const result = await generate(this.model, this.session, this.tokenizer, ids, generation, (text) => io.out.write(text));
        io.out.write('\n');
        io.err.write(`[${formatStats(result.stats)}]\n`);
        if (result.stats.stopReason === 'aborted') throw new UserError('the reply was interrupted');
        return result.text;
      },
    };
    const onStep: AgentOptions['onStep'] = (step) => {
      for (const call of step.calls) io.out.write(`[${call.name ?? 'tool call'}: ${call.content}]\n`);
    };
    const result = await runner.run(model, [...this.messages, { role: 'user', content: userText }], { onStep });
    this.messages.splice(0, this.messages.length, ...result.messages);
    if (result.stopReason === 'step limit') io.err.write('(the model was still calling tools at the step limit: no answer)\n');
    return result;
  }

  /** Streams the reply to userText; the turn joins the history once the reply is complete. */
  async *reply(userText: string, generation: GenerateOptions = {}): AsyncGenerator<string, GenerateResult> {
    const prompt = this.promptFor(userText);
    const ids = this.tokenizer.encode(prompt);
    const stream = streamGenerate(this.model, this.session, this.tokenizer, ids, generation);
    for (;;) {
      const step = await stream.next();
      if (step.done) {
        this.messages.push({ role: 'user', content: userText }, { role: 'assistant', content: step.value.text });
        return step.value;
      }
      if (step.value.text) yield step.value.text;
    }
  }

  dispose(): void {
    this.session.dispose();
  }
}

export interface ChatIo {
  out: NodeJS.WritableStream;
  err: NodeJS.WritableStream;
}

async function streamReply(conversation: Conversation, text: string, generation: GenerateOptions, io: ChatIo): Promise<GenerateResult> {
  const it = conversation.reply(text, generation);
  for (;;) {
    const step = await it.next();
    if (step.done) {
      io.out.write('\n');
      io.err.write(`[${formatStats(step.value.stats)}]\n`);
      return step.value;
    }
    io.out.write(step.value);
  }
}

/** One user turn: a streamed reply, or with a tool runner the agent loop. */
async function turn(conversation: Conversation, text: string, generation: GenerateOptions, io: ChatIo): Promise<void> {
  const runner = conversation.options.toolRunner;
  if (runner) await conversation.agentTurn(runner, text, generation, io);
  else await streamReply(conversation, text, generation, io);
}

/** `chat --message TEXT`: one turn, printed, then exit. */
export async function chatOnce(conversation: Conversation, message: string, generation: GenerateOptions, io: ChatIo): Promise<void> {
  await turn(conversation, message, generation, io);
}

/**
 * The interactive session: a line per user turn, /reset to forget the history, /exit or Ctrl-D to quit.
 * Ctrl-C stops the reply being generated (and quits when nothing is being generated).
 */
export async function chatInteractive(
  conversation: Conversation,
  generation: GenerateOptions,
  io: ChatIo & { input: NodeJS.ReadableStream & { isTTY?: boolean } },
): Promise<void> {
  const interactive = Boolean(io.input.isTTY);
  const rl = createInterface({ input: io.input, output: io.out, terminal: interactive });
  let generating: AbortController | null = null;
  rl.on('SIGINT', () => {
    if (generating) generating.abort();
    else rl.close();
  });
  if (interactive) {
    io.err.write('Chat with the model. /reset forgets the conversation, /exit (or Ctrl-D) quits.\n');
  }
  rl.setPrompt('> ');
  const lines = rl[Symbol.asyncIterator]();
  try {
    for (;;) {
      if (interactive) rl.prompt();
      const { value, done } = await lines.next();
      if (done) break;
      const line = (value as string).trim();
      if (line === '') continue;
      if (line === '/exit' || line === '/quit') break;
      if (line === '/reset') {
        conversation.reset();
        io.err.write('(conversation forgotten)\n');
        continue;
      }
      generating = new AbortController();
      try {
        await turn(conversation, line, { ...generation, signal: generating.signal }, io);
      } catch (err) {
        // A turn that cannot run (the conversation outgrew the context) ends the turn, not the session.
        if (!(err instanceof UserError)) throw err;
        io.err.write(`tiny-llm: ${err.message}${/context/.test(err.message) ? ' (/reset starts over)' : ''}\n`);
      } finally {
        generating = null;
      }
    }
  } finally {
    rl.close();
    if (interactive) io.out.write('\n');
  }
}
