"""Relabel a stage-2 export as a stage-1 export, so that a second stage-2 run can start from it (runs
SC6, SC7, SC9: the presence-first phase, then the demo's stage 2). Drops the router tensors and the
config's MoE keys; the trainer then warms up fresh GMM routers, as after a real stage 1.
  as_stage1_export.py STAGE2_OUT/hf DST/hf
"""
import json
import os
import shutil
import sys

import safetensors_io

src, dst = sys.argv[1], sys.argv[2]
shutil.copytree(src, dst, dirs_exist_ok=True)
cfg_path = os.path.join(dst, "config.json")
cfg = json.load(open(cfg_path))
cfg["idamoe"]["stage"] = 1
cfg["idamoe"].pop("moe", None)
cfg["idamoe"].pop("router_layers", None)
json.dump(cfg, open(cfg_path, "w"), indent=1)
tensors, metadata = safetensors_io.read(os.path.join(dst, "model.safetensors"))
for name in [n for n in tensors if ".router." in n]:
    del tensors[name]
safetensors_io.write(os.path.join(dst, "model.safetensors"), tensors, metadata)
