#!/usr/bin/env bash
# make image: build deploy/Containerfile with podman or docker, whichever is here.
#
#   deploy/build_image.sh [TAG]          TAG defaults to sessionmesh:<version in pyproject.toml>
#   CONTAINER_ENGINE=docker …            choose the engine when both are installed
#   PYTHON_IMAGE=registry.local/python:3.11.11-slim-bookworm …   another base image (a mirror)
#
# Exit codes: 0 built; 1 the build failed; 3 no engine, or the engine is not usable;
# 4 the base image could not be pulled (no registry reachable: nothing was built).
set -euo pipefail
cd "$(dirname "$0")/.."

containerfile=deploy/Containerfile
ignorefile=deploy/Containerfile.dockerignore
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)
tag=${1:-sessionmesh:${version:-dev}}
base=${PYTHON_IMAGE:-$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$containerfile")}

engine=${CONTAINER_ENGINE:-}
if [[ -z $engine ]]; then
    for candidate in podman docker; do
        if command -v "$candidate" >/dev/null 2>&1; then
            engine=$candidate
            break
        fi
    done
fi
if [[ -z $engine ]] || ! command -v "$engine" >/dev/null 2>&1; then
    echo "make image: neither podman nor docker is installed; install one (apt-get install podman)" >&2
    echo "make image: NOT BUILT" >&2
    exit 3
fi
if ! "$engine" info >/dev/null 2>&1; then
    echo "make image: $engine is installed but not usable here ('$engine info' failed: no daemon or no permission)" >&2
    echo "make image: NOT BUILT" >&2
    exit 3
fi

# Pull the base image first, so "no registry" is told apart from a broken build.
if ! "$engine" image inspect "$base" >/dev/null 2>&1 && ! "$engine" pull "$base"; then
    echo "make image: the base image $base could not be pulled (no registry reachable?);" >&2
    echo "make image: load it by hand ($engine load -i python.tar) or set PYTHON_IMAGE to a mirror" >&2
    echo "make image: NOT BUILT" >&2
    exit 4
fi

args=(build --file "$containerfile" --build-arg "PYTHON_IMAGE=$base" --tag "$tag")
if [[ $engine == podman* ]]; then
    args+=(--ignorefile "$ignorefile")
fi
echo "make image: $engine ${args[*]} ."
if ! "$engine" "${args[@]}" .; then
    echo "make image: the build failed" >&2
    exit 1
fi
echo "make image: built $tag"
echo "  $engine run --rm $tag meshctl --help"
echo "  $engine run --rm $tag sessionmesh-node --help"
