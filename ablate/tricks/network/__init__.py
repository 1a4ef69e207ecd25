"""Network tricks: model surgery in on_model (activations, normalisations, dropout and its kin, residual forms, a block on C5, the neck); the blocks they insert live in ablate/models."""
