// The server's Prometheus metrics (GET /metrics), with prom-client: what an operator graphs to see the load
// (requests, tokens, running and waiting requests, KV cache use) and the latency users feel (time to first
// token, time per output token).
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

export class Metrics {
  readonly registry = new Registry();
  readonly requests = new Counter({
    name: 'tiny_llm_requests_total',
    help: 'HTTP requests, by path and status',
    labelNames: ['path', 'status'],
    registers: [this.registry],
  });
  readonly promptTokens = new Counter({
    name: 'tiny_llm_prompt_tokens_total',
    help: 'Prompt tokens of the requests run',
    registers: [this.registry],
  });
  readonly generatedTokens = new Counter({
    name: 'tiny_llm_generation_tokens_total',
    help: 'Tokens generated',
    registers: [this.registry],
  });
  readonly timeToFirstToken = new Histogram({
    name: 'tiny_llm_time_to_first_token_seconds',
    help: 'From a request arriving to its first generated token',
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30],
    registers: [this.registry],
  });
  readonly timePerOutputToken = new Histogram({
    name: 'tiny_llm_time_per_output_token_seconds',
    help: 'Between two generated tokens of a request',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
    registers: [this.registry],
  });
  readonly running = new Gauge({
    name: 'tiny_llm_requests_running',
    help: 'Requests in the batch (prefilling or decoding)',
    registers: [this.registry],
  });
  readonly waiting = new Gauge({
    name: 'tiny_llm_requests_waiting',
    help: 'Requests waiting for a slot in the batch',
    registers: [this.registry],
  });
  readonly kvCacheTokens = new Gauge({
    name: 'tiny_llm_kv_cache_tokens',
    help: 'Tokens held in the KV caches of the requests in flight',
    registers: [this.registry],
  });
  readonly kvCachePages = new Gauge({
    name: 'tiny_llm_kv_cache_pages_used',
    help: "Pages of the engine's KV cache pool held by requests",
    registers: [this.registry],
  });
  readonly kvCachePagesTotal = new Gauge({
    name: 'tiny_llm_kv_cache_pages_total',
    help: "Pages in the engine's KV cache pool",
    registers: [this.registry],
  });
}
