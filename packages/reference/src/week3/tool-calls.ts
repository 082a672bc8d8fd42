// Chapter 3.7: tool calls in generated text. A Qwen2.5-style model writes
//
//   <tool_call>
//   {"name": "calculator", "arguments": {"expression": "37 * 12"}}
//   </tool_call>
//
// once per call (several per turn allowed), around or instead of its answer. parseToolCalls reads a whole
// reply; ToolCallStream reads one as it is generated, passing plain text through at once and each call when its
// block closes. A block whose JSON is broken is reported, never thrown: a model's output is not trusted input.
// The agent loop (agent.ts) and the engine's OpenAI-compatible server both read tool calls with this parser.

export const TOOL_CALL_OPEN = '<tool_call>';
export const TOOL_CALL_CLOSE = '</tool_call>';

export interface ToolCallRequest {
  name: string;
  arguments: Record<string, unknown>;
}

/** One block of a reply: a call, or what was wrong with it. */
export type ParsedBlock = { call: ToolCallRequest } | { error: string; text: string };

/** The JSON of one <tool_call> block as a call, or why it is not one. */
export function parseToolCallBlock(body: string): ParsedBlock {
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch (err) {
    return { error: `a tool call that is not valid JSON (${(err as Error).message})`, text: body };
  }
  const v = value as { name?: unknown; arguments?: unknown } | null;
  if (!v || typeof v !== 'object' || typeof v.name !== 'string' || v.name === '') {
    return { error: 'a tool call without a "name"', text: body };
  }
  const args = v.arguments ?? {};
  if (typeof args !== 'object' || args === null || Array.isArray(args)) {
    return { error: `the arguments of tool call "${v.name}" are not a JSON object`, text: body };
  }
  return { call: { name: v.name, arguments: args as Record<string, unknown> } };
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

  /** Feeds new text; returns what is settled: plain text (never a partial "<tool_call>") and closed blocks. */
  push(text: string): StreamPiece[] {
    this.pending += text;
    const out: StreamPiece[] = [];
    for (;;) {
      if (this.inBlock) {
        const close = this.pending.indexOf(TOOL_CALL_CLOSE);
        if (close < 0) return out;
        out.push({ block: parseToolCallBlock(this.pending.slice(0, close).trim()) });
        this.pending = this.pending.slice(close + TOOL_CALL_CLOSE.length);
        this.inBlock = false;
        continue;
      }
      const open = this.pending.indexOf(TOOL_CALL_OPEN);
      const settled = open >= 0 ? open : this.pending.length - partialMarkerLength(this.pending, TOOL_CALL_OPEN);
      if (settled > 0) out.push({ text: this.pending.slice(0, settled) });
      if (open < 0) {
        this.pending = this.pending.slice(settled);
        return out;
      }
      this.pending = this.pending.slice(open + TOOL_CALL_OPEN.length);
      this.inBlock = true;
    }
  }

  /** The end of the reply: held-back text, and a block left open (reported as broken). */
  end(): StreamPiece[] {
    const rest = this.pending;
    this.pending = '';
    if (this.inBlock) {
      this.inBlock = false;
      return [{ block: { error: 'a tool call that was never closed (no </tool_call>)', text: rest } }];
    }
    return rest ? [{ text: rest }] : [];
  }
}
