"""Quality evaluation: synthetic round-trip and attention error, real-model perplexity and greedy agreement
(`mtq eval quality`), calibration (`mtq calibrate`) and the ΔPPL plot."""
