"""Static checks of docker/: compose file, Dockerfile, .env.example and README (no Docker needed).

They guard what a reviewer would otherwise check by hand: images pinned to exact versions, files
that the build and the mounts need really exist, every variable documented, no credential in the
repository, a GPU reservation for the GPU worker, and an Airflow that asks for a login.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
ENV_EXAMPLE = DOCKER / ".env.example"
README = DOCKER / "README.md"

# `${VAR}`, `${VAR:-default}`, `${VAR:?message}` and `$VAR`, but not the `$$` escape.
INTERPOLATION = re.compile(r"(?<!\$)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)|([A-Za-z_][A-Za-z0-9_]*))")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|TOKEN|FERNET|CREDENTIAL", re.IGNORECASE)
# In .env.example an access key *id* is an account name, not a secret.
ENV_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|JWT", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"://[^/\s:@]+:([^@\s]+)@")

FULL_VERSION = re.compile(r"^v?\d+\.\d+\.\d+(?:[.+-][A-Za-z0-9_.-]+)?$")
MINIO_RELEASE = re.compile(r"^RELEASE\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z(?:-[A-Za-z0-9]+)?$")
# Images whose exact releases have two numbers (PostgreSQL >= 10: 16.4 is a patch release).
TWO_PART_EXACT = {"postgres": re.compile(r"^\d{2,}\.\d+(?:-[A-Za-z0-9_.-]+)?$")}


# ------------------------------------------------------------------------------------------------
# helpers


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        return {p[0]: (p[1] if len(p) > 1 else "") for p in pairs}
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def command_words(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def airflow_services() -> dict[str, dict]:
    return {n: s for n, s in services().items() if command_words(s)[:1] == ["airflow"]}


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert "=" in line, f".env.example: not KEY=value: {line!r}"
        key, value = line.split("=", 1)
        assert key not in values, f".env.example: {key} listed twice"
        values[key] = value
    return values


def readme_env_table() -> set[str]:
    """Variable names in the first column of the README's "Environment variables" table."""
    text = README.read_text()
    match = re.search(r"^## Environment variables\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, "README has no '## Environment variables' section"
    names: set[str] = set()
    in_table = False
    for line in match.group(1).splitlines():
        if line.startswith("|"):
            in_table = True
            first = line.strip("|").split("|")[0]
            names.update(re.findall(r"`([A-Z][A-Z0-9_]*)`", first))
        elif in_table:
            break  # only the first table (build arguments follow in another one)
    assert names, "README's environment-variable table is empty"
    return names


def interpolated(text: str) -> set[str]:
    return {a or b for a, b in INTERPOLATION.findall(text)}


def strings(node) -> list[str]:
    """Every key and scalar of a parsed YAML document (what compose interpolates; comments are not)."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in strings(k) + strings(v)]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return [str(node)] if node is not None else []


def compose_interpolated() -> set[str]:
    return set().union(*(interpolated(s) for s in strings(compose())))


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def dockerfile_key_values(instruction: str) -> dict[str, str]:
    values = {}
    for word, rest in dockerfile_instructions():
        if word != instruction:
            continue
        for token in shlex.split(rest):
            key, _, value = token.partition("=")
            values[key] = value
    return values


def copy_sources() -> list[list[str]]:
    """Source lists of every COPY/ADD that reads the build context (not --from=...)."""
    result = []
    for word, rest in dockerfile_instructions():
        if word not in ("COPY", "ADD"):
            continue
        if rest.startswith("["):
            args = json.loads(rest)
        else:
            args = shlex.split(rest)
        if any(a.startswith("--from=") for a in args):
            continue
        args = [a for a in args if not a.startswith("--")]
        assert len(args) >= 2, f"{word} {rest}: needs a source and a destination"
        result.append(args[:-1])
    return result


def build_context() -> Path:
    svc = next(s for s in services().values() if "build" in s)
    build = svc["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    return (COMPOSE_FILE.parent / context).resolve()


def dockerignore_patterns() -> list[str]:
    path = Path(str(DOCKERFILE) + ".dockerignore")
    if not path.exists():
        path = build_context() / ".dockerignore"
    if not path.exists():
        return []
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last matching pattern wins; a directory pattern covers its files."""
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        if fnmatch.fnmatch(rel, pat) or rel.startswith(pat + "/") or (
            pat.startswith("**/") and (fnmatch.fnmatch(rel, pat[3:]) or f"/{pat[3:]}/" in f"/{rel}/")
        ):
            verdict = not negate
    return verdict


def image_problem(image: str) -> str | None:
    """None when the reference names one exact release; else why not."""
    if "$" in image:
        return "interpolated tag (floats with the environment)"
    if "@sha256:" in image:
        return None
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return "no tag"
    if tag == "latest" or "latest" in tag.split("-"):
        return "'latest' tag"
    if FULL_VERSION.match(tag) or MINIO_RELEASE.match(tag):
        return None
    base = name.split("/")[-1]
    if base in TWO_PART_EXACT and TWO_PART_EXACT[base].match(tag):
        return None
    return f"tag {tag!r} is not a full version"


# ------------------------------------------------------------------------------------------------
# the files parse


def test_files_exist_and_yaml_parses():
    for path in (COMPOSE_FILE, DOCKERFILE, ENV_EXAMPLE, README):
        assert path.is_file(), f"missing {path.relative_to(ROOT)}"
    data = compose()
    assert isinstance(data.get("services"), dict) and data["services"]
    for name, svc in data["services"].items():
        assert isinstance(svc, dict), name


@pytest.mark.parametrize("script", ["entrypoint.sh", "spark/install-jars.sh", "spark/getGpusResources.sh"])
def test_bash_scripts_parse(script):
    path = DOCKER / script
    assert path.is_file()
    assert path.read_text().startswith("#!/usr/bin/env bash")
    bash = shutil.which("bash")
    if bash:
        subprocess.run([bash, "-n", str(path)], check=True)


def test_minio_script_is_posix_sh():
    path = DOCKER / "minio/create-buckets.sh"
    assert path.read_text().startswith("#!/bin/sh")
    sh = shutil.which("dash") or shutil.which("sh")
    if sh:
        subprocess.run([sh, "-n", str(path)], check=True)


def test_discovery_script_prints_spark_resource_json():
    bash = shutil.which("bash")
    if not bash:
        pytest.skip("no bash")
    out = subprocess.run([bash, str(DOCKER / "spark/getGpusResources.sh")], check=True,
                         capture_output=True, text=True).stdout
    doc = json.loads(out)
    assert doc["name"] == "gpu"
    assert all(isinstance(a, str) and a.isdigit() for a in doc["addresses"])


# ------------------------------------------------------------------------------------------------
# pinned images


@pytest.mark.parametrize("image", [
    "postgres:16.4", "python:3.11.13-slim-bookworm", "minio/minio:RELEASE.2025-09-07T16-13-09Z",
    "minio/mc:RELEASE.2025-08-13T08-35-41Z", "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04",
    "redis@sha256:" + "0" * 64,
])
def test_image_rule_accepts_exact_releases(image):
    assert image_problem(image) is None


@pytest.mark.parametrize("image", [
    "postgres", "postgres:latest", "postgres:16", "python:3.11-slim", "python:3", "minio/minio:latest",
    "minio/minio:RELEASE", "nvidia/cuda:12-runtime", "coldstart:${TAG}", "bitnami/spark:latest-debian",
])
def test_image_rule_rejects_floating_tags(image):
    assert image_problem(image) is not None


def test_every_service_has_a_pinned_image_or_a_build():
    version = project_version()
    for name, svc in services().items():
        assert "image" in svc or "build" in svc, f"{name}: neither image nor build"
        if "build" in svc:
            assert svc.get("image") == f"coldstart:{version}", (
                f"{name}: the built image must be tagged with the project version coldstart:{version}")
        else:
            problem = image_problem(str(svc["image"]))
            assert problem is None, f"{name}: image {svc['image']}: {problem}"


def test_dockerfile_base_images_are_pinned():
    froms = [rest for word, rest in dockerfile_instructions() if word == "FROM"]
    assert froms
    stages = set()
    for rest in froms:
        words = rest.split()
        image = words[0]
        if image not in stages:
            problem = image_problem(image)
            assert problem is None, f"FROM {image}: {problem}"
        if len(words) == 3 and words[1].lower() == "as":
            stages.add(words[2])


# ------------------------------------------------------------------------------------------------
# referenced files exist


def test_build_context_and_dockerfile_exist():
    for name, svc in services().items():
        if "build" not in svc:
            continue
        build = svc["build"]
        context = (COMPOSE_FILE.parent / (build if isinstance(build, str) else build.get("context", "."))).resolve()
        assert context.is_dir(), f"{name}: build context {context} missing"
        assert context == ROOT, f"{name}: the build context must be the repository root"
        dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
        assert dockerfile.resolve() == DOCKERFILE, f"{name}: builds {dockerfile}, expected docker/Dockerfile"


def test_dockerfile_copy_sources_exist_and_are_not_dockerignored():
    context = build_context()
    patterns = dockerignore_patterns()
    sources = copy_sources()
    assert sources
    for group in sources:
        matched_any = False
        for src in group:
            assert not src.startswith(("/", "..")), f"COPY {src}: outside the build context"
            if glob.has_magic(src):
                hits = glob.glob(str(context / src))
                matched_any |= bool(hits)
                rels = [str(Path(h).relative_to(context)) for h in hits]
            else:
                assert (context / src).exists(), f"COPY source {src} does not exist in the build context"
                matched_any = True
                rels = [src.rstrip("/")]
            for rel in rels:
                assert not ignored(rel, patterns), f"COPY source {rel} is excluded by the dockerignore file"
        assert matched_any, f"COPY {group}: no source matches"


def test_project_sources_are_copied():
    copied = {src.rstrip("/").removeprefix("./") for group in copy_sources() for src in group}
    for needed in ("requirements.txt", "constraints.txt", "pyproject.toml", "coldstart", "jobs", "dags",
                   "docker/entrypoint.sh"):
        assert needed in copied, f"the Dockerfile does not COPY {needed}"


def test_mounted_repository_paths_exist():
    for name, svc in services().items():
        for volume in svc.get("volumes") or []:
            source = volume.get("source", "") if isinstance(volume, dict) else str(volume).split(":")[0]
            if source.startswith((".", "/")):
                path = (COMPOSE_FILE.parent / source).resolve()
                assert path.exists(), f"{name}: mounted {source} does not exist"
                assert ROOT in path.parents or path == ROOT, f"{name}: mounts {source} from outside the repository"


def test_named_volumes_are_declared():
    declared = set((compose().get("volumes") or {}).keys())
    for name, svc in services().items():
        for volume in svc.get("volumes") or []:
            source = volume.get("source", "") if isinstance(volume, dict) else str(volume).split(":")[0]
            if source and not source.startswith((".", "/", "$")):
                assert source in declared, f"{name}: volume {source} not declared at top level"


# ------------------------------------------------------------------------------------------------
# variables are listed and documented


def test_every_interpolated_variable_is_in_env_example_and_readme():
    used = compose_interpolated()
    assert used
    example = env_example()
    table = readme_env_table()
    missing_example = sorted(used - example.keys())
    missing_readme = sorted(used - table)
    assert not missing_example, f"not in docker/.env.example: {missing_example}"
    assert not missing_readme, f"not in the README's variable table: {missing_readme}"


def test_env_example_has_no_stale_variable():
    used = compose_interpolated()
    stale = sorted(set(env_example()) - used)
    assert not stale, f".env.example lists variables compose.yaml never uses: {stale}"
    undocumented = sorted(set(env_example()) - readme_env_table())
    assert not undocumented, f"not in the README's variable table: {undocumented}"


def test_every_container_variable_is_documented():
    table = readme_env_table()
    names = set()
    for svc in services().values():
        names |= set(environment(svc))
    names |= set(dockerfile_key_values("ENV"))
    for script in ("entrypoint.sh", "minio/create-buckets.sh", "spark/install-jars.sh",
                   "spark/getGpusResources.sh"):
        names |= {n for n in interpolated((DOCKER / script).read_text()) if n.isupper()}
    missing = sorted(names - table)
    assert not missing, f"environment variables missing from the README's table: {missing}"


def test_build_arguments_are_documented():
    readme = README.read_text()
    for arg in dockerfile_key_values("ARG"):
        assert f"`{arg}`" in readme, f"build argument {arg} is not documented in docker/README.md"


def test_coldstart_settings_in_compose_exist_in_config():
    from dataclasses import fields

    from coldstart.config import ENV_PREFIX, Settings

    known = {ENV_PREFIX + f.name.upper() for f in fields(Settings)}
    for name, svc in services().items():
        for var in environment(svc):
            if var.startswith(ENV_PREFIX):
                assert var in known, f"{name}: {var} is not a coldstart setting"
    for var in env_example():
        if var.startswith(ENV_PREFIX):
            assert var in known, f".env.example: {var} is not a coldstart setting"


# ------------------------------------------------------------------------------------------------
# no credential in the repository


def test_no_literal_secret_in_compose():
    for name, svc in services().items():
        for key, value in environment(svc).items():
            if SECRET_NAME.search(key) and not key.endswith("_FILE"):
                assert value.startswith("${") and value.endswith("}"), (
                    f"{name}: {key} must come from the environment file (${{...}}), not {value!r}")
            for password in URL_WITH_PASSWORD.findall(value):
                assert password.startswith("${"), f"{name}: {key} embeds a literal password"
        for word in command_words(svc):
            assert not URL_WITH_PASSWORD.search(word) or "${" in word, f"{name}: literal credential in command"


def test_required_secrets_fail_loudly_when_missing():
    text = COMPOSE_FILE.read_text()
    secrets = [k for k in env_example() if ENV_SECRET_NAME.search(k)]
    assert secrets
    for var in secrets:
        uses = re.findall(r"(?<!\$)\$\{" + var + r"(?![A-Za-z0-9_])([^}]*)\}", text)
        assert uses, f"{var} is never used in compose.yaml"
        for tail in uses:
            assert tail.startswith(":?"), f"${{{var}{tail}}}: a required secret needs ${{{var}:?message}}"


def test_env_example_holds_no_secret_value():
    for key, value in env_example().items():
        if ENV_SECRET_NAME.search(key):
            assert value == "", f".env.example: {key} must be an empty placeholder, not {value!r}"


def test_dockerfile_holds_no_secret():
    for instruction in ("ENV", "ARG"):
        for key, value in dockerfile_key_values(instruction).items():
            assert not (SECRET_NAME.search(key) and value), f"Dockerfile {instruction} {key} has a literal value"
    text = DOCKERFILE.read_text()
    assert not URL_WITH_PASSWORD.search(text), "Dockerfile embeds a URL with a password"
    assert not re.search(r"(AWS_SECRET_ACCESS_KEY|PASSWORD|_TOKEN)\s*=\s*\S", text), "Dockerfile sets a secret"


def test_spark_defaults_hold_no_credential():
    text = (DOCKER / "spark/spark-defaults.conf").read_text()
    assert not re.search(r"fs\.s3a\.(access|secret)\.key", text)
    assert not re.search(r"fs\.s3a\.session\.token", text)


def test_dot_env_is_not_copied_into_the_image():
    patterns = dockerignore_patterns()
    assert ignored("docker/.env", patterns), "docker/.env must be excluded from the build context"


# ------------------------------------------------------------------------------------------------
# GPU worker


def gpu_workers() -> dict[str, dict]:
    return {n: s for n, s in services().items()
            if "spark.worker.resource.gpu.amount" in environment(s).get("SPARK_WORKER_OPTS", "")}


def test_gpu_worker_has_a_device_reservation():
    workers = gpu_workers()
    assert workers, "no Spark worker offers a gpu resource"
    for name, svc in workers.items():
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), (
            f"{name}: needs a device reservation with driver nvidia and capabilities [gpu]")


def test_gpu_worker_discovery_script_is_in_the_image():
    copied = {Path(src).name for group in copy_sources() for src in group}
    for name, svc in gpu_workers().items():
        opts = environment(svc)["SPARK_WORKER_OPTS"]
        match = re.search(r"spark\.worker\.resource\.gpu\.discoveryScript=(\S+)", opts)
        assert match, f"{name}: no spark.worker.resource.gpu.discoveryScript"
        script = Path(match.group(1)).name
        assert script in copied and (DOCKER / "spark" / script).is_file(), f"{name}: {script} not in the image"
    anchors = compose()["x-coldstart-env"]
    assert "getGpusResources.sh" in anchors["COLDSTART_SPARK_GPU_DISCOVERY_SCRIPT"]


def test_spark_cluster_shape():
    svcs = services()
    assert command_words(svcs["spark-master"]) == ["spark-master"]
    workers = [s for s in svcs.values() if command_words(s)[:1] == ["spark-worker"]]
    assert len(workers) >= 2, "a CPU and a GPU Spark worker"
    for svc in workers:
        assert command_words(svc)[1] == "spark://spark-master:7077"
        assert "spark-master" in svc.get("depends_on", {})


# ------------------------------------------------------------------------------------------------
# Airflow


def test_airflow_components_and_executor():
    commands = {" ".join(command_words(s)[1:2]) for s in airflow_services().values()}
    for component in ("api-server", "scheduler", "dag-processor", "triggerer", "db"):
        assert component in commands, f"no Airflow {component} service"
    init = [n for n, s in airflow_services().items() if command_words(s)[1:3] == ["db", "migrate"]]
    assert init, "no `airflow db migrate` init service"
    for name, svc in airflow_services().items():
        env = environment(svc)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql"), name
        if name not in init:
            assert svc["depends_on"][init[0]]["condition"] == "service_completed_successfully", name


def test_airflow_requires_a_login():
    for name, svc in airflow_services().items():
        env = environment(svc)
        manager = env.get("AIRFLOW__CORE__AUTH_MANAGER", "")
        assert manager.endswith(("SimpleAuthManager", "FabAuthManager")), f"{name}: no auth manager set"
        assert env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False").lower() in ("false", "0"), name
        if manager.endswith("SimpleAuthManager"):
            assert env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"), f"{name}: no users"
            assert env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"), f"{name}: no password file"
        assert env.get("AIRFLOW__API_AUTH__JWT_SECRET", "").startswith("${AIRFLOW_JWT_SECRET:?"), name
    for path in DOCKER.rglob("*"):
        if path.is_file() and path.name != ".env":
            assert not re.search(r"ALL_ADMINS\s*[:=]\s*[\"']?true", path.read_text(), re.I), (
                f"{path.relative_to(ROOT)} switches the Airflow login off")


def test_entrypoint_writes_the_simple_auth_password_file_from_the_environment():
    text = (DOCKER / "entrypoint.sh").read_text()
    assert "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in text
    assert "AIRFLOW_ADMIN_PASSWORD" in text and "umask 077" in text


def test_spark_default_connection_points_at_the_master():
    conn = json.loads(environment(services()["airflow-scheduler"])["AIRFLOW_CONN_SPARK_DEFAULT"])
    assert conn["conn_type"] == "spark"
    assert f"{conn['host']}:{conn['port']}" == "spark://spark-master:7077"
    assert conn["extra"]["deploy-mode"] == "client"
    scheduler = services()["airflow-scheduler"]
    assert scheduler.get("hostname") == "airflow-scheduler", "executors must reach the driver by name"


# ------------------------------------------------------------------------------------------------
# image contents


def requirement_pin(name: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(rf"^{re.escape(name)}==(\S+)", line.strip())
        if m:
            return m.group(1)
    raise AssertionError(f"{name} is not pinned in requirements.txt")


def test_dockerfile_installs_the_locked_requirements_and_cuda_torch():
    text = DOCKERFILE.read_text()
    args = dockerfile_key_values("ARG")
    assert args["TORCH_VERSION"] == requirement_pin("torch")
    assert re.fullmatch(r"cu\d{3}", args["TORCH_CUDA"])
    assert "https://download.pytorch.org/whl/${TORCH_CUDA}" in text
    assert '"torch==${TORCH_VERSION}+${TORCH_CUDA}"' in text
    assert "pip install -r requirements.txt -c constraints.txt" in text
    assert "pip install --no-deps -e ." in text or "pip install -e ." in text
    assert "openjdk-17" in text
    for arg, value in args.items():
        if arg.endswith("_VERSION"):
            assert FULL_VERSION.match(value), f"ARG {arg}={value} is not an exact version"
    assert args["COLDSTART_VERSION"] == project_version()


def test_delta_jar_matches_pyspark_and_delta_release():
    args = dockerfile_key_values("ARG")
    spark_minor = ".".join(requirement_pin("pyspark").split(".")[:2])
    assert args["DELTA_ARTIFACT"] == f"io.delta:delta-spark_{spark_minor}_2.13"
    assert args["DELTA_VERSION"] == "4.4.1"
    install = (DOCKER / "spark/install-jars.sh").read_text()
    assert "--packages" in install and "hadoop-aws" in install and "${jars_dir}" in install
    readme = README.read_text()
    assert f"io.delta:delta-spark_{spark_minor}_2.13:{args['DELTA_VERSION']}" in readme


def test_readme_covers_clusters_and_gpu_settings():
    readme = README.read_text()
    for needle in ("--master yarn", "--master k8s://", "--master spark://", "spark.executor.resource.gpu.amount",
                   "spark.task.resource.gpu.amount", "spark.executor.resource.gpu.discoveryScript",
                   "spark_default", "format(\"delta\")", "AWS_S3_ALLOW_UNSAFE_RENAME", "AWS_ALLOW_HTTP",
                   "--run-date"):
        assert needle in readme, f"docker/README.md does not mention {needle}"
    for stage_line in re.findall(r"jobs/(\w+)\.py --run-date", readme):
        assert stage_line in ("ingest", "embed", "train", "score", "evaluate"), stage_line
