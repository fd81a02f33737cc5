"""Single-turn presence records from a LLaVA instruction file (runs PO1-PO3, SC2, SC4, SC5):
every "Is there ...?" turn of every record becomes its own record on the same image.
  presence_records.py instruct_image.json presence_only.json
"""
import collections
import json
import sys

src, dst = sys.argv[1], sys.argv[2]
out = []
for r in json.load(open(src)):
    c = r["conversations"]
    for i in range(0, len(c), 2):
        q = c[i]["value"].replace("<image>\n", "")
        if q.startswith("Is there"):
            out.append({"id": f"{r['id']}_p{i}", "image": r["image"],
                        "conversations": [{"from": "human", "value": "<image>\n" + q},
                                          {"from": "gpt", "value": c[i + 1]["value"]}]})
json.dump(out, open(dst, "w"))
print(len(out), "records;", dict(collections.Counter(o["conversations"][1]["value"] for o in out)))
