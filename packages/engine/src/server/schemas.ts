// The request bodies the server accepts, as zod schemas: OpenAI's chat completions and completions, the fields
// this engine implements. Every object is strict, so a field it does not implement (n > 1, logprobs, penalties,
// response_format, ...) is a 400 that names it rather than something silently ignored.
import { z } from 'zod';

const text = z.string().max(1_000_000);
/** A message's content: a string, or OpenAI's list of text parts. */
const content = z.union([text, z.array(z.object({ type: z.literal('text'), text }).strict()).max(1000)]);

const toolCall = z
  .object({
    id: z.string().max(200),
    type: z.literal('function'),
    function: z.object({ name: z.string().min(1).max(200), arguments: text }).strict(),
  })
  .strict();

const message = z.discriminatedUnion('role', [
  z.object({ role: z.literal('system'), content, name: z.string().max(200).optional() }).strict(),
  z.object({ role: z.literal('user'), content, name: z.string().max(200).optional() }).strict(),
  z
    .object({
      role: z.literal('assistant'),
      content: content.nullable().optional(),
      tool_calls: z.array(toolCall).max(100).optional(),
      name: z.string().max(200).optional(),
    })
    .strict(),
  z.object({ role: z.literal('tool'), content, tool_call_id: z.string().max(200) }).strict(),
]);

const tool = z
  .object({
    type: z.literal('function'),
    function: z
      .object({
        name: z.string().min(1).max(200),
        description: z.string().max(100_000).optional(),
        parameters: z.record(z.string(), z.unknown()).optional(),
        strict: z.boolean().nullable().optional(),
      })
      .strict(),
  })
  .strict();

/** The generation fields both endpoints share. */
const generation = {
  model: z.string().max(1000).optional(),
  max_tokens: z
    .number()
    .int()
    .min(1)
    .max(2 ** 31)
    .nullable()
    .optional(),
  temperature: z.number().min(0).max(2).nullable().optional(),
  top_p: z.number().gt(0).max(1).nullable().optional(),
  seed: z
    .number()
    .int()
    .min(-(2 ** 53))
    .max(2 ** 53)
    .nullable()
    .optional(),
  stop: z
    .union([z.string().min(1).max(1000), z.array(z.string().min(1).max(1000)).max(4)])
    .nullable()
    .optional(),
  stream: z.boolean().nullable().optional(),
  stream_options: z.object({ include_usage: z.boolean().optional() }).strict().nullable().optional(),
  n: z.literal(1, { message: 'only n = 1 is supported' }).nullable().optional(),
  user: z.string().max(1000).optional(),
};

export const ChatCompletionRequest = z
  .object({
    messages: z.array(message).min(1).max(10_000),
    max_completion_tokens: z
      .number()
      .int()
      .min(1)
      .max(2 ** 31)
      .nullable()
      .optional(),
    tools: z.array(tool).max(1000).optional(),
    tool_choice: z
      .enum(['auto', 'none'], { message: 'tool_choice must be "auto" or "none" (a specific or required tool is not supported)' })
      .optional(),
    ...generation,
  })
  .strict();

export const CompletionRequest = z.object({ prompt: text, ...generation }).strict();

export type ChatCompletionRequest = z.infer<typeof ChatCompletionRequest>;
export type CompletionRequest = z.infer<typeof CompletionRequest>;
export type Message = z.infer<typeof message>;

/** The first problem of a failed validation, as OpenAI reports it: a message and the parameter's path. */
export function firstIssue(error: z.ZodError): { message: string; param: string | null } {
  const issue = error.issues[0];
  const param = issue.path.length ? issue.path.join('.') : null;
  if (issue.code === 'unrecognized_keys') {
    const where = param ? ` in ${param}` : '';
    return {
      message: `unknown or unsupported field${issue.keys.length > 1 ? 's' : ''}${where}: ${issue.keys.join(', ')}`,
      param: [param, issue.keys[0]].filter(Boolean).join('.'),
    };
  }
  return { message: `${param ?? 'the body'}: ${issue.message}`, param };
}
