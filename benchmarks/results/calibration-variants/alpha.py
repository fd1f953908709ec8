"""A calibration file with each stream's scale raised to a power (renormalized to the same mean per head)."""
import json, sys
import torch
src, out, stream, alpha = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
d = json.load(open(src))
for layer in d["layers"]:
    p = layer[stream]
    s = torch.tensor(p["scale"], dtype=torch.float64)
    t = s.pow(alpha)
    p["scale"] = (t * s.mean(-1, keepdim=True) / t.mean(-1, keepdim=True)).float().tolist()
d["corpus"] += f"; {stream} scale ^ {alpha}"
json.dump(d, open(out, "w"))
print("wrote", out)
