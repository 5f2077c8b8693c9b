# The two commands a new user needs: `make demo` and `make test`. Both set the host up first.
.PHONY: setup guest debian-image demo demo-debian test fuzz lint bench bench-lab

setup:
	integration/setup-host

guest: setup
	.venv/bin/python integration/tiny-guest/build

debian-image: setup
	.venv/bin/python integration/debian-guest/build

demo: guest
	integration/demo

demo-debian: debian-image
	integration/demo-debian

# The lab's tests run beside the others: its L1 guest has its own kernel, run roots and network (user-mode), so
# nothing the host's tests look at; on 2 cores this keeps `make test` within 15 minutes. Its output follows.
test: guest debian-image
	@mkdir -p build
	.venv/bin/pytest -p no:cacheprovider integration/test_lab.py > build/test-lab.log 2>&1 & lab=$$!; \
	.venv/bin/pytest tests integration --ignore=integration/test_lab.py; others=$$?; \
	wait $$lab; lab=$$?; cat build/test-lab.log; \
	test $$others -eq 0 && test $$lab -eq 0

# Thousands of generated specs through the CLI (0 tracebacks, exits 0/2/3 only), and 2,000 valid specs
# started in real qemu; `make test` runs a sample of both.
fuzz: guest
	VMRUN_FUZZ_EXAMPLES=10000 .venv/bin/pytest tests/test_fuzz.py -q -p no:cacheprovider
	VMRUN_ORACLE_EXAMPLES=2000 .venv/bin/pytest integration/test_qemu_oracle.py -q -p no:cacheprovider

lint: setup
	.venv/bin/ruff check .
	.venv/bin/mypy vmrun
	cd integration/workflow-lint && npm ci --silent --no-audit --no-fund
	node integration/workflow-lint/lint.mjs .github/workflows
	cd ansible/collections/ansible_collections/vmrun/fleet && PATH="$(CURDIR)/.venv/bin:$$PATH" ansible-test sanity \
	  --python "$$($(CURDIR)/.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" $(SANITY_SKIPPED:%=--skip-test %)

# ansible-test installs these sanity tests' requirements into virtualenvs it bootstraps with a get-pip script from
# ci-files.testing.ansible.com (unreachable from CI here); the others need nothing but ansible-test itself.
SANITY_SKIPPED = ansible-doc import pep8 pylint runtime-metadata validate-modules yamllint

bench: guest debian-image
	.venv/bin/python bench/render.py
	.venv/bin/python bench/overhead.py
	.venv/bin/python bench/boot.py
	.venv/bin/python bench/fleet.py
	.venv/bin/python bench/debian.py
	.venv/bin/python bench/hugepages.py
	.venv/bin/python bench/migrate.py

# render.py's figures again on the lab's kernel, where Python runs under TCG (boots the lab: a few minutes).
bench-lab: debian-image
	.venv/bin/python bench/lab.py
