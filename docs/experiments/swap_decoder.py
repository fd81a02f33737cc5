"""A copy of a stage-1 export whose decoder tensors are those of another Qwen2 directory (same shapes), to be
the text pretraining's train.init_from (stage 2 starts only from a stage-1 export; the lead's step 1).
  swap_decoder.py STAGE1_DIR/hf LLM_DIR DST/hf
"""
import os
import shutil
import sys

import safetensors_io

stage1, llm, dst = sys.argv[1], sys.argv[2], sys.argv[3]
shutil.copytree(stage1, dst, dirs_exist_ok=True)
tensors, metadata = safetensors_io.read(os.path.join(stage1, "model.safetensors"))
decoder, _ = safetensors_io.read(os.path.join(llm, "model.safetensors"))
for name, t in decoder.items():
    if name not in tensors or tensors[name][:2] != t[:2]:
        sys.exit(f"{llm}: tensor {name} {t[:2]} has no twin of that dtype and shape in {stage1}")
    tensors[name] = t
safetensors_io.write(os.path.join(dst, "model.safetensors"), tensors, metadata)
