// The tokenizer against the demo models' goldens (computed by the Python transformers library): the same ids
// for every prompt, the same text for every generated sequence, the same chat prompt byte for byte.
import { mkdtempSync, readFileSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { demoGolden, DEMO_MODELS, MODELS_DIR } from '@tiny-llm/tensor-core/testing';
import { loadTokenizer, type ChatMessage, type TinyTokenizer, type ToolSchema } from '../src/index.ts';

const readJson = <T>(path: string): T => JSON.parse(readFileSync(path, 'utf8')) as T;

/** Feeds ids one at a time; returns every chunk pushed and the flushed rest. */
function stream(tok: TinyTokenizer, ids: number[]): { chunks: string[]; rest: string } {
  const detok = tok.detokenizer();
  const chunks = ids.map((id) => detok.push(id));
  const rest = detok.flush();
  expect(detok.text).toBe(chunks.join('') + rest);
  return { chunks, rest };
}

describe.each(DEMO_MODELS)('%s', (name) => {
  const dir = join(MODELS_DIR, name);
  const tok = loadTokenizer(dir);
  const golden = demoGolden(name);
  const tools = readJson<ToolSchema[]>(join(dir, 'tools.json'));

  it('knows its vocabulary and stop ids', () => {
    expect(tok.vocabSize).toBe(8192);
    // <|endoftext|> from generation_config.json, <|im_end|> because chat turns end with it.
    expect(tok.eosTokenIds).toEqual([tok.tokenToId('<|endoftext|>'), tok.tokenToId('<|im_end|>')]);
    expect(tok.eosTokenIds).toEqual([8189, 8191]);
  });

  it.each(golden.cases.map((c, i) => [i, c] as const))('case %i: encode gives the golden ids', (_, c) => {
    expect(tok.encode(c.prompt)).toEqual(c.ids);
  });

  it.each(golden.cases.map((c, i) => [i, c] as const))('case %i: decode gives the golden text', (_, c) => {
    expect(tok.decode(c.greedy)).toBe(c.greedy_text);
    expect(tok.decode(c.ids)).toBe(c.prompt);
  });

  it.each(golden.cases.map((c, i) => [i, c] as const))('case %i: streaming gives the golden text', (_, c) => {
    const { chunks, rest } = stream(tok, c.greedy);
    expect(chunks.join('') + rest).toBe(c.greedy_text);
  });

  const chats = golden.cases.filter((c) => c.kind === 'chat');
  it.each(chats.map((c, i) => [i, c] as const))('chat %i: the template renders the golden prompt', (_, c) => {
    const rendered = tok.applyChatTemplate(c.messages!, { tools: c.tools ? tools : undefined, addGenerationPrompt: true });
    expect(rendered).toBe(c.prompt);
  });
});

describe('incremental detokenizer', () => {
  const tok = loadTokenizer(join(MODELS_DIR, 'tiny-qwen2-py'));
  const texts = ['你好，世界', 'emoji 🎉👍🏽 and café', 'def f():\n    return "naïve 🐍"\n', 'ab\u00e9\u4e2d\u{1F600}'];

  it.each(texts)('streams %j without a replacement character', (text) => {
    const ids = tok.encode(text);
    // The point of the test: byte-level BPE splits these characters over several tokens.
    expect(ids.some((id) => tok.decode([id]).includes('\uFFFD'))).toBe(true);
    const { chunks, rest } = stream(tok, ids);
    for (const chunk of chunks) expect(chunk).not.toContain('\uFFFD');
    expect(chunks.join('') + rest).toBe(text);
    expect(rest).toBe('');
  });

  it('an empty input: decode([]) is the empty text, and a detokenizer fed nothing flushes nothing', () => {
    expect(tok.decode([])).toBe('');
    const d = tok.detokenizer();
    expect(d.flush()).toBe('');
    expect(d.text).toBe('');
  });

  it('emits a character only once its last byte has arrived', () => {
    const ids = tok.encode('中');
    expect(ids.length).toBeGreaterThan(1);
    const detok = tok.detokenizer();
    const outputs = ids.map((id) => detok.push(id));
    expect(outputs.slice(0, -1).every((o) => o === '')).toBe(true);
    expect(outputs.at(-1)).toBe('中');
  });

  it('flushes an incomplete character the way decode prints it', () => {
    const ids = tok.encode('ok 中').slice(0, -1); // drop the last byte of 中
    const { chunks, rest } = stream(tok, ids);
    expect(chunks.join('')).toBe('ok ');
    expect(chunks.join('') + rest).toBe(tok.decode(ids));
    expect(rest).toContain('\uFFFD');
  });

  it('passes through an invalid byte that is never completed', () => {
    const broken = [...tok.encode('中').slice(0, 1), ...tok.encode('abc')];
    const { chunks, rest } = stream(tok, broken);
    expect(chunks.join('') + rest).toBe(tok.decode(broken));
  });

  it('keeps special tokens unless asked to skip them', () => {
    const ids = [...tok.encode('Hi'), 8191];
    expect(tok.decode(ids)).toBe('Hi<|im_end|>');
    expect(tok.decode(ids, { skipSpecialTokens: true })).toBe('Hi');
    const detok = tok.detokenizer({ skipSpecialTokens: true });
    for (const id of ids) detok.push(id);
    expect(detok.text + detok.flush()).toBe('Hi');
  });
});

describe('chat template', () => {
  const tok = loadTokenizer(join(MODELS_DIR, 'tiny-qwen2-py'));
  const tools = readJson<ToolSchema[]>(join(MODELS_DIR, 'tiny-qwen2-py', 'tools.json'));

  it('ships the three demo tools', () => {
    expect(tools.map((t) => t.function.name)).toEqual(['calculator', 'get_weather', 'get_time']);
  });

  // The format the demo model was trained on (shared/tools/train_demo.py: call_block, response_block).
  const toolTurn = (toolsText: string) =>
    toolsText +
    '<|im_start|>user\nWhat is 37 times 12?<|im_end|>\n' +
    '<|im_start|>assistant\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "37 * 12"}}\n</tool_call><|im_end|>\n' +
    '<|im_start|>user\n<tool_response>\n444\n</tool_response><|im_end|>\n' +
    '<|im_start|>assistant\n';

  it('renders a tool call and its response', () => {
    const withArgs = (args: Record<string, unknown> | string): ChatMessage[] => [
      { role: 'user', content: 'What is 37 times 12?' },
      { role: 'assistant', content: '', tool_calls: [{ type: 'function', function: { name: 'calculator', arguments: args } }] },
      { role: 'tool', content: '444' },
    ];
    const system = tok.applyChatTemplate([{ role: 'user', content: 'x' }], { tools }).split('<|im_start|>user')[0];
    const expected = toolTurn(system);
    expect(tok.applyChatTemplate(withArgs({ expression: '37 * 12' }), { tools })).toBe(expected);
    // OpenAI clients send the arguments as a JSON string: same prompt.
    expect(tok.applyChatTemplate(withArgs('{"expression": "37 * 12"}'), { tools })).toBe(expected);
  });

  it('uses the default system prompt without tools, and a given one', () => {
    expect(tok.applyChatTemplate([{ role: 'user', content: 'Hi' }], { addGenerationPrompt: false })).toBe(
      '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n',
    );
    expect(
      tok.applyChatTemplate(
        [
          { role: 'system', content: 'Be brief.' },
          { role: 'user', content: 'Hi' },
        ],
        { tools: [] },
      ),
    ).toBe('<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
  });

  it('rejects an empty conversation and bad tool arguments', () => {
    expect(() => tok.applyChatTemplate([])).toThrow(/no messages/);
    const bad: ChatMessage[] = [{ role: 'assistant', content: '', tool_calls: [{ function: { name: 'calculator', arguments: '{oops' } }] }];
    expect(() => tok.applyChatTemplate(bad)).toThrow(/arguments of the call to calculator are not valid JSON/);
  });
});

describe('loading errors', () => {
  const source = join(MODELS_DIR, 'tiny-qwen2-py');
  /** A temporary model folder holding the given files (copied from the demo model unless given as text). */
  function folder(files: Record<string, string | 'copy'>): string {
    const dir = mkdtempSync(join(tmpdir(), 'tokenizer-test-'));
    for (const [file, content] of Object.entries(files)) {
      if (content === 'copy') copyFileSync(join(source, file), join(dir, file));
      else writeFileSync(join(dir, file), content);
    }
    return dir;
  }
  const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

  it('names a directory that does not exist', () => {
    expect(() => loadTokenizer('/no/such/model')).toThrow('/no/such/model is not a directory');
  });

  it('names the missing file and its directory', () => {
    const noTokenizer = folder({ 'tokenizer_config.json': 'copy' });
    expect(() => loadTokenizer(noTokenizer)).toThrow(new RegExp(`${escapeRegExp(noTokenizer)} has no tokenizer.json`));
    const noConfig = folder({ 'tokenizer.json': 'copy' });
    expect(() => loadTokenizer(noConfig)).toThrow(new RegExp(`${escapeRegExp(noConfig)} has no tokenizer_config.json`));
  });

  it('names a file that is not valid JSON', () => {
    const dir = folder({ 'tokenizer.json': '{"model": ', 'tokenizer_config.json': 'copy' });
    expect(() => loadTokenizer(dir)).toThrow(new RegExp(`${escapeRegExp(join(dir, 'tokenizer.json'))} is not valid JSON`));
    const badConfig = folder({ 'tokenizer.json': 'copy', 'tokenizer_config.json': '[1, 2]' });
    expect(() => loadTokenizer(badConfig)).toThrow(/tokenizer_config.json must hold a JSON object/);
  });

  it('names a tokenizer.json that is not a tokenizer', () => {
    const dir = folder({ 'tokenizer.json': '{"version": "1.0"}', 'tokenizer_config.json': 'copy' });
    expect(() => loadTokenizer(dir)).toThrow(/tokenizer.json is not a tokenizer: .*model/);
  });

  it('rejects a malformed eos_token_id', () => {
    const dir = folder({ 'tokenizer.json': 'copy', 'tokenizer_config.json': 'copy', 'generation_config.json': '{"eos_token_id": "x"}' });
    expect(() => loadTokenizer(dir)).toThrow(/eos_token_id in .*generation_config.json must be a token id/);
  });

  it('falls back to the eos_token without generation_config.json, and explains a missing template', () => {
    const config = readJson<Record<string, unknown>>(join(source, 'tokenizer_config.json'));
    delete config.chat_template;
    const dir = folder({ 'tokenizer.json': 'copy', 'tokenizer_config.json': JSON.stringify(config) });
    const tok = loadTokenizer(dir);
    expect(tok.eosTokenIds).toEqual([8189, 8191]);
    expect(tok.hasChatTemplate).toBe(false);
    expect(() => tok.applyChatTemplate([{ role: 'user', content: 'Hi' }])).toThrow(/has no chat_template/);
  });
});
