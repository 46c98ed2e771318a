# The two commands, for those who type `make`: see README.md.
.PHONY: quickstart test
quickstart:
	bash scripts/quickstart.sh
test:
	bash scripts/test.sh
