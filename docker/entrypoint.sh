#!/bin/sh
# Container entrypoint: make sure the state directories are writable, then hand over to the service CLI.
#
# All configuration comes from the ASR_* environment variables (see .env.example); arguments are the CLI's
# flags (serve/qwen2_5_omni_awq.py --help). A first argument that is not a flag runs that command instead,
# in the same environment, e.g. `hf download Qwen/Qwen2.5-Omni-7B-AWQ` to fill the mounted cache.
set -eu

data_dir="${ASR_DATA_DIR:-/data}"
hf_home="${HF_HOME:-$data_dir/hf_cache}"
cache_dir="${XDG_CACHE_HOME:-$data_dir/cache}"

fail() {
    echo "entrypoint: error: $*" >&2
    exit 1
}

# Create the directory if needed and prove it takes a file: permission bits alone say nothing about a
# read-only mount or a host directory owned by someone else.
ensure_writable() {
    dir=$1
    probe="$dir/.write-test.$$"
    if mkdir -p "$dir" 2>/dev/null && (: >"$probe") 2>/dev/null; then
        rm -f "$probe"
        return 0
    fi
    fail "$dir is not writable by uid $(id -u) (gid $(id -g)). The service writes its jobs and outputs \
(ASR_DATA_DIR), the Hugging Face cache (HF_HOME) and compiled kernels (XDG_CACHE_HOME) there, all under \
/data in the image: mount a writable volume at /data. A named volume (docker run -v qwen-asr-data:/data) \
is set up for uid 1000 automatically. A host directory must be writable by this uid: \
'sudo chown -R $(id -u):$(id -g) <host dir>', or run the container as the directory's owner \
(docker run --user, or CONTAINER_UID/CONTAINER_GID in .env)."
}

for dir in "$data_dir" "$hf_home" "$cache_dir"; do
    ensure_writable "$dir"
done

case "${1:-}" in
    "" | -*)
        # exec: the CLI replaces this shell and execs gunicorn in turn, so signals reach gunicorn directly.
        exec python3 /app/serve/qwen2_5_omni_awq.py "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
