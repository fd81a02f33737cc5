"""'Bag -> caption' records for the lead in docs/demo_notes.md (run MM2): each demo caption's objects listed in
words, shuffled, in the human turn; the caption itself as the answer. Text only.
  bag_captions.py DEMO_DIR/data/captions.json OUT.json
"""
import json
import random
import re
import sys

random.seed(3)
records = []
for c in json.load(open(sys.argv[1])):
    caption = c["conversations"][1]["value"]
    objects = re.findall(r"an? (small|medium|large) (\w+) (circle|square|triangle|cross) (?:on the (left|right)|in the (middle))", caption)
    if not objects:
        continue
    bag = [f"{colour} {shape} {side or middle} {size}" for size, colour, shape, side, middle in objects]
    random.shuffle(bag)
    records.append({"id": "bag_" + c["id"], "conversations": [{"from": "human", "value": ", ".join(bag) + "."},
                                                              {"from": "gpt", "value": caption}]})
json.dump(records, open(sys.argv[2], "w"))
