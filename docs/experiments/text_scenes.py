"""Text scenes for the lead in docs/demo_notes.md (runs P0, MM2): the scene in caption words, then the
demo's questions. Python re-statement of data_tools/shapes_world.h ask() for an experiment, not shipped data.
  text_scenes.py OUT.json N SEED MAX_TURNS            training records (LLaVA JSON, text only)
  text_scenes.py OUT.jsonl N SEED 1 eval              single-turn question JSONL with answers
"""
import json, random, sys
out, n, seed, turns_max = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
eval_mode = len(sys.argv) > 5
random.seed(seed)
COL=["red","green","blue","yellow","purple","orange"]; SH=["circle","square","triangle","cross"]; PL=["circles","squares","triangles","crosses"]
SZ=["small","medium","large"]; SUF="\nAnswer the question using a single word or phrase."
def scene():
    n=random.choice([1,2,3]); cells=random.sample(range(16),n)
    return [dict(k=random.randrange(4),c=random.randrange(6),s=random.randrange(3),side="left" if cell%4<2 else "right") for cell in cells]
def caption(objs):
    cnt=["no shapes","one shape","two shapes","three shapes"][len(objs)]
    bg=random.choice(["a dark","a light","a gray"])+random.choice([" striped background"," background"])
    parts=[f"a {SZ[o['s']]} {COL[o['c']]} {SH[o['k']]} on the {o['side']}" for o in objs]
    lst=parts[0] if len(parts)==1 else ", ".join(parts[:-1])+" and "+parts[-1]
    r=random.randrange(3)
    return [f"{cnt} on {bg}: {lst}.", f"an image of {lst} on {bg}.", f"{lst}. {cnt} in total."][r]
def ask(objs,cat,said):
    ck=lambda k: sum(o['k']==k for o in objs); cc=lambda c: sum(o['c']==c for o in objs)
    m=lambda w: w in said; told=lambda o: m(SH[o['k']]) and m(COL[o['c']])
    if cat=="colour":
        u=[o for o in objs if ck(o['k'])==1 and not told(o)]
        if not u: return None
        o=random.choice(u); return f"What colour is the {SH[o['k']]}?", COL[o['c']]
    if cat=="shape":
        u=[o for o in objs if cc(o['c'])==1 and not told(o)]
        if not u: return None
        o=random.choice(u); return f"What shape is the {COL[o['c']]} object?", SH[o['k']]
    if cat=="count":
        if random.random()<0.5: return "How many shapes are there?", str(len(objs))
        k=random.randrange(4); return f"How many {PL[k]} are there?", str(ck(k))
    if cat=="presence":
        bk=random.random()<0.5; names=SH if bk else COL; f=ck if bk else cc
        pool=[[v for v in range(len(names)) if not m(names[v]) and (f(v)>0)==y] for y in (0,1)]
        if not pool[0] or not pool[1]: return None
        y=random.random()<0.5; v=random.choice(pool[y]); w=SH[v] if bk else COL[v]+" object"
        return f"Is there {'an' if w[0] in 'oa' else 'a'} {w}?", "yes" if y else "no"
    if cat=="position":
        refs=[]
        for o in objs:
            if ck(o['k'])==1: refs.append((f"the {SH[o['k']]}",o['side']))
            if cc(o['c'])==1: refs.append((f"the {COL[o['c']]} object",o['side']))
        if not refs: return None
        r,s=random.choice(refs); return f"Which side is {r} on?", s
    if cat=="largest":
        if len(objs)<2: return None
        b=sorted(objs,key=lambda o:-o['s'])
        if b[0]['s']==b[1]['s']: return None
        return "Which shape is the largest?", SH[b[0]['k']]
recs=[]
cats=["colour","shape","count","presence","position","largest"]
while len(recs)<n:
    objs=scene(); cap=caption(objs)
    if eval_mode:
        cat=cats[len(recs)%6]; qa=ask(objs,cat,"")
        if not qa: continue
        recs.append(dict(question_id=len(recs),text=cap+"\n"+qa[0]+SUF,answer=qa[1],category=cat,objects=len(objs))); continue
    cs=cats[:]; random.shuffle(cs); T=random.randint(1,turns_max); conv=[]; said=""
    for c in cs:
        if len(conv)>=2*T: break
        qa=ask(objs,c,said)
        if not qa: continue
        said+=qa[0]+" "+qa[1]+"\n"
        conv+= [{"from":"human","value":(cap+"\n" if not conv else "")+qa[0]+SUF}, {"from":"gpt","value":qa[1]}]
    if conv: recs.append({"id":f"ts_{len(recs)}","conversations":conv})
if eval_mode:
    with open(out,"w") as f:
        for r in recs: f.write(json.dumps(r)+"\n")
else: json.dump(recs,open(out,"w"),indent=0)
