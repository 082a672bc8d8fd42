// @tiny-llm/tokenizer: text <-> token ids for Hugging Face model folders, chat templates (with tools), and an
// incremental detokenizer for streaming.
export { loadTokenizer, TinyTokenizer, type DecodeOptions } from './tokenizer.ts';
export { IncrementalDetokenizer, type DecodeFn } from './detokenizer.ts';
export {
  ChatTemplate,
  type ChatMessage,
  type ChatTemplateOptions,
  type SpecialTokens,
  type ToolCall,
  type ToolSchema,
} from './chat-template.ts';
