"""Schedule tricks: the LR factor (on_lr_factor: warmup, cosine) and the weights evaluated (on_step, eval_model: EMA)."""
