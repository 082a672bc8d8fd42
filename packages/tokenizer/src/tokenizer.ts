// The tokenizer of a Hugging Face model folder: text <-> token ids, the chat template, the ids that end a
// turn, and streaming detokenization. Built on @huggingface/tokenizers, which reads the same tokenizer.json
// as the Python library and gives the same ids.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { ChatTemplate, type ChatMessage, type ChatTemplateOptions, type SpecialTokens } from './chat-template.ts';
import { IncrementalDetokenizer } from './detokenizer.ts';

/** The token that closes a chat turn in Qwen's ChatML format; generation stops on it as well. */
const CHAT_TURN_END = '<|im_end|>';

export interface DecodeOptions {
  /** Leave out special tokens such as <|im_end|>. Default false (as in the Python library). */
  skipSpecialTokens?: boolean;
}

export class TinyTokenizer {
  /** The ids on which generation stops (see loadTokenizer). */
  readonly eosTokenIds: number[];
  /** Where the tokenizer was loaded from (for error messages). */
  readonly modelDir: string;
  /**
   * The number of tokens the tokenizer knows, added tokens included. The model's embedding may have more
   * rows (padded to a round number); those ids never come out of encode.
   */
  readonly vocabSize: number;
  private readonly chatTemplate: ChatTemplate | null;

  constructor(
    private readonly tokenizer: Tokenizer,
    options: { eosTokenIds: number[]; chatTemplate: ChatTemplate | null; modelDir: string },
  ) {
    this.eosTokenIds = options.eosTokenIds;
    this.chatTemplate = options.chatTemplate;
    this.modelDir = options.modelDir;
    this.vocabSize = tokenizer.get_vocab(true).size; // builds a Map of the whole vocabulary: once
  }

  /** Token ids of `text`, with no special tokens added: a chat template writes those itself. */
  encode(text: string): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: false }).ids;
  }

  decode(ids: readonly number[], options: DecodeOptions = {}): string {
    if (ids.length === 0) return ''; // the library rejects an empty list
    return this.tokenizer.decode([...ids], { skip_special_tokens: options.skipSpecialTokens ?? false });
  }

  /** The id of one token string (such as "<|im_end|>"), or undefined if the vocabulary lacks it. */
  tokenToId(token: string): number | undefined {
    return this.tokenizer.token_to_id(token);
  }

  get hasChatTemplate(): boolean {
    return this.chatTemplate !== null;
  }

  /** The prompt text for a conversation, as the model was trained to read it. */
  applyChatTemplate(messages: ChatMessage[], options: ChatTemplateOptions = {}): string {
    if (!this.chatTemplate) {
      throw new Error(`applyChatTemplate: the tokenizer in ${this.modelDir} has no chat_template (a base model?)`);
    }
    return this.chatTemplate.render(messages, options);
  }

  /** A fresh streaming decoder (one per generated sequence). */
  detokenizer(options: DecodeOptions = {}): IncrementalDetokenizer {
    return new IncrementalDetokenizer((ids) => this.decode(ids, options));
  }
}

/**
 * Loads the tokenizer of a model folder: tokenizer.json and tokenizer_config.json (required), the chat
 * template (in tokenizer_config.json or chat_template.jinja) and generation_config.json (optional).
 *
 * The stop ids are generation_config's eos_token_id (a number or a list), else tokenizer_config's eos_token,
 * plus <|im_end|> when the vocabulary has it: the chat models end each turn with it, while their configs
 * often name only <|endoftext|>.
 */
export function loadTokenizer(modelDir: string): TinyTokenizer {
  if (!existsSync(modelDir) || !statSync(modelDir).isDirectory()) {
    throw new Error(`loadTokenizer: ${modelDir} is not a directory`);
  }
  const tokenizerJson = readJsonObject(modelDir, 'tokenizer.json');
  const config = readJsonObject(modelDir, 'tokenizer_config.json');
  let tokenizer: Tokenizer;
  try {
    tokenizer = new Tokenizer(tokenizerJson, config);
  } catch (err) {
    throw new Error(`loadTokenizer: ${join(modelDir, 'tokenizer.json')} is not a tokenizer: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const specialTokens = readSpecialTokens(config);
  const templateSource = readChatTemplate(modelDir, config);
  return new TinyTokenizer(tokenizer, {
    modelDir,
    eosTokenIds: stopIds(modelDir, tokenizer, specialTokens.eos_token),
    chatTemplate: templateSource === null ? null : new ChatTemplate(templateSource, specialTokens),
  });
}

function readJsonObject(dir: string, file: string): Record<string, unknown> {
  const path = join(dir, file);
  if (!existsSync(path)) throw new Error(`loadTokenizer: ${dir} has no ${file}`);
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new Error(`loadTokenizer: ${path} is not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new Error(`loadTokenizer: ${path} must hold a JSON object`);
  }
  return value as Record<string, unknown>;
}

/** Special tokens are strings, or (in older files) AddedToken objects {content: "..."}. */
function readSpecialTokens(config: Record<string, unknown>): SpecialTokens {
  const read = (key: string): string | null => {
    const value = config[key];
    if (typeof value === 'string') return value;
    if (value && typeof value === 'object' && typeof (value as { content?: unknown }).content === 'string') {
      return (value as { content: string }).content;
    }
    return null;
  };
  return { bos_token: read('bos_token'), eos_token: read('eos_token'), pad_token: read('pad_token'), unk_token: read('unk_token') };
}

/**
 * The template is tokenizer_config.json's `chat_template` (a string, or a list of named templates), or, in
 * files written by recent transformers, a chat_template.jinja beside it. null for base models.
 */
function readChatTemplate(dir: string, config: Record<string, unknown>): string | null {
  const value = config.chat_template;
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) {
    const named = value as { name?: string; template?: string }[];
    const chosen = named.find((t) => t.name === 'default') ?? named[0];
    if (typeof chosen?.template === 'string') return chosen.template;
  }
  const jinjaPath = join(dir, 'chat_template.jinja');
  return existsSync(jinjaPath) ? readFileSync(jinjaPath, 'utf8') : null;
}

function stopIds(dir: string, tokenizer: Tokenizer, eosToken: string | null): number[] {
  const ids = new Set<number>(generationConfigEosIds(dir));
  if (ids.size === 0 && eosToken !== null) {
    const id = tokenizer.token_to_id(eosToken);
    if (id !== undefined) ids.add(id);
  }
  const turnEnd = tokenizer.token_to_id(CHAT_TURN_END);
  if (turnEnd !== undefined) ids.add(turnEnd);
  return [...ids];
}

function generationConfigEosIds(dir: string): number[] {
  if (!existsSync(join(dir, 'generation_config.json'))) return [];
  const value = readJsonObject(dir, 'generation_config.json').eos_token_id;
  if (value === undefined || value === null) return [];
  const list = Array.isArray(value) ? value : [value];
  if (!list.every((id) => Number.isInteger(id) && id >= 0)) {
    throw new Error(
      `loadTokenizer: eos_token_id in ${join(dir, 'generation_config.json')} must be a token id or a list of them, got ${JSON.stringify(value)}`,
    );
  }
  return list as number[];
}
