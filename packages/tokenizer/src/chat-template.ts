// Chat templates: tokenizer_config.json carries a Jinja template that turns a conversation (and the tool
// schemas the model may call) into the exact text the model was trained on. We render it with
// @huggingface/jinja, which matches Python's jinja2 + transformers byte for byte on these templates.
import { Template } from '@huggingface/jinja';

/** A tool the model may call, in the OpenAI / Hugging Face "function" format. */
export interface ToolSchema {
  type: 'function';
  function: { name: string; description?: string; parameters?: Record<string, unknown> };
}

/** One call the assistant made. `arguments` may be an object or (as OpenAI clients send it) a JSON string. */
export interface ToolCall {
  id?: string;
  type?: 'function';
  function: { name: string; arguments: Record<string, unknown> | string };
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool';
  content: string;
  /** An assistant turn that called tools. */
  tool_calls?: ToolCall[];
  /** For a tool message: the call it answers (templates that need it read it). */
  tool_call_id?: string;
  name?: string;
}

export interface ChatTemplateOptions {
  tools?: ToolSchema[];
  /** End with the header of an assistant turn, so the model writes the reply next. Default true. */
  addGenerationPrompt?: boolean;
}

/** The special-token strings a template may refer to (`{{ bos_token }}`, `{{ eos_token }}`...). */
export type SpecialTokens = Record<'bos_token' | 'eos_token' | 'pad_token' | 'unk_token', string | null>;

export class ChatTemplate {
  private readonly template: Template;

  constructor(
    source: string,
    private readonly specialTokens: SpecialTokens,
  ) {
    this.template = new Template(source);
  }

  render(messages: ChatMessage[], options: ChatTemplateOptions = {}): string {
    if (messages.length === 0) throw new Error('applyChatTemplate: the conversation has no messages');
    return this.template.render({
      ...this.specialTokens,
      messages: messages.map(withParsedArguments),
      // Templates test `{% if tools %}`: an empty list must read as "no tools", like Python's None.
      tools: options.tools && options.tools.length > 0 ? options.tools : null,
      add_generation_prompt: options.addGenerationPrompt ?? true,
      // (@huggingface/jinja itself provides raise_exception, which some templates call on misuse.)
    });
  }
}

/**
 * Templates print `tool_call.arguments | tojson`, which expects an object; a JSON string (OpenAI's wire
 * format) would come out quoted twice. Parse such strings first.
 */
function withParsedArguments(message: ChatMessage): ChatMessage {
  if (!message.tool_calls) return message;
  const tool_calls = message.tool_calls.map((call) => {
    const args = call.function.arguments;
    if (typeof args !== 'string') return call;
    return { ...call, function: { ...call.function, arguments: parseArguments(call.function.name, args) } };
  });
  return { ...message, tool_calls };
}

function parseArguments(tool: string, json: string): Record<string, unknown> {
  try {
    return JSON.parse(json) as Record<string, unknown>;
  } catch (err) {
    throw new Error(`applyChatTemplate: the arguments of the call to ${tool} are not valid JSON: ${json}`, { cause: err });
  }
}
