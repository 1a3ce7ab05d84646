#!/usr/bin/env bash
# The demo: replay the bundled MovieLens sample into var/landing, then run the nightly DAG through
# Airflow (SQLite metadata, `airflow dags test`) for the bootstrap day and the two days after it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
export PATH="$ROOT/.venv/bin:$PATH"
export COLDSTART_LANDING="${COLDSTART_LANDING:-$ROOT/var/landing}"
export COLDSTART_LAKE="${COLDSTART_LAKE:-$ROOT/var/lake}"
export COLDSTART_MODELS="${COLDSTART_MODELS:-$ROOT/var/models}"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$ROOT/var/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__PARALLELISM=2
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
# The jobs' Spark: local unless a spark_default connection is given.
export AIRFLOW_CONN_SPARK_DEFAULT="${AIRFLOW_CONN_SPARK_DEFAULT:-{\"conn_type\": \"spark\", \"host\": \"local[2]\"}}"
START="${DEMO_START:-2024-01-01}"
NIGHTS="${DEMO_NIGHTS:-3}"

echo "==> starting clean: the demo owns $COLDSTART_LANDING, $COLDSTART_LAKE and $COLDSTART_MODELS"
rm -rf "$COLDSTART_LANDING" "$COLDSTART_LAKE" "$COLDSTART_MODELS"
echo "==> landing the sample (bootstrap day $START + 14 replay days) in $COLDSTART_LANDING"
coldstart -q replay --start "$START" --days 14
echo "==> preparing Airflow metadata (SQLite) in $AIRFLOW_HOME"
airflow db migrate >/dev/null
for i in $(seq 0 $((NIGHTS - 1))); do
  day=$(date -u -d "$START + $i day" +%F)
  echo "==> night $day: airflow dags test coldstart_nightly (ingest, embed, train, score, evaluate)"
  log="$AIRFLOW_HOME/demo-$day.log"
  started=$(date +%s)
  airflow dags test coldstart_nightly "${day}T23:59:00+00:00" -c "{\"run_date\": \"$day\"}" >"$log" 2>&1 || true
  if ! grep -q "state=success" "$log"; then
    echo "night $day failed; the last lines of $log:" >&2
    grep -E "ERROR|Error|error" "$log" | tail -20 >&2
    exit 1
  fi
  echo "    done in $(( $(date +%s) - started )) s (log: $log)"
done

echo
echo "==> tables (Delta) under $COLDSTART_LAKE:"
for t in "$COLDSTART_LAKE"/[!_]*/; do echo "    $(basename "$t")"; done
echo
echo "==> ingest audit:"
coldstart -q sql "SELECT run_date, source, files, rows_read, rows_accepted, rows_quarantined, rows_duplicate FROM ingest_audit ORDER BY run_date, source"
echo
echo "==> models:"
coldstart -q sql "SELECT model_version, mode, parent_version FROM model_registry ORDER BY run_date"
last=$(date -u -d "$START + $((NIGHTS - 1)) day" +%F)
echo
echo "==> a few recommendations of $last (to show on the next day):"
coldstart -q sql "SELECT user_id, scene, rank, item_id, round(score, 3) AS score, user_segment, item_is_new, reason FROM recommendations WHERE run_date = DATE '$last' AND user_id IN (SELECT min(user_id) FROM recommendations WHERE run_date = DATE '$last') AND rank <= 5 ORDER BY rank"
echo
echo "==> next-day quality per night (Recall@20 = hits / min(20, |truth|), all target users):"
coldstart -q sql "SELECT run_date, method, round(value, 4) AS recall_at_20, n_users FROM evaluation WHERE slice = 'all' AND metric = 'recall' AND k = 20 ORDER BY run_date, value DESC"
echo
echo "==> quality pooled over the demo's nights (user_days: how many (user, night) pairs each figure rests on;"
echo "    cold_items: share of all cold positives found; a paired interval that spans 0 is not a win yet):"
coldstart -q quality --k 20
cat <<EOM

==> query the tables yourself, e.g.:
    .venv/bin/coldstart sql "SELECT user_segment, count(*) FROM recommendations WHERE run_date = DATE '$last' GROUP BY 1"
    .venv/bin/coldstart tables      # every table and column, documented
EOM
