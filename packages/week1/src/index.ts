// Week 1: from matmul to text.
// Chapters land here as the course is written; see docs/ for the plan.
export {};
