"""A plain Qwen2 directory from a stage export (drops mm_projector tensors and the mm_/idamoe config keys),
so a text-pretrained decoder can be the next stage 1's model.llm_path.   llm_from_stage_export.py SRC/hf DST
"""
import json
import os
import shutil
import sys

import safetensors_io

src, dst = sys.argv[1], sys.argv[2]
os.makedirs(dst, exist_ok=True)
tensors, _ = safetensors_io.read(os.path.join(src, "model.safetensors"))
safetensors_io.write(os.path.join(dst, "model.safetensors"),
                     {name: t for name, t in tensors.items() if "mm_projector" not in name})
c = json.load(open(os.path.join(src, "config.json")))
json.dump({k: v for k, v in c.items() if not k.startswith("mm_") and k != "idamoe"},
          open(os.path.join(dst, "config.json"), "w"), indent=2)
for name in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
    if os.path.exists(os.path.join(src, name)):
        shutil.copy(os.path.join(src, name), os.path.join(dst, name))
