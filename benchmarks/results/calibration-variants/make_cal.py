"""Calibration files like the plugin's default (autocal.compute) with one recipe choice changed."""
import sys
import torch
from multi_turboquant.eval.autocal import WINDOW, MAX_OUTLIERS, TEXT_SOURCE, calibration_text
from multi_turboquant.eval.calibrate import calibrate
from multi_turboquant.eval.hooks import load_model
from multi_turboquant.models import default_model

out, sink_weight, window = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else WINDOW
torch.set_num_threads(1)
lm = load_model(default_model())
ids = torch.tensor(lm.tokenizer(calibration_text()).input_ids)
calibrate(lm, ids, window, min(MAX_OUTLIERS, lm.head_dim // 2), out, TEXT_SOURCE, sink_weight=sink_weight,
          centroid=True, horizon=8192)
print("wrote", out, ids.numel(), "tokens")
