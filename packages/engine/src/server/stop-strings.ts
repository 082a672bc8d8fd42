// OpenAI's `stop`: the text ends before the first occurrence of any of the stop strings, which are never sent.
// While streaming, the end of the text that could still become a stop string is held back until it is settled.
import { partialMarkerLength } from '@tiny-llm/reference/week3';

export class StopStrings {
  private pending = '';
  /** Set once a stop string was found: everything after it is discarded. */
  stopped = false;

  constructor(readonly stops: readonly string[]) {}

  /** Feeds new text; returns the text that is settled (free of stop strings and of their beginnings). */
  push(text: string): string {
    if (this.stopped) return '';
    this.pending += text;
    let cut = -1;
    for (const stop of this.stops) {
      const at = this.pending.indexOf(stop);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      this.stopped = true;
      const settled = this.pending.slice(0, cut);
      this.pending = '';
      return settled;
    }
    const hold = Math.max(0, ...this.stops.map((stop) => partialMarkerLength(this.pending, stop)));
    const settled = this.pending.slice(0, this.pending.length - hold);
    this.pending = this.pending.slice(this.pending.length - hold);
    return settled;
  }

  /** The end of the text: what was held back, now known not to be a stop string. */
  end(): string {
    const rest = this.pending;
    this.pending = '';
    return rest;
  }
}
