// Week 2: a tiny vLLM.
// Chapters land here as the course is written; see docs/ for the plan.
export {};
