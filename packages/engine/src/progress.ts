// A progress bar on stderr for loading weights (and building random ones). Drawn only when stderr is a
// terminal: in a pipe or a log file it would be a stream of carriage returns, so there it stays silent.

export interface Progress {
  /** Reports `done` out of `total` units (bytes, tensors...); redraws at most every 50 ms. */
  update(done: number, total: number): void;
  /** Clears the bar (the caller then prints its own summary line). */
  done(): void;
}

const WIDTH = 30;

export function progressBar(label: string, stream: NodeJS.WriteStream = process.stderr): Progress {
  if (!stream.isTTY) return { update() {}, done() {} };
  let last = 0;
  let drawn = false;
  const start = performance.now();
  return {
    update(done, total) {
      const now = performance.now();
      if (done < total && now - last < 50) return;
      last = now;
      const fraction = total > 0 ? Math.min(1, done / total) : 1;
      const filled = Math.round(fraction * WIDTH);
      const bar = '#'.repeat(filled) + '-'.repeat(WIDTH - filled);
      const seconds = ((now - start) / 1000).toFixed(1);
      stream.write(`\r${label} [${bar}] ${(fraction * 100).toFixed(0).padStart(3)}% ${seconds}s`);
      drawn = true;
    },
    done() {
      if (drawn) stream.write('\r\x1b[2K');
      drawn = false;
    },
  };
}
