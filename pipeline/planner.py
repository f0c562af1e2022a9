"""Planning: an item in; its settings, chunks, token ids, seeds and voice sources out.

No Ray and no storage here, so planning is tested on its own. Planning is two
steps because resume sits between them: :meth:`Planner.spec` validates the
item's own settings and computes its fingerprint (what an earlier run's record
is compared with), and only an item that needs narrating is split into chunks
by :meth:`Planner.plan`. A chunk's token ids are made when it is submitted
(:meth:`Planner.token_ids`), so a book's plan holds its text, not its tokens.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from pipeline.config import ConfigError, ItemParams, JobConfig, VoiceMode
from pipeline.fingerprint import Fingerprinter, ItemFingerprint
from pipeline.seeds import chunk_seed, item_seed
from pipeline.sources import Item, ItemError
from pipeline.languages import AUTO, check_language, detect_language, voice_for_language
from pipeline.speech import SpeechText, speech_text
from pipeline.text import TextChunk, make_chunks, normalize_text
from pipeline.voices import VoiceError, load_item_voice, load_voice
from workers.config import SamplingSet
from workers.records import VoicePrompt
from workers.settings import BarkSettings

UNKNOWN_CACHE_CHARS = 65_536  # characters whose [UNK]-ness is kept: a book's distinct characters, CJK included
SNIPPET_CHARS = 40  # of a chunk's text, quoted in its failure
TOKEN_CACHE_TEXTS = 4096  # recent texts whose token ids are kept (a chunk is counted when packed, encoded when sent)


class ItemRejected(Exception):
    """An item that cannot be narrated: ``reason`` is one line naming the field."""

    def __init__(self, reason: str, fingerprint: ItemFingerprint | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fingerprint = fingerprint


@dataclass(frozen=True)
class ItemSpec:
    """An item's validated settings, before its text is split."""

    item: Item
    language: str
    voice: VoicePrompt | None
    seed: int
    sampling: SamplingSet
    voice_mode: VoiceMode
    voice_reset_every: int | None
    fingerprint: ItemFingerprint


@dataclass(frozen=True)
class ItemPlan:
    """An item split into chunks, with the seed of each and the chunk whose tokens it continues.

    ``sources[i]`` is None when chunk ``i`` is voiced by the item's voice, else an
    earlier chunk's index. ``last_follower[s]`` is the last chunk that continues
    chunk ``s``: until it is sent, ``s``'s tokens must stay at hand.
    """

    spec: ItemSpec
    chunks: tuple[TextChunk, ...]
    seeds: tuple[int, ...]
    sources: tuple[int | None, ...]
    last_follower: Mapping[int, int]

    @property
    def item(self) -> Item:
        return self.spec.item

    @property
    def language(self) -> str:
        return self.spec.language

    @property
    def voice_name(self) -> str | None:
        return self.spec.voice.name if self.spec.voice else None

    def chunk_voice(self, index: int) -> str | None:
        """What chunk ``index`` is conditioned on, for its metadata: a voice name, ``chunk N`` or None."""
        source = self.sources[index]
        return self.voice_name if source is None else f"chunk {source}"

    def has_followers(self, index: int) -> bool:
        return index in self.last_follower

    @functools.cached_property
    def parts_id(self) -> str:
        """What names this item's parts: its fingerprint and a digest of its split. A fingerprint holds
        when a change of the text front end keeps the settings a fingerprint sees, while the chunks
        may differ; parts of another split are then never mixed into this one's audio."""
        split = "\x1e".join(f"{c.text}\x1f{c.break_after}" for c in self.chunks)
        return f"{self.spec.fingerprint.value}.{hashlib.sha256(split.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"


def history_sources(n_chunks: int, mode: VoiceMode, reset_every: int | None, has_voice: bool) -> list[int | None]:
    """For each chunk, the earlier chunk whose tokens it continues from (None: the item's voice).

    fixed: every chunk uses the item's voice; with no voice, chunk 0 picks a random
    voice and the rest reuse chunk 0's tokens. chained: each chunk continues the
    previous one; every ``reset_every`` chunks it goes back to the item's voice
    (chunk 0's tokens when the item has none).
    """
    item_voice = None if has_voice else 0
    sources: list[int | None] = [None]
    for index in range(1, n_chunks):
        if mode == "chained" and not (reset_every and index % reset_every == 0):
            sources.append(index - 1)
        else:
            sources.append(item_voice)
    return sources


def last_followers(sources: list[int | None]) -> dict[int, int]:
    """Each source chunk's last follower, in one pass over the sources."""
    last: dict[int, int] = {}
    for index, source in enumerate(sources):
        if source is not None:
            last[source] = index
    return last


@dataclass(frozen=True)
class TextEncoder:
    """A text's token ids as Bark's semantic stage reads them (the tokenizer's, without special
    tokens), and the id of ``[UNK]``, which the planner counts."""

    tokenizer: object

    def __call__(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    @property
    def unknown_id(self) -> int | None:
        return self.tokenizer.unk_token_id


def text_encoder(tokenizer) -> TextEncoder:
    """The encoder the job and ``plan`` both give the planner, so both make the same [UNK] checks."""
    return TextEncoder(tokenizer)


class Planner:
    """Turns items into plans with the job's settings, tokenizer and voices."""

    def __init__(
        self, config: JobConfig, settings: BarkSettings, encode: Callable[[str], list[int]], fingerprints: Fingerprinter
    ) -> None:
        self.config = config
        self.settings = settings
        self.fingerprints = fingerprints
        window = settings.semantic.max_input_semantic_length
        if config.text.max_tokens > window:
            raise ConfigError(f"text.max_tokens: {config.text.max_tokens} is over the model's text window of {window} tokens")
        # The job's voices by name, each loaded once; those the config names are loaded now, so a
        # bad one fails the job at its start (the per-language presets derived from them are Suno's).
        self._job_voices: dict[str, VoicePrompt] = {}
        for name in (config.voice, *config.voice_by_language.values()):
            if name is not None:
                self._job_voices[name] = load_voice(name, settings, config.limits)
        self._encode = functools.lru_cache(maxsize=TOKEN_CACHE_TEXTS)(lambda text: tuple(encode(text)))
        # A plain function (tests of other things) has no [UNK] id: nothing is then counted as unknown.
        self.unknown_id = encode.unknown_id if isinstance(encode, TextEncoder) else None
        self._unknown = functools.lru_cache(maxsize=UNKNOWN_CACHE_CHARS)(lambda g: self.unknown_id in encode(g))

    def token_ids(self, text: str) -> tuple[int, ...]:
        """Tokenizer ids, cached: the chunker counts a chunk's tokens and the stage then needs them."""
        return self._encode(text)

    def spec(self, item: Item | ItemError) -> ItemSpec:
        """The item's settings, validated; raises :class:`ItemRejected` naming the field at fault."""
        if isinstance(item, ItemError):
            raise ItemRejected(f"{item.field}: {item.message}")
        config = self.config
        max_chars = config.limits.max_item_chars
        if len(item.text) > max_chars:
            raise ItemRejected(f"text: {len(item.text)} characters, over limits.max_item_chars ({max_chars})")
        try:
            params = ItemParams.model_validate(item.params or {})
            sampling = _merged_sampling(config.sampling, params)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ItemRejected(f"params.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
        own_language = params.language or item.language
        try:
            if item.language is not None:
                check_language(item.language)  # a dataset's language column
        except ValueError as exc:
            raise ItemRejected(f"language: {exc}") from None
        language = own_language or self.language_of(item.text)
        voice_spec = params.voice or item.voice
        try:
            voice = self._item_voice(voice_spec) if voice_spec else self._job_voice(language)
        except VoiceError as exc:
            raise ItemRejected(f"voice: {exc}") from None
        seed = params.seed if params.seed is not None else item_seed(config.seed, item.id)
        mode = params.voice_mode or config.voice_mode
        reset_every = params.voice_reset_every or config.voice_reset_every
        fingerprint = self.fingerprints.item(
            text=item.text, voice=voice, seed=seed, sampling=sampling, voice_mode=mode, voice_reset_every=reset_every,
            language=own_language,
        )
        return ItemSpec(item, language, voice, seed, sampling, mode, reset_every, fingerprint)

    def language_of(self, text: str) -> str:
        """An item's language when it names none: the job's, or detected, or ``text.default_language``."""
        text_config = self.config.text
        if text_config.language != AUTO:
            return text_config.language
        return detect_language(text, text_config.default_language)

    def plan(self, spec: ItemSpec) -> ItemPlan:
        """Splits the item's text into chunks; raises :class:`ItemRejected` (with the fingerprint) if it cannot."""
        text_config = self.config.text
        spoken = self.speech(spec.item.text, spec.language)
        limit = text_config.max_unknown_share
        if spoken.unknown_share > limit:
            raise ItemRejected(
                f"text: {spoken.unknown} of its {spoken.counted} characters are unknown to the tokenizer "
                f"([UNK]: emoji, symbols), over text.max_unknown_share ({limit:g})",
                spec.fingerprint,
            )
        try:
            chunks = make_chunks(spoken.text, lambda t: len(self.token_ids(t)), text_config.budget(), spec.language)
        except ValueError as exc:
            raise ItemRejected(f"text: {exc}", spec.fingerprint) from None
        if not chunks:
            raise ItemRejected("text: empty after cleaning", spec.fingerprint)
        for chunk in chunks:
            self._check_unknown_tokens(chunk, spec)
        sources = history_sources(len(chunks), spec.voice_mode, spec.voice_reset_every, spec.voice is not None)
        return ItemPlan(
            spec=spec,
            chunks=tuple(chunks),
            seeds=tuple(chunk_seed(spec.seed, c.index) for c in chunks),
            sources=tuple(sources),
            last_follower=last_followers(sources),
        )

    def speech(self, text: str, language: str) -> SpeechText:
        """The item's text as Bark should read it (:func:`pipeline.speech.speech_text`), with this
        job's tokenizer deciding what is ``[UNK]``."""
        return speech_text(
            normalize_text(text), urls=self.config.text.urls, language=language, is_unknown=self._is_unknown
        )

    def _is_unknown(self, grapheme: str) -> bool:
        return self.unknown_id is not None and self._unknown(grapheme)

    def _check_unknown_tokens(self, chunk: TextChunk, spec: ItemSpec) -> None:
        """A chunk whose tokens are mostly ``[UNK]`` (words the tokenizer cannot spell out of its
        pieces, though each character is known) fails its item, as a mostly unknown text does."""
        if self.unknown_id is None:
            return
        ids = self.token_ids(chunk.text)
        unknown = ids.count(self.unknown_id)
        limit = self.config.text.max_unknown_share
        if ids and unknown / len(ids) > limit:
            snippet = chunk.text if len(chunk.text) <= SNIPPET_CHARS else chunk.text[:SNIPPET_CHARS] + "..."
            raise ItemRejected(
                f"text: chunk {chunk.index} ({snippet!r}) is {unknown} of {len(ids)} tokens [UNK], "
                f"over text.max_unknown_share ({limit:g})",
                spec.fingerprint,
            )

    def _job_voice(self, language: str) -> VoicePrompt | None:
        """The voice of an item with none of its own (:func:`voice_for_language`); None: a random voice."""
        config = self.config
        name = voice_for_language(config.voice, language, config.voice_by_language)
        if name is None:
            return None
        if name not in self._job_voices:
            self._job_voices[name] = load_voice(name, self.settings, config.limits)
        return self._job_voices[name]

    def _item_voice(self, spec: str) -> VoicePrompt:
        """An item's own voice: a preset or a file in ``voices_dir``, unless the job allows any path."""
        config = self.config
        return load_item_voice(
            spec, self.settings, config.limits, voices_dir=config.voices_dir, allow_paths=config.allow_voice_paths
        )


def _merged_sampling(job: SamplingSet, params: ItemParams) -> SamplingSet:
    """The job's sampling with the item's per-stage overrides on top."""
    if not params.sampling:
        return job
    merged = job.model_dump()
    for stage, overrides in params.sampling.items():
        merged[stage] = {**merged[stage], **overrides}
    return SamplingSet.model_validate(merged)
