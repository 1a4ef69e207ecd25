"""Data tricks: the batch hooks (on_batch) that mix, tile, erase, crop, recolour, rescale or warp the training images, their boxes with them."""
