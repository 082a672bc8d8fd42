// Chapter 3.7: AI agents and tool calling. Read docs/week3/3.7-agents-and-tool-calling.md, then replace each
// `throw` with your code. A model that was trained with tool schemas in its prompt answers a
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
import { NotImplemented } from '@tiny-llm/week1/not-implemented';
import type { ParsedBlock } from './tool-calls.ts';

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
   * Runs one block of a reply (parseToolCallBlock's). Whatever goes wrong comes back as an error message for the
   * model, `{ content: "error: ...", error: true }`, never as an exception, so that the loop goes on:
   * - a block that is not a call: its error (name null, arguments {});
   * - an unknown tool: say which tools there are;
   * - arguments that do not fit the schema's `parameters`: a `required` one missing, or one whose JSON type
   *   is not its property's `type` ("string", "number", "integer", "boolean", "object", "array");
   * - a tool that throws: its message.
   * Otherwise `{ name, arguments, content: the tool's answer, error: false }`.
   */
  call(block: ParsedBlock): ToolOutcome {
    throw new NotImplemented('3.7', 'ToolRegistry.call');
  }
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

/**
 * The agent loop: the model replies, its tool calls run and their results go back, until it answers.
 * maxSteps (default 5) must be an integer >= 1 (a RangeError otherwise). Each step:
 *   1. reply = await model.reply(conversation, registry.schemas); parseToolCalls(reply) splits it;
 *   2. the reply joins the conversation as it was written, { role: 'assistant', content: reply };
 *   3. each block goes through registry.call; the step ({ reply, calls }) is recorded and given to onStep;
 *   4. no block: the answer is the reply's text outside the blocks (stopReason 'answer'); else each call's
 *      content joins the conversation as { role: 'tool', content }, in order, and the loop goes on.
 * After maxSteps replies that all called tools: answer null, stopReason 'step limit'. The messages given are
 * not changed: the result's messages are a new list.
 */
export async function runAgent(
  model: ChatModel,
  registry: ToolRegistry,
  messages: readonly ChatMessage[],
  options: AgentOptions = {},
): Promise<AgentResult> {
  throw new NotImplemented('3.7', 'runAgent');
}
