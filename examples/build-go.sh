#!/bin/sh
# Builds a Go example (go-backend or go-client) offline from Debian's packages:
#   apt-get install golang golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev \
#       protobuf-compiler protoc-gen-go protoc-gen-go-grpc
# The Registry and routeguide stubs are generated from protos/ (the one
# source of truth) with protoc-gen-go and protoc-gen-go-grpc into a
# throwaway GOPATH; grpc-go and protobuf come from /usr/share/gocode
# (GOPATH mode, no module download).
#
#   examples/build-go.sh go-backend [OUTPUT]   # default examples/go-backend/go-backend
#   examples/build-go.sh go-client [OUTPUT]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
name=${1:?"usage: $0 go-backend|go-client [OUTPUT]"}
[ -f "$here/$name/main.go" ] || { echo "build-go.sh: no example $here/$name/main.go" >&2; exit 2; }
out=${2:-$here/$name/$name}
case $out in /*) ;; *) out=$PWD/$out ;; esac
gocode=${GOCODE:-/usr/share/gocode}

for tool in go protoc protoc-gen-go protoc-gen-go-grpc; do
    command -v "$tool" >/dev/null || { echo "build-go.sh: $tool not found; install the Debian packages named at the top of $0 (make go-toolchain)" >&2; exit 1; }
done
[ -d "$gocode/src/google.golang.org/grpc" ] || { echo "build-go.sh: grpc-go not in $gocode/src; apt-get install golang-google-grpc-dev" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
module=lookaside.example/$name
registry=lookaside_proto/registry/v1/registry.proto
routeguide=lookaside_proto/routeguide/v1/route_guide.proto
# The protos carry no go_package: M options name each file's Go package.
maps="M$registry=$module/registrypb,M$routeguide=$module/routeguidepb"
mkdir -p "$work/src/$module"
protoc -I "$root/protos" -I /usr/include \
    --go_out="$maps:$work/src" --go-grpc_out="$maps:$work/src" \
    "$registry" "$routeguide"
cp "$here/$name/main.go" "$work/src/$module/"

export GOPATH="$work:$gocode" GO111MODULE=off GOFLAGS= GOPROXY=off
[ -n "${HOME:-}" ] || export GOCACHE="${GOCACHE:-$work/cache}"
cd "$work/src/$module"
go build -o "$out" .
echo "built $out"
