// Finding a WebGPU device: Dawn (the `webgpu` package) on the platform's native API, with Mesa's software
// OpenGL ES as the fallback where there is no GPU.
import { WebGPUBackend } from './backend.ts';

export interface WebGPUOptions {
  /**
   * A Dawn backend to use ('vulkan', 'metal', 'd3d12', 'opengles', 'opengl', 'null'); defaults to env
   * TINY_LLM_WEBGPU_BACKEND, else the platform's native API with Mesa's GLES as the fallback.
   */
  backend?: string;
  powerPreference?: GPUPowerPreference;
}

let instance: Promise<WebGPUBackend> | null = null;

/**
 * The WebGPU backend, created on the first call; later calls return the same backend (their options are
 * ignored) until it is destroyed.
 */
export function initWebGPU(options: WebGPUOptions = {}): Promise<WebGPUBackend> {
  instance ??= createBackend(options).catch((err) => {
    instance = null;
    throw err;
  });
  return instance;
}

interface Attempt {
  label: string;
  flags: string[];
  featureLevels: ('core' | 'compatibility')[];
}

function attempts(requested: string | undefined): Attempt[] {
  if (requested) {
    return [{ label: requested, flags: [`backend=${requested}`], featureLevels: ['core', 'compatibility'] }];
  }
  return [
    { label: 'default (Vulkan/Metal/D3D12)', flags: [], featureLevels: ['core'] },
    // OpenGL ES only offers WebGPU's compatibility feature level.
    { label: 'opengles', flags: ['backend=opengles'], featureLevels: ['compatibility'] },
  ];
}

async function createBackend(options: WebGPUOptions): Promise<WebGPUBackend> {
  const { create } = await import('webgpu');
  const requested = options.backend || process.env.TINY_LLM_WEBGPU_BACKEND || undefined;
  const failures: string[] = [];
  for (const attempt of attempts(requested)) {
    // Mesa's EGL needs a platform when there is no display; surfaceless works headless.
    if (attempt.flags.some((f) => f.includes('opengl')) && process.platform === 'linux') {
      process.env.EGL_PLATFORM ??= 'surfaceless';
    }
    try {
      let gpu: GPU | null = create(attempt.flags);
      for (const featureLevel of attempt.featureLevels) {
        const adapter = await gpu.requestAdapter({ featureLevel, powerPreference: options.powerPreference });
        if (!adapter) continue;
        const device = await requestDevice(adapter);
        const info = adapter.info;
        const adapterName = [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(' ');
        return new WebGPUBackend(device, {
          ownsDevice: true,
          adapterName: `${adapterName || 'unknown adapter'} (${attempt.label}, ${featureLevel})`,
          // Dawn keeps the process alive while the object from create() is referenced: drop it on destroy.
          onDestroy: () => {
            gpu = null;
            instance = null;
          },
        });
      }
      failures.push(`${attempt.label}: no adapter`);
    } catch (err) {
      failures.push(`${attempt.label}: ${(err as Error).message}`);
    }
  }
  throw new Error(
    `initWebGPU: no WebGPU adapter found (tried ${failures.join('; ')}). On headless Linux, install Mesa ` +
      `(libegl1, libgles2, mesa drivers) and run with EGL_PLATFORM=surfaceless, or Mesa's lavapipe for Vulkan; ` +
      `set TINY_LLM_WEBGPU_BACKEND (vulkan, metal, d3d12, opengles) to choose a backend.`,
  );
}

/** A device with the adapter's own limits for what tensors need (the defaults cap buffers at 128-256 MiB). */
async function requestDevice(adapter: GPUAdapter): Promise<GPUDevice> {
  const names = [
    'maxBufferSize',
    'maxStorageBufferBindingSize',
    'maxComputeWorkgroupStorageSize',
    'maxComputeInvocationsPerWorkgroup',
    'maxComputeWorkgroupSizeX',
    'maxComputeWorkgroupSizeY',
    'maxComputeWorkgroupSizeZ',
    'maxComputeWorkgroupsPerDimension',
    'maxStorageBuffersPerShaderStage',
  ] as const;
  const requiredLimits: Record<string, number> = {};
  for (const name of names) requiredLimits[name] = adapter.limits[name];
  const wanted: GPUFeatureName[] = ['shader-f16', 'subgroups', 'timestamp-query'];
  const requiredFeatures = wanted.filter((f) => adapter.features.has(f));
  return adapter.requestDevice({ requiredLimits, requiredFeatures });
}
