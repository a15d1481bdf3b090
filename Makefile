# kpush — see README.md.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
PKGS    := ./...

.PHONY: build run test test-race lint bench bench-quick fuzz kafka-up kafka-down test-kafka docker clean

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

## bench: Go micro-benchmarks of the hot paths
bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./router/ ./gateway/

## bench-quick: one short pass of the micro-benchmarks
bench-quick:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 200ms ./router/ ./gateway/

## fuzz: each fuzz target for FUZZTIME (seed corpora in each package's testdata/fuzz/)
FUZZTIME ?= 10s
FUZZ_TARGETS := gateway:FuzzParseRequest gateway:FuzzParseFrame gateway:FuzzHandshakeToken \
	gateway/auth:FuzzPattern router:FuzzValidChannel consumer:FuzzTemplate cmd/kpush:FuzzLoadConfig
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

## docker: the container image (needs a Docker engine)
docker:
	docker build --build-arg VERSION=$(VERSION) -t kpush:$(VERSION) .

clean:
	rm -rf bin
