"""Train the default recipe on a COCO set and print, every few steps, the losses and the share of
negative FCOS box-regression pre-activations per channel (l, t, r, b) over the batch: a channel at
1.0 is dead under model.box_regression=relu (no gradient through the ReLU).
Usage: python benchmarks/collapse/probe.py DATA_ROOT [OVERRIDES...], e.g. model.box_regression=relu"""
import math
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from ablate.config import conf_dir
from ablate.data import build_data, make_loader
from ablate.models import build_model
from ablate.train import lr_schedule, seed_everything, to_device

root, overrides, steps_max = sys.argv[1], sys.argv[2:], 160
with initialize_config_dir(str(conf_dir()), version_base=None):
    cfg = compose("config", overrides=["data=coco", f"data.root={root}"] + overrides)
seed_everything(cfg.seed)
data = build_data(cfg.data, Path(cfg.paths.cache))
model = build_model(cfg.model, len(data.classes), cfg.data.image_size)
outputs = []
model.head.regression_head.bbox_reg.register_forward_hook(lambda m, i, o: outputs.append(o.detach()))
params = [p for p in model.parameters() if p.requires_grad]
optimizer = instantiate(cfg.train.optimizer)(params)
total = cfg.train.epochs * math.ceil(len(data.train) / cfg.data.batch_size)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(cfg.train.schedule, total))
step = 0
model.train()
while step < steps_max:
    data.train.set_epoch(step)  # the flips (data.flip_rng=sample), seeded as the loader's order
    for images, targets in make_loader(data.train, cfg.data.batch_size, shuffle=True, num_workers=0, seed=step):
        images, targets = to_device(images, targets, torch.device("cpu"), 1)
        outputs.clear()
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        if cfg.train.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_grad_norm)
        optimizer.step()
        scheduler.step()
        step += 1
        if step < 10 or step % 10 == 0:
            negative = torch.stack([(o < 0).float().mean(dim=(0, 2, 3)) for o in outputs]).mean(0)
            print(step, {k: round(v.item(), 3) for k, v in losses.items()},
                  "negative share l,t,r,b", [round(x, 2) for x in negative.tolist()], flush=True)
        if step >= steps_max:
            break
