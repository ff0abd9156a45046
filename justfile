# wsm tasks. Install just with `npm install -g rust-just`, or prefix any
# recipe with `npx --yes rust-just@1.57.0`.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Run the service on the embedded backend, anonymous clients allowed, on loopback.
run *ARGS:
    go run ./cmd/wsm serve --allow-anonymous {{ARGS}}

# Build the wsm binary into bin/.
build:
    go build -o bin/wsm ./cmd/wsm

# Vet and run every test with the race detector. Tests run real Dapr
# sidecars against Redis: start Redis if none answers, and build daprd once
# into the cache (about 10 minutes and 3 GB of modules the first time).
test:
    .ci/ensure-redis
    .ci/ensure-daprd >/dev/null
    go vet ./...
    WSM_DAPRD="$(.ci/ensure-daprd)" go test -race -count=1 -timeout 45m ./...

# Run each fuzz target for a while (FUZZTIME, default 30s).
fuzz FUZZTIME="30s":
    go test -run '^$' -fuzz '^FuzzParseToken$' -fuzztime {{FUZZTIME}} ./socket/
    go test -run '^$' -fuzz '^FuzzDecodeRecord$' -fuzztime {{FUZZTIME}} ./eventlog/
    go test -run '^$' -fuzz '^FuzzParseCursor$' -fuzztime {{FUZZTIME}} ./eventlog/
    go test -run '^$' -fuzz '^FuzzParseFeedQuery$' -fuzztime {{FUZZTIME}} ./socket/
    go test -run '^$' -fuzz '^FuzzDecodeCursor$' -fuzztime {{FUZZTIME}} ./cmd/wsm/
    go test -run '^$' -fuzz '^FuzzTraceparent$' -fuzztime {{FUZZTIME}} ./cmd/wsm/

# Run every benchmark next to its baseline and write docs/benchmarks.md
# (.ci/bench-suite): micro-benchmarks, log appends, connect cycles on both
# backends, idle memory, churn, API delivery, reclaim after SIGKILL, and
# replay and rebuild over a million events. Each step has a time bound and
# all of them add up to 110 minutes; it took 20 on 2 cores. The
# first run also builds daprd (about 10 minutes).
bench:
    .ci/bench-suite
