"""A calibration file whose key outlier channels are whole RoPE pairs (i, i + d/2): the d/4 pairs of largest
RMS_i^2 + RMS_(i+d/2)^2, instead of the d/2 channels of largest RMS."""
import json, sys
import torch
src, out = sys.argv[1], sys.argv[2]
d = json.load(open(src))
split = 0
for layer in d["layers"]:
    p = layer["key"]
    s = torch.tensor(p["scale"], dtype=torch.float64)  # (heads, d)
    n = len(p["outliers"][0])
    h = s.shape[-1] // 2
    old = torch.tensor(p["outliers"])
    split += sum(len(set(o.tolist()) ^ {(c + h) % (2 * h) for c in o.tolist()}) for o in old) // 2
    energy = s[..., :h].pow(2) + s[..., h:].pow(2)
    top = energy.topk(n // 2, -1).indices
    p["outliers"] = torch.cat((top, top + h), -1).sort(-1).values.tolist()
d["corpus"] += "; key outliers: whole RoPE pairs"
json.dump(d, open(out, "w"))
print("wrote", out, "channels whose pair was not an outlier, all layers and heads:", split)
