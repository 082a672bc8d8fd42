// Streaming text out of a token stream. Byte-level BPE splits a multi-byte UTF-8 character (Chinese, emoji)
// over several tokens, so decoding tokens one at a time would print U+FFFD (the replacement character) for
// each fragment. Instead we keep a small window of recent ids and emit text only once it decodes cleanly.
//
// The window is the prefix-offset / read-offset scheme of Hugging Face text-generation-inference and vLLM:
//   ids[prefixOffset, readOffset)  already emitted; decoded again only as context, because some decoders
//                                  (SentencePiece's leading-space rule) decode a token differently at the
//                                  start of a text than after other tokens;
//   ids[readOffset, ...)           not yet emitted.
// After each push we decode the whole window and emit what it adds to the already-emitted part, unless it
// ends in U+FFFD (a character still incomplete: wait for the next token).

/** Decodes a list of ids to text (the tokenizer's decode, with its options bound). */
export type DecodeFn = (ids: number[]) => string;

const REPLACEMENT_CHARACTER = '\uFFFD';

export class IncrementalDetokenizer {
  private readonly ids: number[] = [];
  private prefixOffset = 0;
  private readOffset = 0;
  private emitted = '';

  constructor(private readonly decode: DecodeFn) {}

  /** All the text emitted so far (by push and flush). */
  get text(): string {
    return this.emitted;
  }

  /** All the ids pushed so far. */
  get tokenIds(): readonly number[] {
    return this.ids;
  }

  /** Adds one token; returns the text it completes ('' while a character is still incomplete). */
  push(id: number): string {
    this.ids.push(id);
    const { before, window } = this.decodeWindow();
    if (window.length <= before.length || window.endsWith(REPLACEMENT_CHARACTER)) return '';
    return this.emit(window.slice(before.length));
  }

  /**
   * Emits whatever is still held back: at the end of a stream, an incomplete character is really invalid
   * and comes out as U+FFFD, exactly as decode(allIds) would print it.
   */
  flush(): string {
    const { before, window } = this.decodeWindow();
    if (window.length <= before.length) return '';
    return this.emit(window.slice(before.length));
  }

  private decodeWindow(): { before: string; window: string } {
    const before = this.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const window = this.decode(this.ids.slice(this.prefixOffset));
    return { before, window };
  }

  private emit(text: string): string {
    // The newly emitted tokens become the context of the next window.
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    this.emitted += text;
    return text;
  }
}
