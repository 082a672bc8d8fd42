// Week 3: serving at scale.
// Chapters land here as the course is written; see docs/ for the plan.
export {};
