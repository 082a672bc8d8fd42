// Chapter 3.7: tool calls in generated text. Read docs/week3/3.7-agents-and-tool-calling.md, then replace each
// `throw` with your code. A Qwen2.5-style model writes
//
//   <tool_call>
//   {"name": "calculator", "arguments": {"expression": "37 * 12"}}
//   </tool_call>
//
// once per call (several per turn allowed), around or instead of its answer. parseToolCalls reads a whole
// reply; ToolCallStream reads one as it is generated, passing plain text through at once and each call when its
// block closes. A block whose JSON is broken is reported, never thrown: a model's output is not trusted input.
// The agent loop (agent.ts) and the engine's OpenAI-compatible server both read tool calls with this parser.

import { NotImplemented } from '@tiny-llm/week1/not-implemented';

export const TOOL_CALL_OPEN = '<tool_call>';
export const TOOL_CALL_CLOSE = '</tool_call>';

export interface ToolCallRequest {
  name: string;
  arguments: Record<string, unknown>;
}

/** One block of a reply: a call, or what was wrong with it. */
export type ParsedBlock = { call: ToolCallRequest } | { error: string; text: string };

/**
 * The JSON of one <tool_call> block (its text between the markers, trimmed) as a call, or why it is not one:
 * `{ error, text }` when it is not valid JSON (say what JSON.parse said), when it has no "name" (a non-empty
 * string), or when its "arguments" are there but not a JSON object (an array is not one). Missing arguments are
 * {}. Never throws: a model's output is not trusted input.
 */
export function parseToolCallBlock(body: string): ParsedBlock {
  throw new NotImplemented('3.7', 'parseToolCallBlock');
}

/** A whole reply: the text outside the blocks, and each block in order. */
export function parseToolCalls(text: string): { content: string; blocks: ParsedBlock[] } {
  const stream = new ToolCallStream();
  const pieces = [...stream.push(text), ...stream.end()];
  return {
    content: pieces
      .flatMap((p) => ('text' in p ? [p.text] : []))
      .join('')
      .trim(),
    blocks: pieces.flatMap((p) => ('block' in p ? [p.block] : [])),
  };
}

/** The length of the longest end of `text` that could be the beginning of `marker` (text to hold back). */
export function partialMarkerLength(text: string, marker: string): number {
  for (let n = Math.min(marker.length - 1, text.length); n > 0; n--) {
    if (marker.startsWith(text.slice(text.length - n))) return n;
  }
  return 0;
}

export type StreamPiece = { text: string } | { block: ParsedBlock };

/** Splits a reply, as it streams, into plain text and tool call blocks. */
export class ToolCallStream {
  private pending = '';
  private inBlock = false;

  /**
   * Feeds new text; returns what is settled, in order: plain text as soon as it cannot be part of a
   * "<tool_call>" (hold back only an end of the text that could still become one: partialMarkerLength), and each
   * block once its "</tool_call>" arrives, parsed with parseToolCallBlock. Text inside an open block is held.
   */
  push(text: string): StreamPiece[] {
    throw new NotImplemented('3.7', 'ToolCallStream.push');
  }

  /** The end of the reply: the text held back, and a block left open, reported as broken (never closed). */
  end(): StreamPiece[] {
    throw new NotImplemented('3.7', 'ToolCallStream.end');
  }
}
