#!/usr/bin/env bash
# Entrypoint of the coldstart image.
#   spark-master            run a Spark standalone master in the foreground
#   spark-worker [MASTER]   run a Spark standalone worker (MASTER defaults to $COLDSTART_SPARK_MASTER)
#   driver | executor       Spark on Kubernetes pods (spark.kubernetes.container.image=coldstart:...),
#                           the same contract as Spark's own kubernetes/dockerfiles entrypoint
#   airflow ...             any Airflow command (api-server, scheduler, dag-processor, triggerer, db migrate)
#   anything else           exec'd as is (coldstart, spark-submit, python, bash ...)
# Nothing secret is written to the image: the Spark config gets only the object-store endpoint, and
# the Airflow simple-auth-manager password file is written at start from AIRFLOW_ADMIN_* variables.
set -euo pipefail

write_spark_conf() {
    local conf_dir="${SPARK_CONF_DIR:-/opt/coldstart/conf}"
    mkdir -p "${conf_dir}"
    cp /opt/coldstart/spark/spark-defaults.conf.template "${conf_dir}/spark-defaults.conf"
    if [ -n "${AWS_ENDPOINT_URL:-}" ]; then
        {
            echo "spark.hadoop.fs.s3a.endpoint                  ${AWS_ENDPOINT_URL}"
            case "${AWS_ENDPOINT_URL}" in
                http://*) echo "spark.hadoop.fs.s3a.connection.ssl.enabled    false" ;;
            esac
        } >> "${conf_dir}/spark-defaults.conf"
    fi
    if [ -n "${AWS_REGION:-}" ]; then
        echo "spark.hadoop.fs.s3a.endpoint.region           ${AWS_REGION}" >> "${conf_dir}/spark-defaults.conf"
    fi
}

write_airflow_passwords() {
    # Simple auth manager: users come from AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS, their passwords
    # from this JSON file; we write it from the environment so that Airflow never generates one.
    local file="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-}"
    if [ -n "${file}" ] && [ -n "${AIRFLOW_ADMIN_USERNAME:-}" ] && [ -n "${AIRFLOW_ADMIN_PASSWORD:-}" ]; then
        mkdir -p "$(dirname "${file}")"
        (umask 077 && python3 -c 'import json, os, sys; json.dump({os.environ["AIRFLOW_ADMIN_USERNAME"]: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, open(sys.argv[1], "w"))' "${file}")
    fi
}

write_spark_conf

case "${1:-}" in
    spark-master)
        shift
        exec "${SPARK_HOME}/bin/spark-class" org.apache.spark.deploy.master.Master \
            --host "${SPARK_MASTER_HOST:-$(hostname)}" --port "${SPARK_MASTER_PORT:-7077}" \
            --webui-port "${SPARK_MASTER_WEBUI_PORT:-8080}" "$@"
        ;;
    spark-worker)
        shift
        master="${1:-${COLDSTART_SPARK_MASTER:?COLDSTART_SPARK_MASTER must name the Spark master}}"
        [ $# -gt 0 ] && shift
        exec "${SPARK_HOME}/bin/spark-class" org.apache.spark.deploy.worker.Worker \
            --webui-port "${SPARK_WORKER_WEBUI_PORT:-8081}" \
            --work-dir "${SPARK_WORKER_DIR:-/opt/spark-work}" "$@" "${master}"
        ;;
    driver)
        # Kubernetes driver pod: Spark passes the submit arguments.
        shift
        exec "${SPARK_HOME}/bin/spark-submit" \
            --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS}" \
            --conf "spark.executorEnv.SPARK_DRIVER_POD_IP=${SPARK_DRIVER_BIND_ADDRESS}" \
            --deploy-mode client "$@"
        ;;
    executor)
        # Kubernetes executor pod: everything comes from SPARK_* variables set by the driver.
        shift
        java_opts=()
        while IFS='=' read -r name value; do
            java_opts+=("${value}")
        done < <(env | grep -E '^SPARK_JAVA_OPT_[0-9]+=' | sort -t_ -k4 -n)
        exec "${JAVA_HOME}/bin/java" "${java_opts[@]}" \
            -Xms"${SPARK_EXECUTOR_MEMORY}" -Xmx"${SPARK_EXECUTOR_MEMORY}" \
            -cp "${SPARK_CONF_DIR}:${SPARK_HOME}/jars/*${SPARK_CLASSPATH:+:${SPARK_CLASSPATH}}" \
            org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
            --driver-url "${SPARK_DRIVER_URL}" \
            --executor-id "${SPARK_EXECUTOR_ID}" \
            --cores "${SPARK_EXECUTOR_CORES}" \
            --app-id "${SPARK_APPLICATION_ID}" \
            --hostname "${SPARK_EXECUTOR_POD_IP}" \
            --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID}" \
            --podName "${SPARK_EXECUTOR_POD_NAME}" "$@"
        ;;
    airflow)
        write_airflow_passwords
        exec "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
