"""Word-pair recall records (runs M1, MM1, MM2): pairs in the human turn, the same keys queried back in
shuffled order in the answer.   recall_records.py OUT.json N SEED
"""
import json, random, sys
out, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]); random.seed(seed)
W=["red","green","blue","yellow","purple","orange","circle","square","triangle","cross","small","medium","large","left","right","middle","one","two","three","yes","no"]
recs=[]
for i in range(n):
    k=random.randint(2,8); keys=random.sample(W,k); vals=[random.choice(W) for _ in keys]
    pairs=list(zip(keys,vals)); q=pairs[:]; random.shuffle(q)
    recs.append({"id":f"mq_{i}","conversations":[{"from":"human","value":", ".join(f"{a} {b}" for a,b in pairs)+"."},
                                                 {"from":"gpt","value":", ".join(f"{a} {b}" for a,b in q)+"."}]})
json.dump(recs,open(out,"w"))
