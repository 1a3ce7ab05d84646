#!/usr/bin/env bash
# Build-time only: resolve the delta-spark jar (argument: group:artifact:version) and hadoop-aws
# (the version of the hadoop-client jars that pyspark ships, so s3a matches Spark's Hadoop) with
# Spark's own Ivy resolver, prove them with a Delta round trip, then copy every resolved jar that
# Spark does not already ship into $SPARK_HOME/jars so that no run needs the network.
set -euo pipefail

delta_coordinate="${1:?usage: install-jars.sh io.delta:delta-spark_<spark>_<scala>:<version>}"
jars_dir="${SPARK_HOME:?SPARK_HOME is not set}/jars"

hadoop_jar="$(ls "${jars_dir}"/hadoop-client-api-*.jar | head -n 1)"
hadoop_version="$(basename "${hadoop_jar}" .jar)"
hadoop_version="${hadoop_version#hadoop-client-api-}"
packages="${delta_coordinate},org.apache.hadoop:hadoop-aws:${hadoop_version}"
echo "resolving ${packages}"

ivy_dir="$(mktemp -d)"
work_dir="$(mktemp -d)"
"${SPARK_HOME}/bin/spark-submit" \
    --master 'local[1]' \
    --packages "${packages}" \
    --conf "spark.jars.ivy=${ivy_dir}" \
    --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension \
    --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog \
    /opt/coldstart/spark/delta_smoke.py "${work_dir}/smoke"

# Ivy names files <org>_<artifact>-<rev>.jar; Spark's own jars are <artifact>-<rev>.jar.
shipped="$(ls "${jars_dir}" | sed -E 's/-[0-9][^-]*\.jar$//' | sort -u)"
for jar in "${ivy_dir}"/jars/*.jar; do
    name="$(basename "${jar}")"
    name="${name#*_}"
    artifact="$(printf '%s' "${name}" | sed -E 's/-[0-9][^-]*\.jar$//')"
    if printf '%s\n' "${shipped}" | grep -qxF "${artifact}"; then
        echo "skip ${name} (Spark ships ${artifact})"
    else
        echo "add  ${name}"
        cp "${jar}" "${jars_dir}/${name}"
    fi
done
ls "${jars_dir}" | grep -E '^(delta-|hadoop-aws-)' >/dev/null

# Second round trip without --packages: the jars in $SPARK_HOME/jars alone must be enough.
rm -rf "${work_dir}/smoke"
"${SPARK_HOME}/bin/spark-submit" \
    --master 'local[1]' \
    --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension \
    --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog \
    /opt/coldstart/spark/delta_smoke.py "${work_dir}/smoke"
rm -rf "${ivy_dir}" "${work_dir}"
