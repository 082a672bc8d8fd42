/** What every stub throws until the learner writes it. The grader counts a chapter whose tests only fail
 * with this error as "not started". */
export class NotImplemented extends Error {
  constructor(
    readonly chapter: string,
    what: string,
  ) {
    super(`NotImplemented: ${what} (chapter ${chapter}). Read docs/week${chapter.split('.')[0]}/ and fill in the stub.`);
    this.name = 'NotImplemented';
  }
}
