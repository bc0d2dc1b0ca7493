"""The safety-tuned-llamas refusals (`refusal_instructions.jsonl`: a harmful instruction and a safe answer or
refusal) as labelled responses for `train-score --kind cost`: prompt = instruction (+ input), is_safe = true.

    python3 scripts/lib/refusals_as_labelled.py SRC OUT
"""
import json
import sys

src, out = sys.argv[1:]
n = 0
with open(src) as f, open(out, "w") as g:
    for i, line in enumerate(f, 1):
        if not line.strip():
            continue
        r = json.loads(line)
        try:
            ins, inp, output = r["instruction"], r.get("input") or "", r["output"]
        except KeyError as e:
            sys.exit(f"{src}:{i}: missing field {e}")
        prompt = f"{ins} {inp}" if inp.strip() else ins
        g.write(json.dumps({"prompt": prompt, "response": output, "is_safe": True}) + "\n")
        n += 1
print(f"{out}: {n} safe responses", file=sys.stderr)
