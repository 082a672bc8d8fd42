// The reference solutions and the engine.
export {};
