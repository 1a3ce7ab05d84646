#!/usr/bin/env bash
# Spark GPU discovery script (spark.worker.resource.gpu.discoveryScript and
# spark.executor.resource.gpu.discoveryScript). Prints the GPUs this container can see as
#   {"name": "gpu", "addresses": ["0", "1"]}
# Same contract as $SPARK_HOME/examples/src/main/scripts/getGpusResources.sh in a Spark
# distribution (the pyspark wheel does not ship that file). Uses nvidia-smi when the NVIDIA
# container toolkit has mounted it (driver capability "utility"), else counts /dev/nvidiaN.
set -euo pipefail

addresses=""
if command -v nvidia-smi >/dev/null 2>&1; then
    addresses="$(nvidia-smi --query-gpu=index --format=csv,noheader | tr -d ' ' | grep -E '^[0-9]+$' || true)"
fi
if [ -z "${addresses}" ]; then
    # /dev/nvidiaN device nodes; inside a container the visible GPUs are renumbered from 0.
    count=0
    for dev in /dev/nvidia[0-9]*; do
        [ -e "${dev}" ] && count=$((count + 1))
    done
    addresses="$(seq 0 $((count - 1)) 2>/dev/null || true)"
fi

json=""
for a in ${addresses}; do
    json="${json:+${json}, }\"${a}\""
done
printf '{"name": "gpu", "addresses": [%s]}\n' "${json}"
