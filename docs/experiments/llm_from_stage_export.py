"""A plain Qwen2 directory from a stage export (drops mm_projector tensors and the mm_/idamoe config keys),
so a text-pretrained decoder can be the next stage 1's model.llm_path.   llm_from_stage_export.py SRC/hf DST
"""
import json,struct,sys,os,shutil
src,dst=sys.argv[1],sys.argv[2]; os.makedirs(dst,exist_ok=True)
f=open(src+'/model.safetensors','rb'); n=struct.unpack('<Q',f.read(8))[0]; h=json.loads(f.read(n)); data=f.read()
keep={k:v for k,v in h.items() if k!='__metadata__' and 'mm_projector' not in k}
out={}; buf=b''; 
for k,v in keep.items():
    a,b=v['data_offsets']; out[k]=dict(dtype=v['dtype'],shape=v['shape'],data_offsets=[len(buf),len(buf)+b-a]); buf+=data[a:b]
hb=json.dumps(out).encode(); hb+=b' '*((8-len(hb)%8)%8)
open(dst+'/model.safetensors','wb').write(struct.pack('<Q',len(hb))+hb+buf)
c=json.load(open(src+'/config.json'))
for k in list(c):
    if k.startswith('mm_') or k=='idamoe': del c[k]
json.dump(c,open(dst+'/config.json','w'),indent=2)
for t in ['tokenizer.json','tokenizer_config.json','generation_config.json']:
    if os.path.exists(src+'/'+t): shutil.copy(src+'/'+t,dst+'/'+t)
