# The ablation table of docs/results.md from the rows of `evaluate` runs named <config>-s<seed>.jsonl
# (usage: python3 tools/ablation_table.py [folder,folder,...] [config,config,...]; a configuration's rows are read from the
# first folder that has them; without a list, every configuration below that has rows).
import json, re, glob, os, statistics as st
import sys
folders = (sys.argv[1] if len(sys.argv) > 1 else "docs/data/evaluation/ablations").split(",")
order = [("random", "random encoder, no pretraining (reference)"),
         ("base", "BootMAE (pixel + feature, block masking, injection on, teacher sees 100%)"),
         ("pixel", "pixel target only (Table 1: no bootstrapped feature prediction)"),
         ("feature", "feature target only"),
         ("noinject", "no feature injection into either decoder (Table 2)"),
         ("pixel-random", "pixel only, random masking (Table 3)"),
         ("feature-random", "feature only, random masking (Table 3)"),
         ("frac25", "teacher sees 25% of the patches (Table 5)"),
         ("emafloor0", "EMA momentum without the floor (the run-scaled schedule alone)"),
         ("normpix", "`--norm-pix false` (un-normalised pixel target)"),
         ("pixeps", "`--pix-eps 0.01`"),
         ("lr6e3", "`--lr 6e-3` (4× the default base rate)"),
         ("lr3e3", "`--lr 3e-3` (2× the default base rate)"),
         ("mask06", "`--mask-ratio 0.6`"),
         ("lambda2", "`--feature-weight 2` (λ 2)")]
if len(sys.argv) > 2:
    labels = dict(order)
    order = [(key, labels[key]) for key in sys.argv[2].split(",")]
print("| configuration | best block, seed 1 / seed 2 | mean, best block | mean, last block |")
print("|---|---|--:|--:|")
for key, label in order:
    best, last = {}, {}
    for s in (1, 2):
        f = next((f"{d}/{key}-s{s}.jsonl" for d in folders if os.path.exists(f"{d}/{key}-s{s}.jsonl")), None)
        if f is None: continue
        for line in open(f):
            r = json.loads(line)
            (best if "best" in r["evaluation"] else last)[s] = (r["accuracy"], r["evaluation"])
    if not best: continue
    blk = {s: re.search(r"\((\d) of", best[s][1]).group(1) for s in best}
    b = " / ".join(f"{best[s][0]*100:.1f} (block {blk[s]})" for s in sorted(best))
    print(f"| {label} | {b} | {st.mean(v[0] for v in best.values())*100:.1f} | {st.mean(v[0] for v in last.values())*100:.1f} |")
