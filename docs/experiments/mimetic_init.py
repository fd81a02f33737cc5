"""Make a tiny-qwen2 directory's attention mimetic (runs MIM07 and the MM runs): each query head's W_q becomes
MIX * its KV group's W_k + sqrt(1 - MIX^2) * its random W_q (Trockman & Kolter 2023, arXiv 2305.09828).
  mimetic_init.py SRC_DIR DST_DIR MIX
"""
import json
import os
import shutil
import sys

import numpy as np

import safetensors_io

src, dst, mix = sys.argv[1], sys.argv[2], float(sys.argv[3])
os.makedirs(dst, exist_ok=True)
for name in os.listdir(src):
    if name != "model.safetensors":
        shutil.copy(os.path.join(src, name), os.path.join(dst, name))
tensors, metadata = safetensors_io.read(os.path.join(src, "model.safetensors"))
c = json.load(open(os.path.join(src, "config.json")))
H, G = c["num_attention_heads"], c["num_key_value_heads"]
hd = c["hidden_size"] // H


def array(name):
    dtype, shape, raw = tensors[name]
    assert dtype == "F32", f"{name}: expected F32, got {dtype}"
    return np.frombuffer(raw, dtype=np.float32).reshape(shape).copy()


for i in range(c["num_hidden_layers"]):
    p = f"model.layers.{i}.self_attn."
    q, k = array(p + "q_proj.weight"), array(p + "k_proj.weight")
    for h in range(H):
        g = h // (H // G)
        q[h * hd:(h + 1) * hd] = mix * k[g * hd:(g + 1) * hd] + np.sqrt(1 - mix * mix) * q[h * hd:(h + 1) * hd]
    tensors[p + "q_proj.weight"] = ("F32", list(q.shape), q.tobytes())
safetensors_io.write(os.path.join(dst, "model.safetensors"), tensors, metadata)
