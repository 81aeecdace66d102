#!/bin/sh
# clipindex container entrypoint.
#
#   schedule [INGEST ARGS...]  run `clipindex ingest INGEST ARGS` now, then again every $CLIPINDEX_INTERVAL
#                              seconds (default 3600), measured from the start of each run; forever, or
#                              $CLIPINDEX_RUNS times when set (then the last run's exit code is returned)
#   anything else              `clipindex ARGS`, e.g. `search "a red car"`, `status`, `migrate --to URL`
#
# Options for the scheduled ingest come from the environment (see clipindex ingest --help): everything with an
# env var (CLIPINDEX_QDRANT_URL, CLIPINDEX_COLLECTION, CLIPINDEX_MODEL_DIR, QDRANT_API_KEY...) is read by clipindex
# itself; these flags are added here:
#   CLIPINDEX_PRUNE=1           --prune (delete the points of files that are gone)
#   CLIPINDEX_SHARDS=N          --shards N    (sharding of a new server collection; a cluster)
#   CLIPINDEX_REPLICAS=N        --replicas N  (replication factor of a new server collection)
#
# Logs go to the container's stdout/stderr (`docker compose logs clipindex`): the summary line of each run, one
# line per failed file, one `Error: ...` line when a run fails; no progress bar (not a terminal). A failed run
# (exit 1, 69 server unreachable, 75 another run holds the lock) is logged and retried at the next interval.
# SIGTERM/SIGINT (docker stop) end the loop and a running ingest with it: an ingest is safe to kill at any
# moment, and the next run resumes where it stopped.
set -u

if [ "${1:-}" != "schedule" ]; then
    exec clipindex "$@"
fi
shift

interval="${CLIPINDEX_INTERVAL:-3600}"
runs="${CLIPINDEX_RUNS:-0}"
case "$interval$runs" in
    *[!0-9]*) echo "clipindex-schedule: CLIPINDEX_INTERVAL and CLIPINDEX_RUNS must be whole numbers" >&2; exit 2 ;;
esac
[ "${CLIPINDEX_PRUNE:-0}" = "1" ] && set -- "$@" --prune
[ -n "${CLIPINDEX_SHARDS:-}" ] && set -- "$@" --shards "$CLIPINDEX_SHARDS"
[ -n "${CLIPINDEX_REPLICAS:-}" ] && set -- "$@" --replicas "$CLIPINDEX_REPLICAS"

child=""
stop() {
    echo "clipindex-schedule: stopping" >&2
    [ -n "$child" ] && kill -TERM "$child" 2>/dev/null && wait "$child"
    exit 143
}
trap stop TERM INT

done_runs=0
while :; do
    started=$(date +%s)
    echo "clipindex-schedule: $(date -u +%Y-%m-%dT%H:%M:%SZ) ingest $*" >&2
    clipindex ingest "$@" &
    child=$!
    wait "$child"
    code=$?
    child=""
    case "$code" in
        0) ;;
        69) echo "clipindex-schedule: the Qdrant server is unreachable (exit 69); retrying in the next interval" >&2 ;;
        75) echo "clipindex-schedule: another ingest holds the lock (exit 75); retrying in the next interval" >&2 ;;
        *) echo "clipindex-schedule: ingest failed (exit $code); retrying in the next interval" >&2 ;;
    esac
    done_runs=$((done_runs + 1))
    if [ "$runs" -gt 0 ] && [ "$done_runs" -ge "$runs" ]; then
        exit "$code"
    fi
    left=$((started + interval - $(date +%s)))
    [ "$left" -gt 0 ] || left=0
    sleep "$left" &
    child=$!
    wait "$child"
    child=""
done
