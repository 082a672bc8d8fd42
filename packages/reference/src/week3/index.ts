// Week 3 reference solutions: serving at scale. The chapters land here as the course is written.
export {};
