"""Training: shared objectives (:mod:`.objectives`); the trainer loop, EMA and checkpoints follow
with the engine (DESIGN.md, "Data flow of one iteration")."""
