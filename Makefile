# Herald: `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
export CARGO_TARGET_DIR := $(shell deploy/local/target-dir.sh)
export KAFKA_PORT ?= 9092
export HERALD_BROKERS ?= 127.0.0.1:$(KAFKA_PORT)
HERALD := $(CARGO_TARGET_DIR)/debug/herald

.PHONY: bootstrap kafka-up kafka-down registry-up registry-down build demo demo-down test test-broadcast test-scale-out chaos bench bench-runtime bench-campaign bench-ingest bench-sender bench-scale bench-audience image lint fmt

bootstrap: ## install missing system packages
	@deploy/local/bootstrap.sh

kafka-up: bootstrap ## install (once) and start the local Apache Kafka broker
	@deploy/local/kafka.sh up

kafka-down: ## stop the local broker
	@deploy/local/kafka.sh down

registry-up: bootstrap ## install (once) and start the local schema registry (Apicurio, Confluent API under /apis/ccompat/v7)
	@deploy/local/registry.sh up

registry-down: ## stop the local schema registry
	@deploy/local/registry.sh down

build: bootstrap
	cargo build --workspace --bins

demo: kafka-up build ## the whole pipeline on sample data: Kafka, simulator (100,000 users), engine, sender, admin API and dashboard (URL and read token printed), campaigns, traffic, stats
	$(HERALD) campaign validate examples/campaigns/*.yaml
	@echo "--- replay: what deploy/demo's campaigns would have done with deploy/demo/replay-input.jsonl ---"
	$(HERALD) replay --campaigns deploy/demo/campaigns --input deploy/demo/replay-input.jsonl \
		--app-config deploy/demo/apps.yaml --out .local/demo-replay
	@jq -c '{user: .user_id, platform, at: .send_time, title, body}' .local/demo-replay/sends.jsonl 2>/dev/null || cat .local/demo-replay/sends.jsonl
	@echo "--- live: the closed loop ---"
	HERALD=$(HERALD) deploy/demo/run.sh

demo-down: ## stop what make demo started (simulator, engine, sender, API, Kafka)
	deploy/demo/down.sh

test: kafka-up registry-up ## the full test suite against the local broker and schema registry
	cargo build --bins
	@# Topics left by earlier runs (the broker keeps files open per partition, up to its limit).
	$(HERALD) topics delete --prefix it- --prefix bench-
	deploy/local/test.sh

test-broadcast: kafka-up ## long: a scheduled run to 1,000,000 users with a 2 s transaction timeout (release build)
	cargo test --workspace --release --test backlogs -- --ignored --nocapture

test-scale-out: kafka-up ## engine instances under traffic (join, SIGTERM, SIGKILL, scale-in; classic and KIP-848 protocols; failover with and without a standby): exactly-once checks, pauses and restore figures printed (also part of make test)
	cargo test --workspace --test engine_scale_out -- --nocapture --test-threads=1

chaos: ## the closed loop under the full fault schedule (kills, broker restart, provider and network faults) on its own broker (port 19092); a short form runs in make test
	@deploy/local/bootstrap.sh chaos
	cargo test --workspace --test chaos -- --ignored --nocapture

bench: bench-runtime bench-campaign bench-ingest bench-sender bench-scale bench-audience ## every benchmark (release build)

bench-runtime: kafka-up ## runtime throughput (raw vs exactly-once vs stateful) and latency
	cargo build --release --bins
	$(CARGO_TARGET_DIR)/release/herald bench runtime $(BENCH_ARGS)

bench-campaign: kafka-up ## one campaign to 1,000,000 users through the campaign stage
	cargo build --release --bins
	$(CARGO_TARGET_DIR)/release/herald bench campaign $(BENCH_ARGS)

bench-ingest: kafka-up registry-up ## user-stage ingest per format and partitioning vs a raw consumer
	cargo build --release --bins
	$(CARGO_TARGET_DIR)/release/herald bench ingest $(BENCH_ARGS)

bench-sender: bootstrap ## the sender's HTTP/2 delivery path vs h2load on the same simulator endpoint (no broker)
	cargo build --release --bins
	$(CARGO_TARGET_DIR)/release/herald bench sender $(BENCH_ARGS)

bench-scale: kafka-up ## engine processes at scale: restore of 1,000,000 profiles, a broadcast to 2,000,000 users on 1 and 2 instances vs a raw producer, failover with and without a standby
	cargo build --release --bins
	$(CARGO_TARGET_DIR)/release/herald bench scale $(BENCH_ARGS)

bench-audience: ## a scheduled run with timezone: user over 2,000,000 profiles (replay driver, no broker): scan and estimate rates vs a raw scan, store size per user, peak RSS (BENCH_ARGS="--users 100000" for fewer)
	cargo build --release --bins
	$(CARGO_TARGET_DIR)/release/herald bench audience $(BENCH_ARGS)

image: ## the container image herald:dev (Dockerfile; docker build, or buildah without a daemon) and its smoke test
	@deploy/image/build.sh

lint: ## formatting and clippy, warnings are errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all
