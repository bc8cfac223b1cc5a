# Two commands do all set-up: `make demo` (a whole tournament, then the board) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
BASE   := $(VENV)/.installed-base
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint serve bench clean

# The arena and what every built-in plugin needs: all the demo and the board ask for.
$(BASE): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the project's own range then installs nothing newer.
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e .
	# torchattacks (the built-in autoattack's parts, and the attacks' cross-check) without its dependencies:
	# its torchvision would pull another torch build, and its code needs neither it nor requests (arena/contract/extras.py).
	$(BIN)/pip install --quiet --no-deps "torchattacks==3.5.1"
	touch $(BASE)

# and the suite's, PostgreSQL's and the Celery workers' extras
$(STAMP): $(BASE)
	$(BIN)/pip install --quiet -e ".[test,postgres,distributed]"
	touch $(STAMP)

demo: $(BASE)
	$(BIN)/arena demo $(DEMO_ARGS)

# The suite runs test files in parallel (pytest-xdist), one torch thread per worker so that workers do not
# fight over the cores, the files with slow tests first (tests/conftest.py); `$(BIN)/pytest tests/test_x.py`
# runs one file alone.
TEST_WORKERS ?= auto
PYTEST = OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: $(STAMP)
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow and not service"

lint: $(STAMP)
	$(BIN)/ruff check arena leaderboard plugins tests bench
	$(BIN)/ruff format --check arena leaderboard plugins tests bench

serve: $(BASE)
	$(BIN)/arena serve

bench: $(STAMP)
	$(BIN)/python bench/match_overhead.py

clean:
	rm -rf $(VENV) .arena .pytest_cache
