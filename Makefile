# kpush — see README.md.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
PKGS    := ./...

.PHONY: build run test test-race lint bench bench-quick bench-tools bench-kafka fuzz kafka-up kafka-down test-kafka docker clean

# Port of the local broker that kafka-up, test-kafka and bench-kafka use.
KAFKA_PORT ?= 9092
export KAFKA_PORT

## build: the kpush and kpush-feed binaries into bin/
build:
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o bin/kpush ./cmd/kpush
	CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o bin/kpush-feed ./cmd/kpush-feed

## run: kpush with an embedded Kafka broker and a market-feed simulator
run:
	$(GO) run ./cmd/kpush -dev

## test: the whole suite with the race detector (what CI runs)
test:
	$(GO) test -race -count=1 $(PKGS)

## lint: formatting and vet
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

## bench: Go micro-benchmarks of the hot paths, every load scenario at full
## size against a kpush process (cmd/kpush-bench/README.md), then bench-kafka
bench: bench-tools
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./router/ ./gateway/
	bin/kpush-bench -kpush-bin bin/kpush -out bin/bench-results -json bin/bench-results/results.json
	$(MAKE) bench-kafka

## bench-kafka: consumer throughput and produce-to-receive latency against a
## real broker (kafka-up, benchmarks, kafka-down); results in cmd/kpush-bench/README.md
bench-kafka:
	@bash deployments/local-kafka/kafka-up.sh >/dev/null; status=$$?; \
	if [ $$status -eq 0 ]; then \
		KPUSH_TEST_KAFKA=127.0.0.1:$(KAFKA_PORT) $(GO) test -run '^$$' -bench 'Kafka' -benchtime 1x -count 5 ./cmd/kpush/; status=$$?; \
	fi; \
	bash deployments/local-kafka/kafka-down.sh; exit $$status

## bench-quick: one short pass of the micro-benchmarks and every scenario, small; <= 2 min
bench-quick: bench-tools
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 200ms ./router/ ./gateway/
	bin/kpush-bench -quick -kpush-bin bin/kpush -out bin/bench-results -json bin/bench-results/results-quick.json

bench-tools:
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/kpush ./cmd/kpush
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/kpush-bench ./cmd/kpush-bench

## fuzz: each fuzz target for FUZZTIME (seed corpora in each package's testdata/fuzz/)
FUZZTIME ?= 10s
FUZZ_TARGETS := gateway:FuzzParseRequest gateway:FuzzParseFrame gateway:FuzzHandshakeToken \
	gateway:FuzzRequestHead gateway:FuzzCloseBody \
	gateway/auth:FuzzPattern router:FuzzValidChannel consumer:FuzzTemplate cmd/kpush:FuzzLoadConfig \
	cmd/kpush-bench/internal/wsload:FuzzServerFrames cmd/kpush-bench/internal/target:FuzzParseMetrics
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$name ($$pkg, $(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) ./$$pkg/; \
	done

## kafka-up / kafka-down: a real single-node Apache Kafka broker on 127.0.0.1:$${KAFKA_PORT:-9092}
kafka-up:
	bash deployments/local-kafka/kafka-up.sh

kafka-down:
	bash deployments/local-kafka/kafka-down.sh

## test-kafka: the end-to-end and fault tests against a real broker: kafka-up,
## the tests with KPUSH_TEST_KAFKA set, then kafka-down even if they fail
test-kafka:
	@bash deployments/local-kafka/kafka-up.sh >/dev/null; status=$$?; \
	if [ $$status -eq 0 ]; then \
		KPUSH_TEST_KAFKA=127.0.0.1:$(KAFKA_PORT) $(GO) test -race -count=1 ./cmd/kpush/ ./consumer/...; status=$$?; \
	fi; \
	bash deployments/local-kafka/kafka-down.sh; exit $$status

## docker: the container image (needs a Docker engine)
docker:
	docker build --build-arg VERSION=$(VERSION) -t kpush:$(VERSION) .

clean:
	rm -rf bin
