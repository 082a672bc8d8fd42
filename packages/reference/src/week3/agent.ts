// Chapter 3.7: AI agents and tool calling. A model that was trained with tool schemas in its prompt answers a
// question it cannot answer alone (37 times 12, the weather in Paris) with tool calls instead of text. The agent
// loop runs them and feeds their results back, until the model answers:
//
//   1. the model replies to the conversation (the tools' schemas in its prompt, through the chat template);
//   2. no <tool_call> in the reply: that is the answer, the loop ends;
//   3. else each call runs (the registry finds the tool; a malformed call, an unknown tool or a tool that throws
//      becomes an error message, never an exception), and the results go back as `tool` messages, which the
//      chat template renders as <tool_response> blocks; then back to 1, at most maxSteps replies.
//
// The model's reply joins the conversation as it was written, tool calls included: the prompt of the next step
// is then the last one plus what the model wrote plus the tool responses, so a model with a KV cache only
// prefills the responses.
import type { ChatMessage, ToolSchema } from '@tiny-llm/tokenizer';
import { parseToolCalls, type ParsedBlock } from './tool-calls.ts';

/**
 * A model in a conversation: its reply to the messages so far, with these tools on offer (a promise of it where
 * the reply takes waiting: a model on a GPU, or behind an API).
 */
export interface ChatModel {
  reply(messages: readonly ChatMessage[], tools: readonly ToolSchema[]): string | Promise<string>;
}

/** A tool: its schema (what the model is told about it) and what runs. Its answer is text for the model. */
export interface Tool {
  schema: ToolSchema;
  run(args: Record<string, unknown>): string;
}

/** What came of one tool call of a reply. */
export interface ToolOutcome {
  /** The tool called (null when the call could not be read). */
  name: string | null;
  arguments: Record<string, unknown>;
  /** What the model reads back: the tool's answer, or what went wrong. */
  content: string;
  error: boolean;
}

/** The tools an agent may call, by name. */
export class ToolRegistry {
  private readonly tools = new Map<string, Tool>();

  constructor(tools: readonly Tool[] = []) {
    for (const tool of tools) this.register(tool);
  }

  register(tool: Tool): void {
    const name = tool.schema.function.name;
    if (this.tools.has(name)) throw new Error(`ToolRegistry: a tool named "${name}" is already registered`);
    this.tools.set(name, tool);
  }

  /** The schemas to put in the prompt, in the order the tools were registered. */
  get schemas(): ToolSchema[] {
    return [...this.tools.values()].map((t) => t.schema);
  }

  /**
   * Runs one block of a reply. Whatever goes wrong (a block that is not a call, an unknown tool, a missing or
   * mistyped argument, a tool that throws) comes back as an error message for the model: the loop goes on.
   */
  call(block: ParsedBlock): ToolOutcome {
    if ('error' in block) return { name: null, arguments: {}, content: `error: ${block.error}`, error: true };
    const { name, arguments: args } = block.call;
    const failed = (why: string): ToolOutcome => ({ name, arguments: args, content: `error: ${why}`, error: true });
    const tool = this.tools.get(name);
    if (!tool) return failed(`there is no tool "${name}" (the tools are ${[...this.tools.keys()].join(', ') || 'none'})`);
    const problem = argumentProblem(tool.schema, args);
    if (problem) return failed(`${name}: ${problem}`);
    try {
      return { name, arguments: args, content: String(tool.run(args)), error: false };
    } catch (err) {
      return failed(`${name} failed: ${(err as Error)?.message ?? String(err)}`);
    }
  }
}

/** What is wrong with a call's arguments against its schema's required properties and their JSON types. */
function argumentProblem(schema: ToolSchema, args: Record<string, unknown>): string | undefined {
  const parameters = (schema.function.parameters ?? {}) as { properties?: Record<string, { type?: string }>; required?: string[] };
  for (const name of parameters.required ?? []) {
    if (!(name in args)) return `the argument "${name}" is missing`;
  }
  for (const [name, value] of Object.entries(args)) {
    const type = parameters.properties?.[name]?.type;
    const actual = Array.isArray(value) ? 'array' : value === null ? 'null' : typeof value;
    const fits = type === undefined || actual === type || (type === 'integer' && Number.isInteger(value));
    if (!fits) return `the argument "${name}" must be of type ${type}, got ${JSON.stringify(value)}`;
  }
  return undefined;
}

/** One reply of the model and what its tool calls gave. */
export interface AgentStep {
  reply: string;
  calls: ToolOutcome[];
}

export interface AgentOptions {
  /** The most replies of the model (default 5). */
  maxSteps?: number;
  /** Called after each step (a CLI prints the calls and their results). */
  onStep?: (step: AgentStep) => void;
}

export interface AgentResult {
  /** The final reply's text (outside any tool call), or null when the step limit came first. */
  answer: string | null;
  /** The conversation: the messages given, then every reply and tool response. */
  messages: ChatMessage[];
  steps: AgentStep[];
  stopReason: 'answer' | 'step limit';
}

/** The agent loop: the model replies, its tool calls run and their results go back, until it answers. */
export async function runAgent(
  model: ChatModel,
  registry: ToolRegistry,
  messages: readonly ChatMessage[],
  options: AgentOptions = {},
): Promise<AgentResult> {
  const maxSteps = options.maxSteps ?? 5;
  if (!Number.isInteger(maxSteps) || maxSteps < 1) throw new RangeError(`runAgent: maxSteps must be an integer >= 1, got ${maxSteps}`);
  const conversation = [...messages];
  const steps: AgentStep[] = [];
  for (let i = 0; i < maxSteps; i++) {
    const reply = await model.reply(conversation, registry.schemas);
    const { content, blocks } = parseToolCalls(reply);
    conversation.push({ role: 'assistant', content: reply });
    const step: AgentStep = { reply, calls: blocks.map((block) => registry.call(block)) };
    steps.push(step);
    options.onStep?.(step);
    if (blocks.length === 0) return { answer: content, messages: conversation, steps, stopReason: 'answer' };
    for (const call of step.calls) conversation.push({ role: 'tool', content: call.content });
  }
  return { answer: null, messages: conversation, steps, stopReason: 'step limit' };
}
