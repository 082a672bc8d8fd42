import { mergeConfig } from 'vitest/config';
import { sharedConfig } from '../../vitest.shared.ts';

export default mergeConfig(sharedConfig(import.meta.url), {
  // Builds and serves the site once, before the browser opens it.
  test: { globalSetup: ['test/global-setup.ts'] },
});
