"""The one Spark session factory.

Local mode by default (``local[2]``); a cluster by setting ``COLDSTART_SPARK_MASTER``. The session
time zone is UTC so that event dates never depend on the machine's zone.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys

from coldstart.config import Settings

log = logging.getLogger("coldstart.spark")


class JavaMissingError(RuntimeError):
    pass


def check_java() -> str:
    """Spark needs Java 17 (or 21); fail with a clear message instead of a Py4J stack trace."""
    java = shutil.which("java", path=os.path.join(os.environ["JAVA_HOME"], "bin")) if os.environ.get("JAVA_HOME") else None
    java = java or shutil.which("java")
    if not java:
        raise JavaMissingError("Java not found: Spark needs Java 17. Install it (e.g. apt-get install openjdk-17-jre-headless) "
                               "or set JAVA_HOME.")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    return out.splitlines()[0] if out else java


def get_session(settings: Settings | None = None, app_name: str = "coldstart"):
    """Return the active session, or build one from settings."""
    from pyspark.sql import SparkSession

    settings = settings or Settings.load()
    check_java()
    # Python workers must use this interpreter (the venv), and local Spark must bind to loopback.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if settings.spark_master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = (
        SparkSession.builder.master(settings.spark_master).appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "10000")
        .config("spark.sql.shuffle.partitions", str(settings.spark_shuffle_partitions))
        .config("spark.default.parallelism", str(settings.spark_shuffle_partitions))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.memory.fraction", str(settings.spark_memory_fraction))
        # Delta requires microsecond timestamps in Parquet, not Spark's legacy INT96.
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.python.worker.reuse", "true")
        # executors' peak memory (JVM and Python workers' process trees) for stage_runs, sampled each second
        .config("spark.executor.processTreeMetrics.enabled", "true")
        .config("spark.executor.metrics.pollingInterval", "1s")
        .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
        .config("spark.executor.extraJavaOptions", "-Duser.timezone=UTC")
    )
    if settings.spark_executor_gpus > 0:
        builder = builder.config("spark.executor.resource.gpu.amount", str(settings.spark_executor_gpus))
        builder = builder.config("spark.task.resource.gpu.amount", str(settings.spark_task_gpus or 1))
        if settings.spark_gpu_discovery_script:
            builder = builder.config("spark.executor.resource.gpu.discoveryScript", settings.spark_gpu_discovery_script)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    log.info("spark session %s on %s", spark.version, settings.spark_master)
    return spark


def worker_threads(settings: Settings, tasks: int | None = None) -> int:
    """torch threads for one Python worker: the ``encoder_threads`` setting when set; with local[k],
    min(k, tasks) workers share the machine's cores; on a cluster, the cores Spark gave the task
    (``spark.task.cpus``), never the node's core count, which other executors share."""
    if settings.encoder_threads:
        return settings.encoder_threads
    cores = os.cpu_count() or 1
    match = re.fullmatch(r"local\[(\d+|\*)(?:,\d+)?\]", settings.spark_master)
    if not match:
        from pyspark import TaskContext

        context = TaskContext.get()
        return max(1, context.cpus()) if context is not None else 1
    slots = cores if match.group(1) == "*" else int(match.group(1))
    return max(1, cores // max(1, min(slots, tasks or slots)))
