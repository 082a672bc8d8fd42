#!/usr/bin/env bash
# pnpm test: every package's tests against the reference solutions (the book's build the site and open it in
# a browser), the check that the learner's stubs are still stubs, and the static checks (types, dependencies).
# Every step runs even when an earlier one fails, so that CI's count covers all of them; the exit status is
# non-zero if any step failed.
status=0
TINY_LLM_SOLUTION=reference turbo run test --concurrency=1 --continue || status=1
tsx scripts/grade.ts --check-stubs || status=1
tsx scripts/static-checks.ts || status=1
exit $status
