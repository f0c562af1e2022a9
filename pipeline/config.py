"""Job configuration: one pydantic model per concern, loaded from YAML.

Every model forbids unknown fields, so a typo in a config fails before any work
with the field's path (``stages.coarse.batch_sise``) instead of being ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError, field_validator, model_validator

from workers.config import (  # the stage-facing parts
    DEFAULT_SAMPLE_RATE,
    ModelConfig,
    SamplingSet,
    StageConfig,
    StageName,
    Strict,
)
from pipeline.languages import AUTO, DEFAULT_LANGUAGE, check_language
from pipeline.speech_time import MAX_SPEECH_S, TARGET_SPEECH_S
from pipeline.text import ChunkBudget
from workers.errors import UserError

PlacementStrategy = Literal["none", "PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]


class StagesConfig(Strict):
    semantic: StageConfig = StageConfig()
    coarse: StageConfig = StageConfig()
    fine: StageConfig = StageConfig()
    codec: StageConfig = StageConfig()

    def of(self, stage: StageName) -> StageConfig:
        return getattr(self, stage)


# How URLs, e-mail addresses and <placeholders> are read (pipeline.speech).
AddressMode = Literal["speak", "drop", "keep"]


class TextConfig(Strict):
    """Chunk budget: each chunk stays inside Bark's ~13 s window (seconds of speech estimated
    per language, :mod:`pipeline.speech_time`), and inside the semantic model's text window
    (``max_input_semantic_length``, 256 tokens; checked against the checkpoint when the job starts)."""

    target_speech_s: float = Field(
        default=TARGET_SPEECH_S, gt=0, description="sentences are packed into a chunk up to this many estimated seconds"
    )
    max_speech_s: float = Field(
        default=MAX_SPEECH_S,
        gt=0,
        description="a single sentence (or clause) over the target stays whole up to this; over it, it is split",
    )
    max_chars: int | None = Field(
        default=None,
        ge=1,
        description="optional extra cap on a chunk's characters (once the only budget; now off unless set)",
    )
    max_tokens: int = Field(default=200, ge=1)
    language: str = Field(
        default=AUTO,
        description="every item's language (one of Bark's 13 ISO 639-1 codes), unless the item names its own; "
        "'auto': detect each item's",
    )
    urls: AddressMode = Field(
        default="speak",
        description="URLs, e-mail addresses and <placeholders>: 'speak' says them as words "
        "(https://www.gnu.org/licenses/ is 'gnu dot org slash licenses'), 'drop' leaves them out, 'keep' as written",
    )
    # More than half: then more of the text is unknown to the tokenizer than known, so what is
    # left once the unknown characters are removed no longer says what the text says, and what
    # Bark makes of [UNK] tokens is noise (two of them made 15 s of it).
    max_unknown_share: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="an item whose characters, or a chunk whose tokens, are more than this share [UNK] "
        "(emoji, symbols the tokenizer does not know) fails instead of being narrated",
    )
    default_language: str = Field(
        default=DEFAULT_LANGUAGE, description="auto: the language of an item whose text does not tell (short, ambiguous)"
    )

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        return value if value == AUTO else check_language(value)

    @model_validator(mode="after")
    def _speech_order(self) -> TextConfig:
        if self.max_speech_s < self.target_speech_s:
            raise ValueError(
                f"max_speech_s ({self.max_speech_s:g}) must be at least target_speech_s ({self.target_speech_s:g})"
            )
        return self

    def budget(self) -> ChunkBudget:
        """The chunker's budget (:func:`pipeline.text.make_chunks`)."""
        return ChunkBudget(self.max_tokens, self.target_speech_s, self.max_speech_s, self.max_chars)

    @field_validator("default_language")
    @classmethod
    def _default_language(cls, value: str) -> str:
        return check_language(value)


class ColumnsConfig(Strict):
    """Which column of a dataset holds what.

    ``voice`` and ``params`` are optional columns (``null``: no such column): a
    missing column or an empty cell means the job's default. ``params`` holds a
    JSON object of the item's own settings (validated later as
    ``pipeline.config.ItemParams``). ``extra`` names the columns carried into
    the item's metadata; ``"*"`` carries every column not named above.
    """

    id: str = Field(default="id", min_length=1)
    text: str = Field(default="text", min_length=1)
    voice: str | None = Field(default="voice", min_length=1)
    params: str | None = Field(default="params", min_length=1)
    language: str | None = Field(default="language", min_length=1, description="the row's language code")
    extra: list[str] | Literal["*"] = "*"

    @property
    def named(self) -> list[str]:
        """The columns with a role, in order: id, text, and voice, params and language when set."""
        return [c for c in (self.id, self.text, self.voice, self.params, self.language) if c is not None]

    @model_validator(mode="after")
    def _distinct(self) -> ColumnsConfig:
        named = self.named
        if len(set(named)) != len(named):
            raise ValueError(f"id, text, voice, params and language must be different columns, got {named}")
        if self.extra != "*" and set(self.extra) & set(named):
            raise ValueError(
                f"extra must not repeat id/text/voice/params/language columns: {sorted(set(self.extra) & set(named))}"
            )
        return self


class InputConfig(Strict):
    """How dataset inputs (JSONL, CSV, Parquet) map to items."""

    columns: ColumnsConfig = ColumnsConfig()


# The metadata JSON writer (pydantic) refuses values nested ~250 deep; stay well under it.
MAX_METADATA_DEPTH = 200


class LimitsConfig(Strict):
    """Bounds on what one input may make the driver read or hold.

    Sizes are checked before anything is read or inflated (a file's size, a zip
    member's declared size, a line read at most this far), so a small hostile
    file cannot take the driver's memory. An item over a bound fails alone,
    with the bound's name; a whole input over one fails once. Sizes take units:
    ``16MiB``, ``1GB``.
    """

    max_item_chars: int = Field(
        default=1_000_000, ge=1, description="characters of one item's text (about 18 hours of speech)"
    )
    max_item_bytes: ByteSize = Field(
        default=ByteSize(16 << 20),
        gt=0,
        description="bytes one item is read from: a .txt/.md file, one dataset line or row (after gunzip)",
    )
    max_epub_bytes: ByteSize = Field(
        default=ByteSize(128 << 20), gt=0, description="all files of one EPUB together, inflated"
    )
    max_voice_bytes: ByteSize = Field(
        default=ByteSize(8 << 20), gt=0, description="the arrays of one voice .npz, inflated (a preset is ~50 KB)"
    )
    max_compression_ratio: int = Field(
        default=100,
        ge=1,
        description="inflated/compressed size of a zip member over 1 MiB (text compresses ~5x; zip bombs ~1000x)",
    )
    max_metadata_depth: int = Field(
        default=32,
        ge=1,
        le=MAX_METADATA_DEPTH,
        description="nesting of objects and arrays in an item's metadata (front matter, extra columns)",
    )


S3_MIN_PART_MB = 5  # S3 refuses multipart parts under 5 MiB (but the last)


class S3Config(BaseModel):
    """How to reach S3. Credentials are deliberately absent: boto3 finds them itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str | None = Field(
        default=None, description="e.g. http://127.0.0.1:8333; null: AWS_ENDPOINT_URL or AWS itself"
    )
    region: str | None = Field(default=None, description="null: AWS_REGION / the profile's region")
    profile: str | None = Field(default=None, description="a named profile of ~/.aws/config")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto", description="auto: virtual-hosted on AWS, path-style on any other endpoint"
    )
    multipart_threshold_mb: int = Field(default=16, ge=S3_MIN_PART_MB)
    multipart_chunksize_mb: int = Field(default=16, ge=S3_MIN_PART_MB)
    max_attempts: int = Field(
        default=12,
        ge=1,
        description="per request, first try included; botocore's standard mode waits about "
        "0.05 s * 2^n (jittered, at most 20 s) between tries, so 12 rides out roughly half a minute",
    )
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)

    @field_validator("endpoint_url")
    @classmethod
    def _plain_http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("endpoint_url must be an http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("endpoint_url must not contain credentials; use the AWS environment or a profile")
        return value


class SilenceConfig(Strict):
    """Seconds of silence inserted at each kind of boundary between two chunks."""

    sentence: float = Field(default=0.25, ge=0)
    paragraph: float = Field(default=0.6, ge=0)
    chapter: float = Field(default=1.5, ge=0)


class TrimConfig(Strict):
    """Trims each chunk's leading and trailing near-silence (and a quiet tail) before joining."""

    enabled: bool = True
    threshold_db: float = Field(default=-45.0, le=0, description="level below the chunk's peak counted as silence")
    keep_s: float = Field(default=0.05, ge=0, description="silence kept at each edge of a chunk")


AudioFormat = Literal["wav", "flac", "mp3", "opus"]
LOSSY_FORMATS = ("mp3", "opus")
DEFAULT_BITRATE_KBPS = {"mp3": 64, "opus": 32}  # mono speech: the usual spoken-word mp3 rate; Opus is clean at 32
# MP3 frames have fixed bitrates, per MPEG version: MPEG-1 at 32-48 kHz, MPEG-2/2.5 below.
MP3_MPEG1_RATES = (32_000, 44_100, 48_000)
MP3_MPEG2_RATES = (8_000, 11_025, 12_000, 16_000, 22_050, 24_000)
MP3_MPEG1_BITRATES_KBPS = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
MP3_MPEG2_BITRATES_KBPS = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
OPUS_RATES = (8_000, 12_000, 16_000, 24_000, 48_000)  # the input rates libopus takes
OPUS_BITRATE_KBPS = (6, 256)  # libopus' range for one channel


class LoudnessConfig(Strict):
    """Per-item loudness normalisation (see pipeline.loudness): integrated loudness (EBU R128 /
    ITU-R BS.1770) brought to ``target_lufs``, true peak kept at or under ``true_peak_dbtp``."""

    target_lufs: float = Field(ge=-50.0, le=-5.0)
    true_peak_dbtp: float = Field(ge=-20.0, le=0.0)

    @model_validator(mode="after")
    def _ceiling_over_target(self) -> LoudnessConfig:
        if self.true_peak_dbtp <= self.target_lufs:
            raise ValueError(
                f"true_peak_dbtp ({self.true_peak_dbtp}) must be above target_lufs ({self.target_lufs}): "
                "speech peaks well over its loudness"
            )
        return self


# Named loudness settings, usable as `output.loudness: audiobook`.
LOUDNESS_PRESETS = {
    "audiobook": LoudnessConfig(target_lufs=-18.0, true_peak_dbtp=-3.0),  # peaks under -3 dB, as audiobook stores ask
    "ebu_r128": LoudnessConfig(target_lufs=-23.0, true_peak_dbtp=-1.0),  # EBU R128 broadcast
}


class SubtitlesConfig(Strict):
    """How subtitle cues are cut (see pipeline.subtitles). ``output.subtitles: false`` (or
    ``true``) is short for ``{enabled: false}``."""

    enabled: bool = True
    max_cps: float = Field(
        default=20.0,
        gt=0,
        description="reading speed, characters per second, that a cue should not pass; a cue is shown while "
        "its words are spoken, so a chunk spoken faster than this has faster cues (counted in the metadata)",
    )
    max_line_chars: int = Field(default=42, ge=1, description="per line, in scripts written with spaces")
    max_line_chars_wide: int = Field(
        default=16, ge=1, description="per line, in full-width scripts (Chinese, Japanese, Korean)"
    )
    max_lines: int = Field(default=2, ge=1, le=2, description="per cue")


class OutputConfig(Strict):
    format: AudioFormat = Field(default="wav", description="wav and flac: 16-bit PCM; mp3 (CBR); opus (in Ogg, .opus)")
    sample_rate: int | None = Field(default=None, ge=8000, description="resample to this rate; null keeps Bark's 24 kHz")
    bitrate_kbps: int | None = Field(
        default=None,
        gt=0,
        description=f"mp3 and opus only; null: the format's default {DEFAULT_BITRATE_KBPS}",
    )
    loudness: LoudnessConfig | None = Field(
        default=None,
        description=f"null: audio as made; a preset ({', '.join(LOUDNESS_PRESETS)}) or {{target_lufs, true_peak_dbtp}}",
    )
    silence: SilenceConfig = SilenceConfig()
    crossfade_s: float = Field(default=0.01, ge=0, description="fade at every chunk edge, against clicks")
    trim: TrimConfig = TrimConfig()
    subtitles: SubtitlesConfig = SubtitlesConfig()
    save_tokens: bool = Field(default=False, description="write each chunk's tokens as a voice-preset .npz")
    audiobook: Literal["m4b"] | None = Field(
        default=None,
        description="m4b: also one <book id>.m4b per EPUB and per Markdown file with headings (AAC, chapters, cover)",
    )

    @field_validator("subtitles", mode="before")
    @classmethod
    def _subtitles_switch(cls, value: object) -> object:
        return {"enabled": value} if isinstance(value, bool) else value

    @field_validator("loudness", mode="before")
    @classmethod
    def _loudness_preset(cls, value: object) -> object:
        if isinstance(value, str):
            if value not in LOUDNESS_PRESETS:
                raise ValueError(f"unknown loudness preset {value!r}; presets: {', '.join(LOUDNESS_PRESETS)}")
            return LOUDNESS_PRESETS[value]
        return value

    @property
    def encoded_rate(self) -> int:
        """The rate the audio is encoded at (Bark makes 24 kHz)."""
        return self.sample_rate or DEFAULT_SAMPLE_RATE

    @property
    def bitrate(self) -> int | None:
        """Kilobits per second of a lossy format (configured or its default); None for wav and flac."""
        if self.format not in LOSSY_FORMATS:
            return None
        return self.bitrate_kbps or DEFAULT_BITRATE_KBPS[self.format]

    @model_validator(mode="after")
    def _codec_takes_rate_and_bitrate(self) -> OutputConfig:
        rate, kbps = self.encoded_rate, self.bitrate
        if self.format not in LOSSY_FORMATS:
            if self.bitrate_kbps is not None:
                raise ValueError(
                    f"bitrate_kbps applies to {' and '.join(LOSSY_FORMATS)} only, not {self.format} (lossless)"
                )
        elif self.format == "mp3":
            if rate not in MP3_MPEG1_RATES + MP3_MPEG2_RATES:
                rates = _listed(MP3_MPEG2_RATES + MP3_MPEG1_RATES)
                raise ValueError(f"mp3 cannot hold {rate} Hz audio; sample_rate must be one of {rates}")
            allowed = MP3_MPEG1_BITRATES_KBPS if rate in MP3_MPEG1_RATES else MP3_MPEG2_BITRATES_KBPS
            if kbps not in allowed:
                raise ValueError(f"mp3 at {rate} Hz takes bitrate_kbps {_listed(allowed)}, got {kbps}")
        elif self.format == "opus":
            if rate not in OPUS_RATES:
                raise ValueError(
                    f"opus takes {_listed(OPUS_RATES)} Hz audio, not {rate}; set sample_rate to one of them"
                )
            low, high = OPUS_BITRATE_KBPS
            if not low <= kbps <= high:
                raise ValueError(f"opus bitrate_kbps must be {low} to {high}, got {kbps}")
        return self


def _listed(values: tuple[int, ...]) -> str:
    return ", ".join(str(v) for v in values)


class LeaseConfig(Strict):
    """One job per output at a time (see pipeline.lease)."""

    expiry_s: float = Field(
        default=60.0,
        gt=0,
        description="a lease on S3 not renewed for this long is taken over (its holder renews 4 times as often); "
        "locally a killed job's lease is free at once",
    )


class QualityConfig(Strict):
    """When a chunk's audio is implausible for its text, and how often it is made again (pipeline.retakes).

    Bark now and then drops a chunk's words (far too little audio), runs on past
    them (its semantic stage reaching its length cap without an end), or gives
    near-silence. Such a chunk is generated again with its next derived seed.
    """

    retakes: int = Field(
        default=2, ge=0, description="how many times an implausible chunk is made again (0: never; a random-weight "
        "model makes noise, which no check can judge)"
    )
    # Bark's pace varies by voice and text, and a chunk ends with a breath or a pause, so the band is
    # wide: it catches a chunk with a third of its words or less, or one running on two and a half
    # times as long; ``slack_s`` keeps a short text ("Yes.") from counting its natural pause as running on.
    duration_band: tuple[float, float] = Field(
        default=(0.3, 2.5),
        description="plausible audio seconds per estimated speech second (pipeline.speech_time), low and high",
    )
    slack_s: float = Field(default=2.0, ge=0, description="seconds added to the high end of the band")
    # Bark's speech sits around -20 to -25 dBFS (RMS); a chunk 20 dB below that is breath or hiss.
    silence_dbfs: float = Field(default=-45.0, le=0, description="a chunk whose RMS level is below this is near-silence")

    @field_validator("duration_band")
    @classmethod
    def _band(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 <= low < high:
            raise ValueError("needs 0 <= low < high")
        return value


class SchedulerConfig(Strict):
    max_chunks_in_flight: int = Field(
        default=64, ge=1, description="chunks inside the stages and the writers at once, counted across items and within one"
    )
    max_group: int = Field(
        default=16,
        ge=1,
        description="chunks sent to a stage (and to a writer) in one call, when several are ready at once: fewer calls "
        "for the driver to make, but a group's outputs move on when its last chunk is done; a group is also at most "
        "a quarter of max_chunks_in_flight per replica of the widest stage, so every replica has groups to work on",
    )


class WriterConfig(Strict):
    """The item writers (see pipeline.writer): one Ray actor per codec replica, placed on its node when it can be."""

    num_cpus: float = Field(default=0.0, ge=0, description="CPUs reserved per writer (trimming, encoding, uploads)")
    max_concurrency: int = Field(
        default=4,
        ge=2,
        description="writes one writer runs at once (threads); above 1 also lets a write whose chunk is ready "
        "run before an earlier one still waiting for its chunk (a single-threaded actor runs calls in order)",
    )
    max_restarts: int = Field(default=3, ge=-1)
    max_task_retries: int = Field(default=-1, ge=-1, description="a part or item write is idempotent: retried until the writer is back")


class PlacementConfig(Strict):
    """Where the stage replicas go: one Ray placement group with a bundle per replica.

    ``PACK`` keeps the stages on as few nodes as possible (tokens stay on one
    node); ``SPREAD`` puts them on different nodes; the ``STRICT_`` forms fail
    instead of bending. ``none`` leaves placement to Ray's default scheduler.
    """

    strategy: PlacementStrategy = "none"
    timeout_s: float = Field(default=300.0, gt=0, description="how long to wait for the cluster to fit the group")


class RayConfig(Strict):
    """How the driver connects. ``address: null`` starts (or joins, under ``ray job submit``) Ray.

    The rest applies only where the driver starts a Ray of its own: Ray's metrics agent
    serves Prometheus text on ``metrics_export_port`` with or without the dashboard, so
    the dashboard (a web server and its head process) starts only when asked for, by
    ``dashboard: true`` or, unset, by asking for metrics.
    """

    address: str | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    dashboard: bool | None = Field(default=None, description="start Ray's dashboard; unset: only with metrics_export_port")
    metrics_export_port: int | None = Field(
        default=None, ge=1, le=65535, description="serve the metrics in Prometheus text on this port of each node"
    )

    def init_options(self) -> dict:
        """``ray.init`` arguments for this config; the dashboard and metrics port shape a Ray the driver starts
        (joining a running cluster, Ray does not read ``include_dashboard``; the cluster's nodes have their own port)."""
        options: dict = {"address": self.address, "num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        options["include_dashboard"] = self.dashboard if self.dashboard is not None else self.metrics_export_port is not None
        if self.metrics_export_port is not None:
            options["_metrics_export_port"] = self.metrics_export_port
        return options


VoiceMode = Literal["fixed", "chained"]


class ItemParams(Strict):
    """What one item may set for itself (a front-matter block or a dataset column); unset: the job's."""

    voice: str | None = None
    voice_mode: VoiceMode | None = None
    voice_reset_every: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=0)
    language: str | None = Field(default=None, description="the item's language, one of Bark's 13 codes")
    sampling: dict[Literal["semantic", "coarse", "fine"], dict] | None = Field(
        default=None, description="per-stage overrides merged over the job's sampling, e.g. {semantic: {temperature: 0.6}}"
    )

    @field_validator("language")
    @classmethod
    def _language(cls, value: str | None) -> str | None:
        return value if value is None else check_language(value)


class JobConfig(Strict):
    model: ModelConfig
    stages: StagesConfig = StagesConfig()
    sampling: SamplingSet = SamplingSet()
    input: InputConfig = InputConfig()
    limits: LimitsConfig = LimitsConfig()
    s3: S3Config = Field(default_factory=lambda: S3Config(), description="for s3:// inputs and outputs")
    text: TextConfig = TextConfig()
    output: OutputConfig = OutputConfig()
    quality: QualityConfig = QualityConfig()
    lease: LeaseConfig = LeaseConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    writer: WriterConfig = WriterConfig()
    ray: RayConfig = RayConfig()
    placement: PlacementConfig = PlacementConfig()
    voice: str | None = Field(
        default=None,
        description="preset name or .npz path; null: random voice. A v2/<xx>_speaker_N preset follows each item's "
        "language: a German item gets v2/de_speaker_N",
    )
    voice_by_language: dict[str, str] = Field(
        default_factory=dict, description="the voice of an item with none of its own, per language: {de: v2/de_speaker_3}"
    )
    voices_dir: Path | None = Field(
        default=None,
        description="where an item's own voice files are (relative to this config's folder): an item naming "
        "`narrator.npz` gets <voices_dir>/narrator.npz; nothing outside it",
    )
    allow_voice_paths: bool = Field(
        default=False, description="let items name any .npz path on the driver, not only presets and voices_dir"
    )
    voice_mode: VoiceMode = Field(
        default="fixed",
        description="fixed: every chunk uses the item's voice (chunks run in parallel); "
        "chained: each chunk continues from the previous chunk's tokens (sequential within an item)",
    )
    voice_reset_every: int | None = Field(
        default=None, ge=1, description="chained: go back to the item's voice every N chunks"
    )
    seed: int = Field(default=0, ge=0)

    @field_validator("voice_by_language")
    @classmethod
    def _voice_languages(cls, value: dict[str, str]) -> dict[str, str]:
        for language in value:
            check_language(language)
        return value


class ConfigError(UserError):
    """A config that cannot run; the message is one line per problem, each naming its field."""


def error_lines(exc: ValidationError) -> list[str]:
    """Every validation error, one line each naming the field (never the value: it may be a secret)."""
    return [f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()]


def load_config(path: str | Path, overrides: dict | None = None) -> JobConfig:
    """Read a YAML job config; relative model paths resolve against the config's folder."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    for key, value in (overrides or {}).items():
        raw[key] = value
    try:
        config = JobConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(f"config {path}: {line}" for line in error_lines(exc))) from None
    return resolve_relative_paths(config, path.parent)


def resolve_relative_paths(config: JobConfig, base: Path) -> JobConfig:
    if config.voices_dir is not None:
        voices_dir = config.voices_dir.expanduser()
        config = config.model_copy(update={"voices_dir": voices_dir if voices_dir.is_absolute() else (base / voices_dir).resolve()})
    source = config.model.source
    if source.startswith((".", "/")) or (base / source).exists():
        candidate = Path(source) if Path(source).is_absolute() else (base / source).resolve()
        model = config.model.model_copy(update={"source": str(candidate)})
        return config.model_copy(update={"model": model})
    return config
