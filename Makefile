# Shortcuts for the README's commands; each target is one script under hack/.
.PHONY: run test bench

run:
	./hack/run-local.sh

test:
	./hack/test.sh

bench:
	.venv/bin/python bench/run.py
