"""Make a tiny-qwen2 directory's attention mimetic (runs MIM07 and the MM runs): each query head's W_q becomes
MIX * its KV group's W_k + sqrt(1 - MIX^2) * its random W_q (Trockman & Kolter 2023, arXiv 2305.09828).
  mimetic_init.py SRC_DIR DST_DIR MIX
"""
import json,struct,sys,os,shutil,numpy as np
src,dst,mix=sys.argv[1],sys.argv[2],float(sys.argv[3]); os.makedirs(dst,exist_ok=True)
for t in os.listdir(src):
    if t!='model.safetensors': shutil.copy(src+'/'+t,dst+'/'+t)
f=open(src+'/model.safetensors','rb'); n=struct.unpack('<Q',f.read(8))[0]; h=json.loads(f.read(n)); data=bytearray(f.read())
c=json.load(open(src+'/config.json')); H=c['num_attention_heads']; G=c['num_key_value_heads']; D=c['hidden_size']; hd=D//H
def get(k):
    a,b=h[k]['data_offsets']; return np.frombuffer(bytes(data[a:b]),dtype=np.float32).reshape(h[k]['shape']).copy()
def put(k,v):
    a,b=h[k]['data_offsets']; data[a:b]=v.astype(np.float32).tobytes()
for i in range(c['num_hidden_layers']):
    q=get(f'model.layers.{i}.self_attn.q_proj.weight'); k=get(f'model.layers.{i}.self_attn.k_proj.weight')
    for hh in range(H):
        g=hh//(H//G); q[hh*hd:(hh+1)*hd]=mix*k[g*hd:(g+1)*hd]+np.sqrt(1-mix*mix)*q[hh*hd:(hh+1)*hd]
    put(f'model.layers.{i}.self_attn.q_proj.weight',q)
open(dst + '/model.safetensors', 'wb').write(open(src + '/model.safetensors', 'rb').read(8 + n) + bytes(data))  # same header, new bytes
