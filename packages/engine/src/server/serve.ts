// `tiny-llm serve`: the OpenAI-compatible server. The model and the scheduler load in a worker thread; this
// thread serves HTTP until SIGINT or SIGTERM.
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import { loadTokenizer } from '@tiny-llm/tokenizer';
import { UsageError, UserError } from '../errors.ts';
import type { KvCacheChoice, ModelChoice } from '../registry.ts';
import { createApp } from './app.ts';
import { DisaggregatedEngine } from './disaggregated-engine.ts';
import { EngineWorker } from './engine-worker.ts';
import { Metrics } from './metrics.ts';

export interface ServeOptions extends KvCacheChoice {
  modelDir: string;
  /** The name the API reports for the model. */
  modelName: string;
  choice: ModelChoice;
  host: string;
  port: number;
  apiKey?: string;
  maxBatch: number;
  prefillChunk: number;
  maxModelLen?: number;
  /** Prefill and decode in separate workers (chapter 3.5). */
  disaggregated?: boolean;
  log: (line: string) => void;
}

export interface RunningServer {
  url: string;
  close(): Promise<void>;
}

export async function startServer(options: ServeOptions): Promise<RunningServer> {
  const tokenizer = loadTokenizer(options.modelDir);
  const t0 = performance.now();
  const { modelDir, choice, maxBatch, prefillChunk, kvCacheMb, prefixCaching } = options;
  const workerOptions = { modelDir, choice, maxBatch, prefillChunk, kvCacheMb, prefixCaching };
  const worker = options.disaggregated ? await DisaggregatedEngine.start(workerOptions) : await EngineWorker.start(workerOptions);
  const maxModelLen = options.maxModelLen ?? worker.maxPositions;
  if (maxModelLen > worker.maxPositions) {
    await worker.close();
    throw new UsageError(
      `serve: --max-model-len ${maxModelLen} is more than the ${worker.maxPositions} positions the model and its KV cache hold`,
    );
  }
  options.log(
    `loaded ${options.modelName} on ${worker.description} in ${((performance.now() - t0) / 1e3).toFixed(2)} s (max batch ${options.maxBatch}, prefill chunks of ${options.prefillChunk}, context ${maxModelLen})`,
  );
  const app = createApp({
    worker,
    tokenizer,
    metrics: new Metrics(),
    inFlight: new Map(),
    modelName: options.modelName,
    apiKey: options.apiKey,
    maxModelLen,
    log: options.log,
  });
  const server = await new Promise<ReturnType<typeof serve>>((resolve, reject) => {
    const s = serve({ fetch: app.fetch, hostname: options.host, port: options.port }, () => resolve(s));
    s.once('error', (err: NodeJS.ErrnoException) => {
      void worker.close();
      reject(new UserError(`serve: cannot listen on ${options.host}:${options.port} (${err.code ?? err.message})`));
    });
  });
  const { port } = server.address() as AddressInfo;
  const url = `http://${options.host.includes(':') ? `[${options.host}]` : options.host}:${port}`;
  options.log(`listening on ${url} (OpenAI-compatible: ${url}/v1)${options.apiKey ? ', API key required' : ''}`);
  return {
    url,
    close: async () => {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Idle keep-alive connections would hold close() open.
        if ('closeAllConnections' in server) server.closeAllConnections();
      });
      await worker.close();
    },
  };
}

/** Runs the server until the process is told to stop. */
export async function runServer(options: ServeOptions): Promise<void> {
  const running = await startServer(options);
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      options.log(`${signal}: shutting down`);
      void running.close().then(resolve);
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
}
