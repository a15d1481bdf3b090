# kpush — see README.md.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
PKGS    := ./...

.PHONY: build run test test-race lint bench bench-quick bench-tools bench-kafka bench-controls bench-protocols fuzz kafka-up kafka-down test-kafka docker docker-test clean

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
	$(GO) test -count=1 -run 'DoesNotAllocate' ./router/ ./gateway/

## lint: formatting and vet
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

## bench: Go micro-benchmarks of the hot paths, every load scenario at full
## size against a kpush process (cmd/kpush-bench/README.md), then bench-kafka
bench: bench-tools
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./router/ ./gateway/
	bin/kpush-bench -kpush-bin bin/kpush -out bin/bench-results -json bin/bench-results/results.json
	$(MAKE) bench-controls
	$(MAKE) bench-protocols
	$(MAKE) bench-kafka

## bench-controls: the delivery controls (write_delay, compression, max_rate),
## each against its off setting; tables in cmd/kpush-bench/README.md
CONTROLS_FANOUT = -scenarios fanout -fanout-step 5s -fanout-overload 0
bench-controls: bench-tools
	for d in 0 5ms 20ms; do bin/kpush-bench -kpush-bin bin/kpush -out bin/bench-results/controls \
		-json bin/bench-results/controls-write-delay-$$d.json $(CONTROLS_FANOUT) -fanout-subs 5000 -fanout-rates 25,50,75,100,150 \
		-fanout-overload 4 -write-delay $$d || exit 1; done
	for b in 100 2048; do for z in false true; do bin/kpush-bench -kpush-bin bin/kpush -out bin/bench-results/controls \
		-json bin/bench-results/controls-compression-$$b-$$z.json $(CONTROLS_FANOUT) -fanout-subs 5000 -fanout-rates 20 \
		-record-market-pad -record-bytes $$b -compression=$$z || exit 1; done; done
	for r in 0 4; do bin/kpush-bench -kpush-bin bin/kpush -out bin/bench-results/controls \
		-json bin/bench-results/controls-market-max-rate-$$r.json -scenarios market -market-duration 10s -route-max-rate $$r || exit 1; done

## bench-protocols: idle (15,000 connections) and fan-out (5,000 subscribers)
## with each client protocol: v1, Centrifugo's, Server-Sent Events
bench-protocols: bench-tools
	for p in v1 centrifugo sse; do bin/kpush-bench -kpush-bin bin/kpush -out bin/bench-results/protocols \
		-json bin/bench-results/protocols-$$p.json -protocol $$p -scenarios idle,fanout -idle-steps 15000 \
		-fanout-subs 5000 -fanout-rates 25,50,100 -fanout-step 5s -fanout-overload 3 || exit 1; done

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

## fuzz: each fuzz target for a fixed number of executions, sized to about
## 5 s each on a 2-core machine (seed corpora in each package's testdata/fuzz/).
## Counts, not durations: `-fuzztime 5s` fails spuriously with "context
## deadline exceeded" on a loaded machine (a race in Go 1.26's fuzz
## coordinator, golang/go#75804, fixed in Go 1.27). FUZZTIME=30s overrides
## every count with a duration for a longer local run.
FUZZTIME ?=
FUZZ_TARGETS := gateway:FuzzParseRequest:35000 gateway/wire:FuzzParseFrame:40000 gateway/wire:FuzzParseFrameDeflate:40000 \
	gateway:FuzzHandshakeToken:20000 gateway:FuzzProxyHeader:40000 \
	gateway:FuzzRequestHead:15000 gateway/wire:FuzzCloseBody:45000 gateway:FuzzCFDecodeProto:20000 \
	gateway/auth:FuzzPattern:100000 gateway/auth:FuzzParseJWKS:50000 \
	router:FuzzValidChannel:250000 consumer:FuzzTemplate:20000 cmd/kpush:FuzzLoadConfig:10000 \
	cmd/kpush-bench/internal/wsload:FuzzServerFrames:45000 \
	cmd/kpush-bench/internal/target:FuzzParseMetrics:70000
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; rest=$${t#*:}; name=$${rest%%:*}; n=$${rest#*:}; \
		budget="$${n}x"; if [ -n "$(FUZZTIME)" ]; then budget="$(FUZZTIME)"; fi; \
		echo "fuzz $$name ($$pkg, $$budget)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $$budget ./$$pkg/; \
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

## docker-test: build the image's kpush and feed targets with buildah and run
## them with podman as the Kubernetes manifest does: health, readiness, a
## record end to end, drain on stop, contents (deployments/container/docker-test.sh;
## root, buildah, podman, runc, debootstrap)
docker-test:
	bash deployments/container/docker-test.sh

clean:
	rm -rf bin
