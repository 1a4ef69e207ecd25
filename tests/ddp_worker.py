"""One process of tests/test_distributed.py's 2-process run, started by torchrun: trains the smoke
run with train_and_evaluate into a folder of ITS OWN (OUT/rank<R>), so that what each process
wrote can be told apart, and tries the sync_bn trick on the real process group.

usage: torchrun --standalone --nproc_per_node=2 tests/ddp_worker.py OUT CACHE
"""
import json
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from ablate import distributed
from ablate.config import conf_dir
from ablate.testing import build_trick, tiny_model
from ablate.train import train_and_evaluate
from ablate.tricks import TrickConflictError

out, cache = Path(sys.argv[1]), sys.argv[2]
with initialize_config_dir(str(conf_dir()), version_base="1.3"):
    cfg = compose("config", overrides=["profile=smoke", f"paths.cache={cache}", "model=retinanet", "data.hflip=0"])
processes = distributed.init_from_env(cfg)
rank = distributed.rank()
record = train_and_evaluate(cfg, out / f"rank{rank}")
try:
    build_trick("sync_bn").on_model(tiny_model("fcos"))
    sync_bn = "applied"
except TrickConflictError as e:
    sync_bn = str(e)
(out / f"report{rank}.json").write_text(json.dumps({
    "processes": processes, "backend": distributed.backend(), "status": record.status,
    "train_processes": cfg.train.get("processes"), "sync_bn": sync_bn}))
