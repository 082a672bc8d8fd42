// Chapter 3.7: the tools the demo models were trained to call (models/*/tools.json): calculator, get_weather,
// get_time. A tool's arguments come from a model's output, so they are untrusted input: the calculator parses
// its expression itself (never eval, never Function: "process.exit()" is a syntax error here, not a call),
// and every tool answers with text the model reads back. The weather and the time are offline and
// deterministic (the same city, the same answer), and say so in their answer.
import type { Tool } from './agent.ts';

/**
 * The value of an arithmetic expression: numbers (123, 4.5, .5), + - * /, unary minus and plus, parentheses,
 * spaces. Multiplication and division bind tighter than addition and subtraction, and operators of one level
 * apply left to right (10 - 2 - 3 is 5). A syntax error or a division by zero is an Error that says where.
 */
export function evaluateArithmetic(expression: string): number {
  let at = 0;
  const fail = (what: string): never => {
    throw new Error(`cannot evaluate ${JSON.stringify(expression)}: ${what} at position ${at}`);
  };
  const skipSpaces = () => {
    while (at < expression.length && /\s/.test(expression[at])) at++;
  };
  const peek = () => {
    skipSpaces();
    return expression[at];
  };
  // expression := term (('+' | '-') term)*
  const parseExpression = (): number => {
    let value = parseTerm();
    for (let op = peek(); op === '+' || op === '-'; op = peek()) {
      at++;
      const right = parseTerm();
      value = op === '+' ? value + right : value - right;
    }
    return value;
  };
  // term := factor (('*' | '/') factor)*
  const parseTerm = (): number => {
    let value = parseFactor();
    for (let op = peek(); op === '*' || op === '/'; op = peek()) {
      at++;
      const where = at;
      const right = parseFactor();
      if (op === '/' && right === 0) {
        at = where;
        fail('division by zero');
      }
      value = op === '*' ? value * right : value / right;
    }
    return value;
  };
  // factor := ('-' | '+') factor | '(' expression ')' | number
  const parseFactor = (): number => {
    const c = peek();
    if (c === '-' || c === '+') {
      at++;
      const value = parseFactor();
      return c === '-' ? -value : value;
    }
    if (c === '(') {
      at++;
      const value = parseExpression();
      if (peek() !== ')') fail('a missing ")"');
      at++;
      return value;
    }
    const number = /^(\d+(\.\d*)?|\.\d+)/.exec(expression.slice(at));
    if (!number)
      fail(
        c === undefined ? 'the expression ends where a number is expected' : `unexpected ${JSON.stringify(c)} where a number is expected`,
      );
    at += number![0].length;
    return Number(number![0]);
  };
  const value = parseExpression();
  if (peek() !== undefined) fail(`unexpected ${JSON.stringify(expression[at])}`);
  return value;
}

/** A number as the calculator says it: an integer as it is, else to 12 significant digits (0.1 + 0.2 is 0.3). */
export function formatNumber(x: number): string {
  return Number.isInteger(x) ? String(x) : String(Number(x.toPrecision(12)));
}

/** A small, stable hash of a city's name (case and spaces ignored), so that each city has its own answer. */
function cityHash(city: string): number {
  let h = 2166136261;
  for (const c of city.trim().toLowerCase()) h = Math.imul(h ^ c.codePointAt(0)!, 16777619) >>> 0;
  return h;
}

/** The `city` argument of a call, checked to be a name. */
function cityOf(args: Record<string, unknown>): string {
  const city = args.city;
  if (typeof city !== 'string' || city.trim() === '') throw new Error(`"city" must be the name of a city, got ${JSON.stringify(city)}`);
  return city.trim();
}

const CONDITIONS = ['sunny', 'cloudy', 'rainy', 'windy', 'snowy', 'foggy'];

/** What the offline tools say about their answers; first, so that the model reads the answer after it. */
const OFFLINE = 'offline demo data, fixed per city';

/**
 * A flat object as Python's json.dumps writes it ({"city": "Paris", "time": "07:42"}): the form the demo models
 * read in training, which they answer from more reliably than from JSON.stringify's compact one.
 */
function pythonJson(fields: Record<string, string | number>): string {
  return `{${Object.entries(fields)
    .map(([k, v]) => `${JSON.stringify(k)}: ${JSON.stringify(v)}`)
    .join(', ')}}`;
}

/** The demo tools, with the schemas of models/<model>/tools.json. */
export function demoTools(): Tool[] {
  return [
    {
      schema: {
        type: 'function',
        function: {
          name: 'calculator',
          description: 'Evaluate an arithmetic expression.',
          parameters: { type: 'object', properties: { expression: { type: 'string' } }, required: ['expression'] },
        },
      },
      run: (args) => formatNumber(evaluateArithmetic(String(args.expression))),
    },
    {
      schema: {
        type: 'function',
        function: {
          name: 'get_weather',
          description: 'Get the current weather in a city.',
          parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
        },
      },
      run: (args) => {
        const city = cityOf(args);
        const h = cityHash(city);
        return pythonJson({ note: OFFLINE, city, temperature_c: (h % 36) - 5, condition: CONDITIONS[(h >>> 8) % CONDITIONS.length] });
      },
    },
    {
      schema: {
        type: 'function',
        function: {
          name: 'get_time',
          description: 'Get the current local time in a city.',
          parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
        },
      },
      run: (args) => {
        const city = cityOf(args);
        const minutes = cityHash(city) % (24 * 60);
        const time = `${String(Math.floor(minutes / 60)).padStart(2, '0')}:${String(minutes % 60).padStart(2, '0')}`;
        return pythonJson({ note: OFFLINE, city, time });
      },
    },
  ];
}
