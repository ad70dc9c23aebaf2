# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO := examples/demo

.PHONY: demo demo-spark test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO)/data $(DEMO)/lake $(DEMO)/.headrace
	$(BIN)/python $(DEMO)/generate.py --out $(DEMO)/data
	$(BIN)/headrace --project $(DEMO) run
	$(BIN)/headrace --project $(DEMO) query "select * from gold.daily_revenue order by order_date desc, revenue desc" --limit 10
	@echo "Records that broke the orders contract are kept, with every reason:"
	$(BIN)/headrace --project $(DEMO) quarantine bronze.orders --limit 5
	$(BIN)/headrace --project $(DEMO) checks
	@echo "Re-running: every table is already up to date, so nothing is rewritten."
	$(BIN)/headrace --project $(DEMO) run
	@echo "Day two arrives: changed customers get new SCD2 versions, the new day of orders gets its partition."
	$(BIN)/python $(DEMO)/generate.py --out $(DEMO)/data --day-two
	$(BIN)/headrace --project $(DEMO) run
	$(BIN)/headrace --project $(DEMO) query "select is_current, count(*) as versions from silver.dim_customers group by all order by all"
	@echo "Compaction: a table with several small files in a partition gets one commit rewriting them (rows unchanged):"
	$(BIN)/headrace --project $(DEMO) optimize
	$(BIN)/headrace --project $(DEMO) runs --limit 5
	@echo "OpenLineage events (jobs, datasets, versions, checks, column lineage) written to $(DEMO)/.headrace/lineage.ndjson:"
	@wc -l < $(DEMO)/.headrace/lineage.ndjson

# The same demo on Apache Spark local[2] (needs Java 17): same tables, same checks.
demo-spark: $(STAMP)
	rm -rf $(DEMO)/data $(DEMO)/lake $(DEMO)/.headrace
	$(BIN)/python $(DEMO)/generate.py --out $(DEMO)/data
	$(BIN)/headrace --project $(DEMO) run --engine spark
	$(BIN)/headrace --project $(DEMO) query "select * from gold.daily_revenue order by order_date desc, revenue desc" --limit 10
	$(BIN)/headrace --project $(DEMO) checks

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy src/headrace

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(DEMO)/data $(DEMO)/lake $(DEMO)/.headrace bench/.work
