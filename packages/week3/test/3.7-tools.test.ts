// Chapter 3.7, graded: agents and tool calling. The <tool_call> parser on replies written by hand (several calls,
// text around them, broken JSON reported and not thrown, any split of a streamed reply); the calculator
// against expression trees whose value the test computes itself, and its errors; the registry's error
// messages; the agent loop on scripted models (a two-call turn, a malformed call, an unknown tool, a tool that
// throws, the step limit); then the demo model (models/tiny-qwen2-py, greedy): 30 random two-number
// arithmetic questions, of which at least 27 must end with the right result, and the weather and time
// questions, which must call their tools.
import * as tc from '@tiny-llm/tensor-core';
import { MODELS_DIR } from '@tiny-llm/tensor-core/testing';
import { loadTokenizer, type ChatMessage, type TinyTokenizer, type ToolSchema } from '@tiny-llm/tokenizer';
import { errorOf, rejectionOf } from '@tiny-llm/grading';
import { describe, expect, it } from 'vitest';
import {
  demoTools,
  evaluateArithmetic,
  parseToolCallBlock,
  parseToolCalls,
  Qwen2ModelWeek3,
  runAgent,
  ToolCallStream,
  ToolRegistry,
  type ChatModel,
  type StreamPiece,
  type Tool,
} from '@solution/week3';

const call = (name: string, args: object) => `<tool_call>\n${JSON.stringify({ name, arguments: args })}\n</tool_call>`;

describe('3.7 the <tool_call> parser', () => {
  it('one call, with the text around it', () => {
    const { content, blocks } = parseToolCalls(`Let me compute.\n${call('calculator', { expression: '37 * 12' })}`);
    expect(blocks).toEqual([{ call: { name: 'calculator', arguments: { expression: '37 * 12' } } }]);
    expect(content, 'the text outside the block, trimmed').toBe('Let me compute.');
  });

  it('several calls in one reply, in order; a reply without calls is all content', () => {
    const reply = `${call('get_weather', { city: 'Paris' })}\n${call('get_time', { city: 'Tokyo' })}`;
    expect(parseToolCalls(reply).blocks).toEqual([
      { call: { name: 'get_weather', arguments: { city: 'Paris' } } },
      { call: { name: 'get_time', arguments: { city: 'Tokyo' } } },
    ]);
    expect(parseToolCalls('37 times 12 is 444.')).toEqual({ content: '37 times 12 is 444.', blocks: [] });
  });

  it('broken blocks are reported with what is wrong, never thrown', () => {
    const cases: [string, RegExp][] = [
      ['{"name": "calculator", "arguments": {"expression": "1 + 2"}', /JSON/],
      ['{"arguments": {"city": "Paris"}}', /name/],
      ['{"name": "", "arguments": {}}', /name/],
      ['{"name": "get_time", "arguments": ["Tokyo"]}', /arguments/],
      ['["calculator"]', /name/],
      ['null', /name/],
    ];
    for (const [body, why] of cases) {
      const block = parseToolCallBlock(body);
      expect('error' in block && block.error, `the block ${body}`).toMatch(why);
      expect('error' in block && block.text, `the block ${body} keeps its text`).toBe(body);
    }
    expect(parseToolCallBlock('{"name": "get_time"}'), 'no arguments: {}').toEqual({ call: { name: 'get_time', arguments: {} } });
    const unclosed = parseToolCalls('<tool_call>\n{"name": "calculator", "arguments": {"expression": "2 * 3"}}');
    expect(unclosed.blocks.length, 'a block never closed').toBe(1);
    expect('error' in unclosed.blocks[0] && unclosed.blocks[0].error).toMatch(/closed/);
  });

  it('streamed: any split of a reply gives the same pieces; text never waits longer than a possible "<tool_call>"', () => {
    const reply = `Sure.\n${call('get_weather', { city: 'Paris' })}\n${call('calculator', { expression: '1 < 2' })} done <tool_ca`;
    const merged = (pieces: StreamPiece[]) => {
      // Consecutive text pieces may be split anywhere: join them before comparing.
      const out: StreamPiece[] = [];
      for (const p of pieces) {
        const last = out.at(-1);
        if ('text' in p && last && 'text' in last) out[out.length - 1] = { text: last.text + p.text };
        else out.push(p);
      }
      return out;
    };
    const whole = new ToolCallStream();
    const expected = merged([...whole.push(reply), ...whole.end()]);
    expect(expected.filter((p) => 'block' in p).length, 'two blocks').toBe(2);
    for (let cut = 0; cut <= reply.length; cut++) {
      const stream = new ToolCallStream();
      expect(merged([...stream.push(reply.slice(0, cut)), ...stream.push(reply.slice(cut)), ...stream.end()]), `split at ${cut}`).toEqual(
        expected,
      );
    }
    const stream = new ToolCallStream();
    expect(stream.push('Hello <tool'), 'the text before a possible marker is settled').toEqual([{ text: 'Hello ' }]);
    expect(stream.push('box>'), 'not a marker after all: the held text comes out').toEqual([{ text: '<toolbox>' }]);
  });
});

// ---- the calculator ------------------------------------------------------------------------------------------

type Expr = { value: number; text: string; precedence: number };

/** A random expression and its value, computed from the tree, not from the text. */
function randomExpression(rng: tc.random.Generator, depth: number): Expr {
  const number = () => {
    const v = Math.floor(rng.next() * 100) / (rng.next() < 0.2 ? 4 : 1);
    return { value: v, text: String(v), precedence: 3 };
  };
  if (depth === 0 || rng.next() < 0.25) return number();
  const op = '+-*/'[Math.floor(rng.next() * 4)];
  const left = randomExpression(rng, depth - 1);
  let right = randomExpression(rng, depth - 1);
  if (op === '/' && right.value === 0) right = { value: 7, text: '7', precedence: 3 };
  const precedence = op === '+' || op === '-' ? 1 : 2;
  // Parentheses where the grammar needs them: a lower level on either side, the same level on the right.
  const wrap = (e: Expr, right: boolean) => (e.precedence < precedence || (right && e.precedence === precedence) ? `(${e.text})` : e.text);
  const value =
    op === '+'
      ? left.value + right.value
      : op === '-'
        ? left.value - right.value
        : op === '*'
          ? left.value * right.value
          : left.value / right.value;
  return { value, text: `${wrap(left, false)} ${op} ${wrap(right, true)}`, precedence };
}

describe('3.7 evaluateArithmetic: the calculator, never eval', () => {
  it('precedence, left to right within a level, parentheses, unary signs, decimals, spaces', () => {
    const cases: [string, number][] = [
      ['37 * 12', 444],
      ['2 + 3 * 4', 14],
      ['(2 + 3) * 4', 20],
      ['10 - 2 - 3', 5],
      ['100 / 10 / 2', 5],
      ['-3 * -(2 + 1)', 9],
      ['+4 - -1', 5],
      ['1.5 * .5', 0.75],
      ['  7/2  ', 3.5],
      ['((42))', 42],
    ];
    for (const [expression, value] of cases) expect(evaluateArithmetic(expression), expression).toBe(value);
  });

  it('500 random expressions: the value of their tree', () => {
    const rng = new tc.random.Generator(37);
    for (let i = 0; i < 500; i++) {
      const e = randomExpression(rng, 4);
      expect(evaluateArithmetic(e.text), e.text).toBeCloseTo(e.value, 9);
    }
  });

  it('a syntax error or a division by zero says what and where; code is never run', () => {
    const cases: [string, RegExp][] = [
      ['37 *', /position 4/],
      ['2 +* 3', /position 3/],
      ['(1 + 2', /\)/],
      ['1 + 2)', /position 5/],
      ['4 / (2 - 2)', /division by zero/],
      ['', /position 0/],
      ['process.exit(1)', /position 0/],
      ['2 ** 3', /position 3/],
    ];
    for (const [expression, message] of cases) expect(errorOf(() => evaluateArithmetic(expression)).message, expression).toMatch(message);
  });
});

// ---- the registry and the loop -------------------------------------------------------------------------------

/** A model that replies from a script, and records the conversations it was shown. */
class ScriptedModel implements ChatModel {
  readonly seen: { messages: ChatMessage[]; tools: ToolSchema[] }[] = [];
  constructor(private readonly replies: string[]) {}
  reply(messages: readonly ChatMessage[], tools: readonly ToolSchema[]): string {
    this.seen.push({ messages: messages.map((m) => ({ ...m })), tools: [...tools] });
    const reply = this.replies[this.seen.length - 1];
    if (reply === undefined) throw new Error(`the script has no reply ${this.seen.length}`);
    return reply;
  }
}

const broken: Tool = {
  schema: { type: 'function', function: { name: 'broken', parameters: { type: 'object', properties: {} } } },
  run: () => {
    throw new Error('the service is down');
  },
};

describe('3.7 ToolRegistry', () => {
  const registry = new ToolRegistry([...demoTools(), broken]);

  it('runs a call and returns its answer; weather and time are offline and say so', () => {
    const ok = (name: string, args: Record<string, unknown>) => registry.call({ call: { name, arguments: args } });
    expect(ok('calculator', { expression: '37 * 12' })).toEqual({
      name: 'calculator',
      arguments: { expression: '37 * 12' },
      content: '444',
      error: false,
    });
    expect(ok('calculator', { expression: '1 / 3' }).content, 'to 12 significant digits').toBe('0.333333333333');
    for (const name of ['get_weather', 'get_time']) {
      const paris = ok(name, { city: 'Paris' });
      expect(paris.error).toBe(false);
      expect(JSON.parse(paris.content).city).toBe('Paris');
      expect(paris.content, `${name}: says it is offline demo data`).toMatch(/offline/);
      expect(ok(name, { city: 'Paris' }).content, `${name}: the same city, the same answer`).toBe(paris.content);
    }
  });

  it('a malformed call, an unknown tool, a missing or mistyped argument, a tool that throws: error messages', () => {
    const cases: [string, Parameters<ToolRegistry['call']>[0], RegExp][] = [
      ['a malformed call', parseToolCallBlock('{"name": "calculator", "arguments": {'), /^error: .*JSON/],
      [
        'an unknown tool',
        { call: { name: 'get_stock_price', arguments: {} } },
        /^error: .*get_stock_price.*calculator, get_weather, get_time, broken/,
      ],
      ['a missing argument', { call: { name: 'calculator', arguments: {} } }, /^error: .*expression/],
      ['a mistyped argument', { call: { name: 'get_time', arguments: { city: 42 } } }, /^error: .*city.*string/],
      ['a tool that throws', { call: { name: 'broken', arguments: {} } }, /^error: .*broken.*the service is down/],
      ['a calculator error', { call: { name: 'calculator', arguments: { expression: '1 / 0' } } }, /^error: .*division by zero/],
    ];
    for (const [what, block, message] of cases) {
      const outcome = registry.call(block);
      expect(outcome.error, what).toBe(true);
      expect(outcome.content, what).toMatch(message);
    }
  });
});

describe('3.7 runAgent: the loop, on scripted models', () => {
  const question: ChatMessage[] = [{ role: 'user', content: "What's the weather in Paris and the time in Tokyo?" }];

  it('a two-call turn runs both, feeds both results back in order, and the next reply is the answer', async () => {
    const twoCalls = `${call('get_weather', { city: 'Paris' })}\n${call('get_time', { city: 'Tokyo' })}`;
    const model = new ScriptedModel([twoCalls, 'It is sunny in Paris.']);
    const registry = new ToolRegistry(demoTools());
    const steps: unknown[] = [];
    const result = await runAgent(model, registry, question, { onStep: (s) => steps.push(s) });
    expect(result.stopReason).toBe('answer');
    expect(result.answer).toBe('It is sunny in Paris.');
    expect(
      result.steps.map((s) => s.calls.map((c) => c.name)),
      'the calls of each step',
    ).toEqual([['get_weather', 'get_time'], []]);
    expect(steps, 'onStep saw every step').toEqual(result.steps);
    const weather = registry.call({ call: { name: 'get_weather', arguments: { city: 'Paris' } } }).content;
    const time = registry.call({ call: { name: 'get_time', arguments: { city: 'Tokyo' } } }).content;
    expect(model.seen[1].messages, "the second reply sees the model's calls as written, then both results").toEqual([
      ...question,
      { role: 'assistant', content: twoCalls },
      { role: 'tool', content: weather },
      { role: 'tool', content: time },
    ]);
    expect(model.seen[0].tools, 'the tools on offer are the registry schemas').toEqual(registry.schemas);
    expect(result.messages).toEqual([...model.seen[1].messages, { role: 'assistant', content: 'It is sunny in Paris.' }]);
    expect(question.length, 'the messages given are left as they were').toBe(1);
  });

  it('a malformed call, an unknown tool and a throwing tool go back to the model as error messages', async () => {
    const model = new ScriptedModel([
      '<tool_call>\n{"name": "calculator", "arguments": {"expression": \n</tool_call>',
      call('get_stock_price', { symbol: 'X' }),
      call('broken', {}),
      'Sorry, I could not find out.',
    ]);
    const result = await runAgent(model, new ToolRegistry([...demoTools(), broken]), question);
    expect(result.answer).toBe('Sorry, I could not find out.');
    const responses = result.messages.filter((m) => m.role === 'tool').map((m) => m.content);
    expect(responses.length, 'one response per call').toBe(3);
    expect(responses[0], 'the malformed call').toMatch(/^error: .*JSON/);
    expect(responses[1], 'the unknown tool').toMatch(/^error: .*get_stock_price/);
    expect(responses[2], 'the tool that throws').toMatch(/^error: .*the service is down/);
  });

  it('stops at the step limit when the model never answers', async () => {
    const model = new ScriptedModel(new Array<string>(10).fill(call('calculator', { expression: '1 + 1' })));
    const result = await runAgent(model, new ToolRegistry(demoTools()), question, { maxSteps: 3 });
    expect([result.stopReason, result.answer, result.steps.length, model.seen.length]).toEqual(['step limit', null, 3, 3]);
    expect((await rejectionOf(() => runAgent(model, new ToolRegistry(demoTools()), question, { maxSteps: 0 }))).message).toMatch(
      /maxSteps/,
    );
  });
});

// ---- the demo model ------------------------------------------------------------------------------------------

/** The demo model as a ChatModel: greedy through the chat template, each reply reusing the cache of the prompt it extends. */
class GreedyChat implements ChatModel {
  private readonly cache: ReturnType<Qwen2ModelWeek3['newCache']>;
  /** The tokens the cache holds. */
  private held: number[] = [];

  constructor(
    readonly model: Qwen2ModelWeek3,
    readonly tokenizer: TinyTokenizer,
    readonly maxTokens = 64,
  ) {
    this.cache = model.newCache();
  }

  reply(messages: readonly ChatMessage[], tools: readonly ToolSchema[]): string {
    const ids = this.tokenizer.encode(this.tokenizer.applyChatTemplate([...messages], { tools: [...tools], addGenerationPrompt: true }));
    let same = 0;
    while (same < this.held.length && same < ids.length - 1 && this.held[same] === ids[same]) same++;
    for (const c of this.cache) c.rewind(c.offset - same);
    const stop = new Set(this.tokenizer.eosTokenIds);
    const out: number[] = [];
    let feed = ids.slice(same);
    this.held = [...ids];
    while (out.length < this.maxTokens) {
      const next = tc.tidy(() =>
        tc
          .argmax(tc.slice(this.model.forward(tc.tensor([feed], { dtype: 'int32' }), this.cache[0].offset, this.cache), [0, -1]), -1)
          .item(),
      );
      if (stop.has(next)) break;
      out.push(next);
      this.held.push(next);
      feed = [next];
    }
    // The cache holds every token but the last one generated.
    this.held.length = this.cache[0].offset;
    return this.tokenizer.decode(out);
  }
}

describe('3.7 the agent on the demo model (models/tiny-qwen2-py, greedy)', () => {
  const dir = `${MODELS_DIR}tiny-qwen2-py`;
  let loaded: GreedyChat | undefined;
  const chat = () => (loaded ??= new GreedyChat(Qwen2ModelWeek3.load(dir), loadTokenizer(dir)));
  const ask = (question: string) => runAgent(chat(), new ToolRegistry(demoTools()), [{ role: 'user', content: question }]);

  it('"What is 37 times 12?": a calculator call, its result, and an answer with 444', async () => {
    const result = await ask('What is 37 times 12?');
    expect(result.steps[0].calls.map((c) => [c.name, c.content])).toEqual([['calculator', '444']]);
    expect(result.answer).toContain('444');
  });

  it('30 random two-number questions (+, -, *, /): at least 27 answers end with the right result', async () => {
    const rng = new tc.random.Generator(2024);
    const int = (lo: number, hi: number) => lo + Math.floor(rng.next() * (hi - lo + 1));
    const wrong: string[] = [];
    for (let i = 0; i < 30; i++) {
      const op = ['plus', 'minus', 'times', '/'][i % 4];
      let [a, b] = [int(2, 99), int(2, 99)];
      if (op === '/') a *= b; // a whole quotient
      const want = op === 'plus' ? a + b : op === 'minus' ? a - b : op === 'times' ? a * b : a / b;
      const question = `What is ${a} ${op} ${b}?`;
      const { answer, steps } = await ask(question);
      const numbers = (answer ?? '').match(/-?\d+(\.\d+)?/g) ?? [];
      if (Number(numbers.at(-1)) !== want)
        wrong.push(`${question} -> ${JSON.stringify(answer)} (calls: ${JSON.stringify(steps.flatMap((s) => s.calls))})`);
    }
    expect(wrong.length, `the questions answered wrong:\n${wrong.join('\n')}`).toBeLessThanOrEqual(3);
  });

  for (const [question, tool, city] of [
    ["What's the weather in Paris?", 'get_weather', 'Paris'],
    ['How is the weather in Berlin?', 'get_weather', 'Berlin'],
    ['What time is it in Tokyo?', 'get_time', 'Tokyo'],
    ['What is the time in London?', 'get_time', 'London'],
  ]) {
    it(`"${question}" calls ${tool} for ${city}`, async () => {
      const result = await ask(question);
      expect(result.steps[0].calls.map((c) => [c.name, c.arguments, c.error])).toEqual([[tool, { city }, false]]);
      expect(result.stopReason).toBe('answer');
    });
  }
});
