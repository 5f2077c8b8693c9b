# The two commands a new user needs: `make demo` and `make test`. Both set the host up first.
.PHONY: setup guest debian-image demo test lint bench

setup:
	integration/setup-host

guest: setup
	.venv/bin/python integration/tiny-guest/build

debian-image: setup
	.venv/bin/python integration/debian-guest/build

demo: guest
	integration/demo

test: guest debian-image
	.venv/bin/pytest tests integration

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy vmrun
	cd integration/workflow-lint && npm ci --silent --no-audit --no-fund
	node integration/workflow-lint/lint.mjs .github/workflows

bench: guest
	.venv/bin/python bench/render.py
	.venv/bin/python bench/boot.py
	.venv/bin/python bench/fleet.py
