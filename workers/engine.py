"""One decode engine for Bark's two GPT stages.

The roles follow vLLM's v1 engine:

- the slot cache (:class:`workers.slots.SlotCache`) hands out and takes back rows
  of one preallocated KV cache;
- each chunk in a slot has a :class:`Row` on the host and its decoding state in
  :class:`workers.slots.SlotState` on the device;
- the sampler (:mod:`workers.sampler`) draws for all rows at once;
- a :class:`StagePolicy` holds what differs between the stages: the semantic
  stage's prompt layout and EOS, the coarse stage's window prompt, its
  alternating codebooks and its re-prefill every ``sliding_window_len`` tokens;
- :meth:`GptEngine.step` is three named calls: ``_schedule`` (which rows start
  a window), ``_execute`` (their prefills, then one fixed-shape decode step over
  every slot) and ``_update`` (one device-to-host copy of the sampled tokens,
  from which finished rows and window ends are found with array operations).

The decode step is one function of fixed shapes over all slots: the model's
forward, the sampling and the state update. ``decode_compile`` compiles it
(``torch_compile``) or captures it once as a CUDA graph and replays it
(``cuda_graphs``). Its cost does not depend on how many slots are busy.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch

from workers.config import AttentionImpl, DecodeCompile
from workers.gpt import decode, prefill
from workers.sampler import BAD_ROW_ERROR, BAD_TOKEN, sample, seed_keys
from workers.slots import SlotCache, SlotState

NO_LIMIT = np.iinfo(np.int64).max // 2  # a window that never ends


@dataclass(frozen=True)
class Admission:
    """One chunk handed to an engine: who waits for it, its request, its input tokens."""

    handle: object
    request: object
    upstream: np.ndarray | None = None


@dataclass(frozen=True)
class Finished:
    """One chunk leaving an engine: its tokens, or why it has none."""

    handle: object
    tokens: np.ndarray | None
    seconds: float
    error: str | None = None


class Engine(Protocol):
    """What a stage actor's serving loop drives: every stage's engine has this shape."""

    @property
    def active(self) -> int:
        """Chunks inside the engine."""

    def room(self) -> int:
        """Chunks it can take now."""

    def admit(self, admissions: Sequence[Admission]) -> list[Finished]:
        """Takes chunks in; returns those done at once."""

    def step(self) -> list[Finished]:
        """Advances the chunks inside; returns those that finished."""


def run_to_completion(engine: Engine, admissions: Sequence[Admission]) -> list[Finished]:
    """Every chunk through ``engine``, admitted as it has room; results in the given order.
    For tests and benchmarks: the actors drive ``admit`` and ``step`` themselves."""
    waiting = [Admission(i, a.request, a.upstream) for i, a in enumerate(admissions)]
    results: dict[int, Finished] = {}
    while waiting or engine.active:
        room = engine.room()
        take, waiting = waiting[:room], waiting[room:]
        done = engine.admit(take) if take else []
        if engine.active:
            done += engine.step()
        results.update((f.handle, f) for f in done)
    return [replace(results[i], handle=a.handle) for i, a in enumerate(admissions)]


class BatchEngine:
    """An engine for the stages that are not autoregressive (fine, codec): it takes up to
    ``batch_size`` chunks while empty, and one ``step`` runs them all to the end."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self._batch: list[Admission] = []

    @property
    def active(self) -> int:
        return len(self._batch)

    def room(self) -> int:
        return 0 if self._batch else self.batch_size

    def admit(self, admissions: Sequence[Admission]) -> list[Finished]:
        self._batch.extend(admissions)
        return []

    def step(self) -> list[Finished]:
        batch, self._batch = self._batch, []
        return self.compute(batch)

    def compute(self, batch: list[Admission]) -> list[Finished]:
        raise NotImplementedError


@dataclass(frozen=True)
class RowPlan:
    """What a stage policy makes of one chunk before it takes a slot."""

    seed: int
    temperature: float
    top_k: int | None
    top_p: float | None
    limit: int  # the most tokens this chunk generates
    context: object  # the policy's own material for prompts and the result
    min_eos_p: float | None = None
    allow_eos: bool = False

    @classmethod
    def for_request(cls, request, *, limit: int, context: object, **eos) -> RowPlan:
        """A plan with the request's seed and sampling (temperature, top-k, top-p)."""
        s = request.sampling
        return cls(seed=request.seed, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, limit=limit, context=context, **eos)


@dataclass(frozen=True)
class Row:
    """One chunk in a slot, as the host sees it (its counters are the engine's per-slot arrays)."""

    handle: object
    slot: int
    plan: RowPlan


class StagePolicy(Protocol):
    """The stage-specific parts of a GPT stage, plugged into :class:`GptEngine`."""

    vocab_width: int  # width of the vocabulary slice a token is drawn from
    eos_index: int | None  # EOS's index in that slice (None: the stage has no EOS)
    eos_token: int  # the token id that reports a stop on EOS
    window: int | None  # tokens generated between two prefills (None: only the first)
    max_tokens: int  # the most tokens any chunk can generate

    def plan(self, request, upstream: np.ndarray | None) -> RowPlan | np.ndarray:
        """The chunk's plan, or its result at once when there is nothing to generate."""

    def prompt_length(self, context, generated: np.ndarray) -> int:
        """Positions of the prompt the chunk's next window starts from."""

    def embed_prompts(self, model, contexts: Sequence, generated: Sequence[np.ndarray], device) -> torch.Tensor:
        """Embeddings (rows, length, hidden) of equal-length prompts, without positions."""

    def sampled_logits(self, logits: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """The slice (rows, vocab_width) of the logits (rows, vocab) a token is drawn from."""

    def token_ids(self, index: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Token ids of the drawn slice indices (rows,)."""

    def result(self, context, generated: np.ndarray) -> np.ndarray:
        """The chunk's output from its generated tokens."""


class GptEngine:
    """Continuous batching over a slot cache: a chunk takes a free slot, is prefilled,
    decodes one token per step beside every other chunk, and leaves as soon as it is
    done; a waiting chunk takes its slot before the next step."""

    def __init__(
        self,
        model,
        policy: StagePolicy,
        slots: int,
        attention: AttentionImpl = "sdpa",
        decode_compile: DecodeCompile = "off",
        *,
        continuous: bool = True,
    ) -> None:
        self.model, self.policy, self.attention = model, policy, attention
        self.continuous = continuous
        self.device = model.lm_head.weight.device
        self.cache = SlotCache(model, slots)
        self.state = SlotState.empty(slots, self.device)
        self.rows: dict[int, Row] = {}
        self._to_prefill: list[int] = []
        # Per-slot host arrays, updated for all rows at once: tokens generated so far, the
        # most a chunk may generate, the count at which its window ends, its compute time.
        self._counts = np.zeros(slots, dtype=np.int64)
        self._limits = np.zeros(slots, dtype=np.int64)
        self._window_ends = np.zeros(slots, dtype=np.int64)
        self._seconds = np.zeros(slots)
        self._generated = np.zeros((slots, policy.max_tokens), dtype=np.int64)
        self._decoding = np.zeros(slots, dtype=bool)  # as last written to state.decoding
        # (1, vocab_width): where EOS sits in the sampled slice, for rows that may not stop.
        self._eos_column = None
        if policy.eos_index is not None:
            self._eos_column = (torch.arange(policy.vocab_width, device=self.device) == policy.eos_index)[None]
        self._decode = self._build_decode(decode_compile)

    # ------------------------------------------------------------------ admission

    @property
    def active(self) -> int:
        return len(self.rows)

    def room(self) -> int:
        """Chunks that can be admitted now: free slots (a static batch: only into an empty engine)."""
        if not self.continuous and self.rows:
            return 0
        return self.cache.free

    def admit(self, admissions: Sequence[Admission]) -> list[Finished]:
        """Takes chunks into free slots; each is prefilled by the next ``step``.

        Returns the chunks that are done at once (nothing to generate) or cannot start.
        """
        finished, placed = [], []
        for admission in admissions:
            try:
                plan = self.policy.plan(admission.request, admission.upstream)
            except ValueError as exc:  # a malformed input fails its chunk alone
                finished.append(Finished(admission.handle, None, 0.0, f"{type(exc).__name__}: {exc}"))
                continue
            if isinstance(plan, np.ndarray):
                finished.append(Finished(admission.handle, plan, 0.0))
                continue
            if plan.limit > self._generated.shape[1]:  # a longer chunk than any so far
                self._generated = np.pad(self._generated, ((0, 0), (0, plan.limit - self._generated.shape[1])))
            slot = self.cache.allocate()
            self.rows[slot] = Row(admission.handle, slot, plan)
            self._counts[slot], self._limits[slot], self._seconds[slot] = 0, plan.limit, 0.0
            self._to_prefill.append(slot)
            placed.append(slot)
        if placed:
            self._write_plans(placed)
        return finished

    def _write_plans(self, slots: list[int]) -> None:
        """One copy per state field for the admitted rows' seeds and sampling settings."""
        plans = [self.rows[s].plan for s in slots]
        width = self.policy.vocab_width
        self.state.write(
            torch.tensor(slots, device=self.device),
            key=seed_keys(torch.tensor([p.seed for p in plans])),
            step=torch.zeros(len(plans), dtype=torch.long),
            temperature=torch.tensor([p.temperature for p in plans]),
            top_k=torch.tensor([p.top_k or width for p in plans]),
            top_p=torch.tensor([torch.inf if p.top_p is None else p.top_p for p in plans]),
            min_eos_p=torch.tensor([torch.inf if p.min_eos_p is None else p.min_eos_p for p in plans]),
            allow_eos=torch.tensor([p.allow_eos for p in plans]),
        )

    # ------------------------------------------------------------------ the step

    @torch.inference_mode()
    def step(self) -> list[Finished]:
        """Prefills the rows that start a window, one decode step for the others; returns
        the chunks that finished."""
        started = time.perf_counter()
        groups = self._schedule()
        self._execute(groups)
        return self._update(groups, time.perf_counter() - started)

    def _schedule(self) -> dict[int, list[int]]:
        """Rows starting a window, grouped by prompt length (equal lengths prefill together,
        unpadded, so no row's arithmetic depends on another's); the rest decode."""
        groups: dict[int, list[int]] = defaultdict(list)
        for slot in self._to_prefill:
            row = self.rows[slot]
            groups[self.policy.prompt_length(row.plan.context, self._tokens(slot))].append(slot)
        self._to_prefill = []
        decoding = np.zeros_like(self._decoding)
        decoding[list(self.rows)] = True
        decoding[[slot for group in groups.values() for slot in group]] = False
        if not np.array_equal(decoding, self._decoding):
            self.state.decoding.copy_(torch.from_numpy(decoding))
            self._decoding = decoding
        return groups

    def _execute(self, groups: dict[int, list[int]]) -> None:
        for length, slots in groups.items():
            self._prefill(length, slots)
        if self._decoding.any():
            self._decode()

    def _prefill(self, length: int, slots: list[int]) -> None:
        """A window's prompt into each slot of one group, and its first token."""
        policy, state = self.policy, self.state
        contexts = [self.rows[s].plan.context for s in slots]
        embeds = policy.embed_prompts(self.model, contexts, [self._tokens(s) for s in slots], self.device)
        index = torch.tensor(slots, device=self.device)
        logits = prefill(self.model, self.cache, index, embeds, self.attention)  # rows, vocab
        steps = state.step[index]
        tokens = self._choose(
            logits,
            steps,
            **{name: getattr(state, name)[index] for name in ("key", "temperature", "top_k", "top_p", "min_eos_p", "allow_eos")},
        )
        state.write(index, sampled=tokens, last_token=tokens.clamp(min=0), position=torch.full_like(tokens, length), step=steps + 1)
        self._window_ends[slots] = np.minimum(self._counts[slots] + (policy.window or NO_LIMIT), self._limits[slots])

    def _decode_step(self) -> None:
        """The fixed-shape step over every slot: forward, sample, update the state in place."""
        s = self.state
        logits = decode(self.model, self.cache, s.last_token, s.position, self.attention)  # slots, vocab
        tokens = self._choose(
            logits, s.step, key=s.key, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
            min_eos_p=s.min_eos_p, allow_eos=s.allow_eos,
        )
        moving = s.decoding
        s.sampled.copy_(torch.where(moving, tokens, s.sampled))
        s.last_token.copy_(torch.where(moving, tokens.clamp(min=0), s.last_token))  # a bad row's token is never fed
        s.position.add_(moving.long())
        s.step.add_(moving.long())

    def _choose(self, logits, steps, *, key, temperature, top_k, top_p, min_eos_p, allow_eos) -> torch.Tensor:
        """Token ids for rows of logits: a draw (or argmax) in the stage's slice, then the EOS rule.

        Suno's rule: stop when EOS is drawn, or when its probability in the very
        distribution drawn from (tempered, filtered) reaches ``min_eos_p``.
        """
        policy = self.policy
        sliced = policy.sampled_logits(logits, steps)  # rows, vocab_width
        if self._eos_column is not None:
            sliced = sliced.masked_fill(~allow_eos[:, None] & self._eos_column, -torch.inf)
        index, probs = sample(sliced, temperature=temperature, top_p=top_p, top_k=top_k, keys=key, steps=steps)
        tokens = policy.token_ids(index, steps)
        if policy.eos_index is not None:
            stop = (index == policy.eos_index) | (probs[:, policy.eos_index] >= min_eos_p)
            tokens = torch.where(stop, policy.eos_token, tokens)
        return torch.where(index == BAD_TOKEN, BAD_TOKEN, tokens)

    def _update(self, groups: dict[int, list[int]], seconds: float) -> list[Finished]:
        """Reads the step's tokens back (the step's one device-to-host copy) and settles each row."""
        with torch.profiler.record_function("engine.to_host"):
            tokens = self.state.sampled.to("cpu", copy=True).numpy()
        produced = self._decoding.copy()
        produced[[slot for group in groups.values() for slot in group]] = True
        bad = produced & (tokens == BAD_TOKEN)
        stop = produced & (tokens == self.policy.eos_token) if self.policy.eos_index is not None else np.zeros_like(bad)
        append = np.flatnonzero(produced & ~bad & ~stop)
        self._generated[append, self._counts[append]] = tokens[append]
        self._counts[append] += 1
        done = produced & (bad | stop | (self._counts >= self._limits))
        window_over = produced & ~done & (self._counts >= self._window_ends)
        self._seconds[produced] += seconds / max(1, int(produced.sum()))
        self._to_prefill.extend(int(slot) for slot in np.flatnonzero(window_over))
        return [self._leave(int(slot), bool(bad[slot])) for slot in np.flatnonzero(done)]

    def _leave(self, slot: int, bad: bool) -> Finished:
        row = self.rows.pop(slot)
        self.cache.release(slot)
        seconds = float(self._seconds[slot])
        if bad:
            return Finished(row.handle, None, seconds, BAD_ROW_ERROR)
        return Finished(row.handle, self.policy.result(row.plan.context, self._tokens(slot)), seconds)

    def _tokens(self, slot: int) -> np.ndarray:
        return self._generated[slot, : self._counts[slot]]

    # ------------------------------------------------------------------ compiling the step

    def _build_decode(self, how: DecodeCompile):
        """The decode step as called each time: eager, compiled, or a replayed CUDA graph."""
        if how == "off":
            return self._decode_step
        if how == "torch_compile":
            return torch.compile(self._decode_step, dynamic=False)
        if self.device.type != "cuda":
            raise ValueError("decode_compile: cuda_graphs needs a GPU; use torch_compile or off")
        return self._capture_graph()

    @torch.inference_mode()
    def _capture_graph(self):
        """Captures the step once, on idle slots (``decoding`` all false: the state keeps its
        values), after warm-up runs on a side stream as CUDA graph capture requires."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                self._decode_step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._decode_step()
        return graph.replay
