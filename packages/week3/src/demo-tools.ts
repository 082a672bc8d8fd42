// Chapter 3.7: the tools the demo models were trained to call (models/*/tools.json): calculator, get_weather,
// get_time. A tool's arguments come from a model's output, so they are untrusted input: the calculator parses
// its expression itself (never eval, never Function: "process.exit()" is a syntax error here, not a call),
// and every tool answers with text the model reads back. The weather and the time are offline and
// deterministic (the same city, the same answer), and say so in their answer.
import { NotImplemented } from '@tiny-llm/week1/not-implemented';
import type { Tool } from './agent.ts';

/**
 * The value of an arithmetic expression: numbers (123, 4.5, .5), + - * /, unary minus and plus, parentheses,
 * spaces. Multiplication and division bind tighter than addition and subtraction, and operators of one level
 * apply left to right (10 - 2 - 3 is 5). A syntax error or a division by zero is an Error that says where
 * (the position in the expression). Never eval or Function: parse it, one function per level of the grammar:
 *
 *   expression := term (('+' | '-') term)*
 *   term       := factor (('*' | '/') factor)*
 *   factor     := ('-' | '+') factor | '(' expression ')' | number
 */
export function evaluateArithmetic(expression: string): number {
  throw new NotImplemented('3.7', 'evaluateArithmetic');
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
