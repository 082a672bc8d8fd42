// What the Progress page gets from the dev server when the grader answers, fails, hangs or cannot start.
// The grader is stood in for by small node scripts: runGrader only sees a command and its output.
import { describe, expect, it } from 'vitest';
import { runGrader } from '../src/progress.ts';

const script = (code: string) => ['-e', code];

describe('the progress endpoint', () => {
  it("passes the grader's report on", async () => {
    const report = {
      solution: 'learner',
      chapters: [{ id: '1.1', title: 'Attention', week: 'week1', passed: 2, total: 23, status: 'in progress' }],
    };
    const answer = await runGrader(process.execPath, script(`console.log(${JSON.stringify(JSON.stringify(report))})`));
    expect(answer.status).toBe(200);
    expect(JSON.parse(answer.body)).toEqual(report);
  });

  it('says why when the grader prints no report', async () => {
    const answer = await runGrader(
      process.execPath,
      script('console.log("a table"); console.error("the addon is not built"); process.exit(1)'),
    );
    expect(answer.status).toBe(500);
    expect(JSON.parse(answer.body).error).toMatch(/exited with code 1 without a progress report.*the addon is not built/s);
  });

  it('stops a grader that does not finish', async () => {
    const answer = await runGrader(process.execPath, script('setInterval(() => {}, 1000)'), 300);
    expect(answer.status).toBe(500);
    expect(JSON.parse(answer.body).error).toBe('the grader did not finish within 0.3 s');
  });

  it('says so when the grader cannot start', async () => {
    const answer = await runGrader('/nonexistent/tsx', []);
    expect(answer.status).toBe(500);
    expect(JSON.parse(answer.body).error).toMatch(/^cannot run the grader: spawn \/nonexistent\/tsx ENOENT/);
  });
});
