#!/bin/sh
# One-shot MinIO setup, run by the `minio-init` service with the minio/mc image:
#  - creates the bucket of every s3a:// or s3:// location among COLDSTART_LAKE, COLDSTART_LANDING,
#    COLDSTART_MODELS and COLDSTART_REPORTS (local paths are skipped),
#  - creates the pipeline's own access key (LAKE_ACCESS_KEY_ID / LAKE_SECRET_ACCESS_KEY) with
#    read-write rights on those buckets only, so that the services never use the root account.
# Idempotent: safe to run on every `docker compose up`. POSIX sh (the mc image has no sed/awk).
set -eu

: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${LAKE_ACCESS_KEY_ID:?}" "${LAKE_SECRET_ACCESS_KEY:?}"
endpoint="${MINIO_ENDPOINT:-http://minio:9000}"
policy=coldstart-readwrite

mc alias set coldstart "${endpoint}" "${MINIO_ROOT_USER}" "${MINIO_ROOT_PASSWORD}" >/dev/null

buckets=""
for uri in "${COLDSTART_LAKE:-}" "${COLDSTART_LANDING:-}" "${COLDSTART_MODELS:-}" "${COLDSTART_REPORTS:-}"; do
    case "${uri}" in
        s3a://*|s3://*)
            rest="${uri#*://}"
            bucket="${rest%%/*}"
            case " ${buckets} " in
                *" ${bucket} "*) ;;
                *) buckets="${buckets:+${buckets} }${bucket}" ;;
            esac
            ;;
    esac
done
if [ -z "${buckets}" ]; then
    echo "no s3a:// location configured; nothing to create"
    exit 0
fi

statements=""
for bucket in ${buckets}; do
    mc mb --ignore-existing "coldstart/${bucket}"
    statements="${statements:+${statements},}\"arn:aws:s3:::${bucket}\",\"arn:aws:s3:::${bucket}/*\""
done

policy_file=/tmp/coldstart-policy.json
cat > "${policy_file}" <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:*"], "Resource": [${statements}]}
  ]
}
JSON
mc admin policy create coldstart "${policy}" "${policy_file}"
rm -f "${policy_file}"

mc admin user add coldstart "${LAKE_ACCESS_KEY_ID}" "${LAKE_SECRET_ACCESS_KEY}"
if ! out="$(mc admin policy attach coldstart "${policy}" --user "${LAKE_ACCESS_KEY_ID}" 2>&1)"; then
    case "${out}" in
        *"already in effect"*|*"already attached"*) ;;
        *) echo "${out}" >&2; exit 1 ;;
    esac
fi
echo "buckets ready: ${buckets}; access key ${LAKE_ACCESS_KEY_ID} has ${policy}"
