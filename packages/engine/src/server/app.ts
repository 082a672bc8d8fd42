// The OpenAI-compatible HTTP API, on Hono: POST /v1/chat/completions and /v1/completions (streamed as server-sent
// events or not), GET /v1/models, /health and /metrics. Bodies are validated with zod (schemas.ts); every error
// has OpenAI's shape {"error": {"message", "type", "param", "code"}}. The model runs in a worker thread
// (engine-worker.ts): this thread only parses, renders the chat template, detokenizes and streams.
import { randomUUID } from 'node:crypto';
import type { ChatMessage, ToolCall, ToolSchema } from '@tiny-llm/tokenizer';
import { Hono, type Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { streamSSE } from 'hono/streaming';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import type { z } from 'zod';
import { ToolCallStream, type ParsedBlock } from '@tiny-llm/reference/week3';
import { startGeneration, type FinishReason, type GenerationParams, type ServerContext } from './generation.ts';
import { ChatCompletionRequest, CompletionRequest, firstIssue, type Message } from './schemas.ts';

export interface AppOptions extends ServerContext {
  /** The name /v1/models lists and responses carry. */
  modelName: string;
  /** With a key, /v1/* requires `Authorization: Bearer <key>`. */
  apiKey?: string;
  /** The most tokens a request may reach, prompt and completion together. */
  maxModelLen: number;
  /** Request bodies larger than this are refused with 413. */
  maxBodyBytes?: number;
  /** One line per request: method, path, status, tokens, milliseconds. */
  log: (line: string) => void;
}

type ErrorType = 'invalid_request_error' | 'authentication_error' | 'not_found_error' | 'server_error';

/** An error in OpenAI's shape. */
function errorResponse(
  c: Context,
  status: ContentfulStatusCode,
  type: ErrorType,
  message: string,
  param: string | null = null,
  code: string | null = null,
) {
  return c.json({ error: { message, type, param, code } }, status);
}

/** A request's line in the log, written when its response is complete (for a stream: when the stream ends). */
interface RequestRecord {
  started: number;
  tokens?: number;
  /** Set by a streaming handler, which writes the line itself when the stream ends. */
  deferred?: boolean;
}

type Env = { Variables: { record: RequestRecord } };

/** A message's content as text: OpenAI's list of text parts is joined. */
const textOf = (content: string | { text: string }[] | null | undefined) =>
  typeof content === 'string' ? content : (content ?? []).map((p) => p.text).join('');

/** The OpenAI messages as the chat template takes them (a tool call's arguments are a JSON string there). */
function templateMessages(messages: Message[]): ChatMessage[] {
  return messages.map((m) => {
    if (m.role === 'assistant') {
      const toolCalls: ToolCall[] | undefined = m.tool_calls?.map((call) => ({
        id: call.id,
        type: 'function',
        function: { name: call.function.name, arguments: call.function.arguments },
      }));
      return { role: 'assistant', content: textOf(m.content), ...(toolCalls ? { tool_calls: toolCalls } : {}) };
    }
    if (m.role === 'tool') return { role: 'tool', content: textOf(m.content), tool_call_id: m.tool_call_id };
    return { role: m.role, content: textOf(m.content) };
  });
}

/** An OpenAI tool call of a parsed block. */
function openaiToolCall(block: Extract<ParsedBlock, { call: unknown }>) {
  return {
    id: `call_${randomUUID().replace(/-/g, '').slice(0, 24)}`,
    type: 'function' as const,
    function: { name: block.call.name, arguments: JSON.stringify(block.call.arguments) },
  };
}

export function createApp(o: AppOptions): Hono<Env> {
  const app = new Hono<Env>();
  const logLine = (c: Context<Env>, status: number) => {
    const record = c.get('record');
    const tokens = record.tokens === undefined ? '-' : String(record.tokens);
    o.log(`${c.req.method} ${c.req.path} ${status} ${tokens} tokens ${(performance.now() - record.started).toFixed(0)} ms`);
    o.metrics.requests.inc({ path: c.req.path, status: String(status) });
  };

  app.use(async (c, next) => {
    c.set('record', { started: performance.now() });
    await next();
    if (!c.get('record').deferred) logLine(c, c.res.status);
  });
  app.use(
    '/v1/*',
    bodyLimit({
      maxSize: o.maxBodyBytes ?? 4 * 1024 * 1024,
      onError: (c) =>
        errorResponse(c, 413, 'invalid_request_error', `the request body is larger than ${o.maxBodyBytes ?? 4 * 1024 * 1024} bytes`),
    }),
  );
  if (o.apiKey) {
    app.use('/v1/*', async (c, next) => {
      if (c.req.header('authorization') !== `Bearer ${o.apiKey}`) {
        const why = c.req.header('authorization') ? 'the API key is not valid' : 'missing API key: send "Authorization: Bearer <key>"';
        return errorResponse(c, 401, 'authentication_error', why, null, 'invalid_api_key');
      }
      await next();
    });
  }

  app.get('/health', (c) => c.json({ status: 'ok' }));
  app.get('/metrics', async (c) => {
    o.metrics.running.set(o.worker.running);
    o.metrics.waiting.set(o.worker.waiting);
    if (o.worker.kvPages) {
      o.metrics.kvCachePages.set(o.worker.kvPages.used);
      o.metrics.kvCachePagesTotal.set(o.worker.kvPages.total);
    }
    return c.text(await o.metrics.registry.metrics(), 200, { 'content-type': o.metrics.registry.contentType });
  });
  app.get('/v1/models', (c) => c.json({ object: 'list', data: [{ id: o.modelName, object: 'model', created: 0, owned_by: 'tiny-llm' }] }));

  /** The body, parsed and validated, or the 400 to send. */
  async function parseBody<S extends z.ZodType>(c: Context<Env>, schema: S): Promise<z.infer<S> | Response> {
    let body: unknown;
    try {
      body = JSON.parse(await c.req.text());
    } catch (err) {
      return errorResponse(c, 400, 'invalid_request_error', `the body is not valid JSON (${(err as Error).message})`);
    }
    const parsed = schema.safeParse(body);
    if (!parsed.success) {
      const { message, param } = firstIssue(parsed.error);
      return errorResponse(c, 400, 'invalid_request_error', message, param);
    }
    return parsed.data;
  }

  /** The generation parameters of a validated body and its prompt, or the 400 to send. */
  function paramsOf(
    c: Context<Env>,
    body: CompletionRequest | ChatCompletionRequest,
    prompt: string,
    maxTokens: number | null | undefined,
  ): GenerationParams | Response {
    const promptIds = o.tokenizer.encode(prompt);
    if (promptIds.length === 0)
      return errorResponse(c, 400, 'invalid_request_error', 'the prompt is empty: there is no token to continue from', 'prompt');
    const room = o.maxModelLen - promptIds.length;
    if (room < 1) {
      return errorResponse(
        c,
        400,
        'invalid_request_error',
        `the prompt has ${promptIds.length} tokens, more than the model's context of ${o.maxModelLen} allows (it needs room for one token)`,
        'messages',
        'context_length_exceeded',
      );
    }
    const stop = body.stop === undefined || body.stop === null ? [] : typeof body.stop === 'string' ? [body.stop] : body.stop;
    return {
      promptIds,
      maxTokens: Math.min(maxTokens ?? room, room),
      sampling: { temperature: body.temperature ?? 1, topP: body.top_p ?? undefined, seed: body.seed ?? undefined },
      stop,
    };
  }

  const usage = (prompt: number, completion: number) => ({
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: prompt + completion,
  });

  /**
   * Runs a generation to its end for a non-streaming response. A client that disconnects cancels it. Resolves
   * with the text and the finish reason, or rejects with the engine's message.
   */
  function generateAll(c: Context<Env>, params: GenerationParams): Promise<{ text: string; finishReason: FinishReason; tokens: number }> {
    return new Promise((resolve, reject) => {
      let text = '';
      const cancel = startGeneration(o, params, {
        text: (t) => (text += t),
        end: (finishReason, tokens) => resolve({ text, finishReason, tokens }),
        fail: (message) => reject(new Error(message)),
      });
      c.req.raw.signal.addEventListener('abort', cancel);
    });
  }

  /**
   * Streams a generation as server-sent events: `frame(kind, payload)` builds each event's JSON (a text delta,
   * the end); the stream ends with "data: [DONE]". A client that disconnects cancels the generation.
   */
  function streamGeneration(
    c: Context<Env>,
    params: GenerationParams,
    frames: {
      first?: () => object;
      text: (text: string) => object[];
      end: (finishReason: FinishReason) => object[];
      usage: (tokens: number) => object | null;
    },
  ) {
    const record = c.get('record');
    record.deferred = true;
    return streamSSE(c, async (stream) => {
      const queue: (object | 'done')[] = [];
      let wake: (() => void) | null = null;
      const push = (...items: (object | 'done')[]) => {
        queue.push(...items);
        wake?.();
      };
      let status = 200;
      const cancel = startGeneration(o, params, {
        text: (text) => push(...frames.text(text)),
        end: (finishReason, tokens) => {
          record.tokens = tokens;
          const tail = frames.usage(tokens);
          push(...frames.end(finishReason), ...(tail ? [tail] : []), 'done');
        },
        fail: (message) => {
          status = 500;
          push({ error: { message, type: 'server_error', param: null, code: null } }, 'done');
        },
      });
      stream.onAbort(() => {
        cancel();
        push('done');
      });
      if (frames.first) await stream.writeSSE({ data: JSON.stringify(frames.first()) });
      for (;;) {
        while (queue.length === 0) await new Promise<void>((resolve) => (wake = resolve));
        wake = null;
        const item = queue.shift()!;
        if (item === 'done') break;
        await stream.writeSSE({ data: JSON.stringify(item) });
      }
      if (!stream.aborted) await stream.writeSSE({ data: '[DONE]' });
      logLine(c, stream.aborted ? 499 : status);
    });
  }

  app.post('/v1/completions', async (c) => {
    const body = await parseBody(c, CompletionRequest);
    if (body instanceof Response) return body;
    const params = paramsOf(c, body, body.prompt, body.max_tokens);
    if (params instanceof Response) return params;
    const id = `cmpl-${randomUUID()}`;
    const created = Math.floor(Date.now() / 1000);
    const base = { id, object: 'text_completion', created, model: o.modelName };
    if (body.stream) {
      return streamGeneration(c, params, {
        text: (text) => [{ ...base, choices: [{ index: 0, text, finish_reason: null, logprobs: null }] }],
        end: (finishReason) => [{ ...base, choices: [{ index: 0, text: '', finish_reason: finishReason, logprobs: null }] }],
        usage: (tokens) =>
          body.stream_options?.include_usage ? { ...base, choices: [], usage: usage(params.promptIds.length, tokens) } : null,
      });
    }
    try {
      const { text, finishReason, tokens } = await generateAll(c, params);
      c.get('record').tokens = tokens;
      return c.json({
        ...base,
        choices: [{ index: 0, text, finish_reason: finishReason, logprobs: null }],
        usage: usage(params.promptIds.length, tokens),
      });
    } catch (err) {
      return errorResponse(c, 500, 'server_error', (err as Error).message);
    }
  });

  app.post('/v1/chat/completions', async (c) => {
    const body = await parseBody(c, ChatCompletionRequest);
    if (body instanceof Response) return body;
    if (!o.tokenizer.hasChatTemplate)
      return errorResponse(c, 400, 'invalid_request_error', 'this model has no chat template: use /v1/completions');
    // tool_choice "none" renders no tools, so the model is not offered any.
    const tools: ToolSchema[] | undefined = body.tool_choice === 'none' ? undefined : (body.tools as ToolSchema[] | undefined);
    let prompt: string;
    try {
      prompt = o.tokenizer.applyChatTemplate(templateMessages(body.messages), { tools, addGenerationPrompt: true });
    } catch (err) {
      return errorResponse(
        c,
        400,
        'invalid_request_error',
        `the messages do not render through the chat template: ${(err as Error).message}`,
        'messages',
      );
    }
    const params = paramsOf(c, body, prompt, body.max_completion_tokens ?? body.max_tokens);
    if (params instanceof Response) return params;
    const id = `chatcmpl-${randomUUID()}`;
    const created = Math.floor(Date.now() / 1000);
    const base = { id, object: 'chat.completion.chunk', created, model: o.modelName };
    const parseCalls = tools !== undefined && tools.length > 0;

    if (body.stream) {
      const toolStream = new ToolCallStream();
      let calls = 0;
      // Text is content; a closed <tool_call> block becomes a tool_calls delta (a broken one stays text).
      const deltas = (pieces: ReturnType<ToolCallStream['push']>) =>
        pieces.map((piece) => {
          if ('text' in piece) return { ...base, choices: [{ index: 0, delta: { content: piece.text }, finish_reason: null }] };
          const block = piece.block;
          if ('error' in block)
            return { ...base, choices: [{ index: 0, delta: { content: `<tool_call>${block.text}</tool_call>` }, finish_reason: null }] };
          return {
            ...base,
            choices: [{ index: 0, delta: { tool_calls: [{ index: calls++, ...openaiToolCall(block) }] }, finish_reason: null }],
          };
        });
      return streamGeneration(c, params, {
        first: () => ({ ...base, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] }),
        text: (text) =>
          parseCalls
            ? deltas(toolStream.push(text))
            : [{ ...base, choices: [{ index: 0, delta: { content: text }, finish_reason: null }] }],
        end: (finishReason) => {
          const rest = parseCalls ? deltas(toolStream.end()) : [];
          return [...rest, { ...base, choices: [{ index: 0, delta: {}, finish_reason: calls > 0 ? 'tool_calls' : finishReason }] }];
        },
        usage: (tokens) =>
          body.stream_options?.include_usage ? { ...base, choices: [], usage: usage(params.promptIds.length, tokens) } : null,
      });
    }

    let result: Awaited<ReturnType<typeof generateAll>>;
    try {
      result = await generateAll(c, params);
    } catch (err) {
      return errorResponse(c, 500, 'server_error', (err as Error).message);
    }
    c.get('record').tokens = result.tokens;
    let content = result.text;
    let toolCalls: ReturnType<typeof openaiToolCall>[] = [];
    if (parseCalls) {
      const stream = new ToolCallStream();
      const pieces = [...stream.push(result.text), ...stream.end()];
      content = pieces
        .map((p) => ('text' in p ? p.text : 'error' in p.block ? `<tool_call>${p.block.text}</tool_call>` : ''))
        .join('')
        .trim();
      toolCalls = pieces.flatMap((p) => ('block' in p && 'call' in p.block ? [openaiToolCall(p.block)] : []));
    }
    const message = {
      role: 'assistant',
      content: toolCalls.length && content === '' ? null : content,
      ...(toolCalls.length ? { tool_calls: toolCalls } : {}),
    };
    const finishReason = toolCalls.length ? 'tool_calls' : result.finishReason;
    return c.json({
      ...base,
      object: 'chat.completion',
      choices: [{ index: 0, message, finish_reason: finishReason, logprobs: null }],
      usage: usage(params.promptIds.length, result.tokens),
    });
  });

  app.notFound((c) =>
    errorResponse(
      c,
      404,
      'not_found_error',
      `no route ${c.req.method} ${c.req.path} (routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /metrics)`,
    ),
  );
  app.onError((err, c) => errorResponse(c, 500, 'server_error', `internal error: ${err.message}`));
  return app;
}

export type { ChatCompletionRequest, CompletionRequest };
