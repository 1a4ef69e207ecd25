"""Loss tricks: what a detector's loss slots hold (ablate/models/losses: cls_loss, box_loss, roi_sampler, sample_weighting), set in on_model."""
