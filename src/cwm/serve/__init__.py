"""HTTP serving of local checkpoints: see cwm.serve.app."""
