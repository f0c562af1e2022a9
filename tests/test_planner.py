"""The planner alone (no Ray, no storage): an item in, its chunks, seeds and voice sources out."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from pipeline.config import load_config
from pipeline.fingerprint import Fingerprinter
from pipeline.ledger import Ledger
from pipeline.object_store import LocalStore
from pipeline.planner import ItemRejected, Planner, history_sources, last_followers
from pipeline.progress import Progress
from pipeline.seeds import chunk_seed, item_seed
from pipeline.sources import Item, ItemError
from pipeline.storage import item_key
from pipeline.writer import part_key
from tests.conftest import REPO
from workers.checkpoints import load_settings_for, load_tokenizer

TEXT = "The keeper climbed the stairs. The lamp was cold. " * 12


@pytest.fixture(scope="module")
def planner(tiny_model_dir, tmp_path_factory):
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"]["source"] = str(tiny_model_dir)
    raw["text"] = {"max_chars": 60, "max_tokens": 40}
    path = tmp_path_factory.mktemp("planner") / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    tokenizer = load_tokenizer(config.model)
    return Planner(
        config,
        load_settings_for(config.model),
        lambda text: tokenizer.encode(text, add_special_tokens=False),
        Fingerprinter(config, tiny_model_dir),
    )


def test_a_plan_has_every_chunk_with_its_seed_tokens_and_source(planner):
    spec = planner.spec(Item("book/1", TEXT, params={"voice_mode": "chained", "voice_reset_every": 3}))
    plan = planner.plan(spec)
    n = len(plan.chunks)
    assert n > 6
    assert all(len(c.text) <= 60 and 0 < c.n_tokens <= 40 for c in plan.chunks)
    assert " ".join(c.text for c in plan.chunks).split() == TEXT.split()  # nothing lost, nothing cut
    assert spec.seed == item_seed(0, "book/1")
    assert plan.seeds == tuple(chunk_seed(spec.seed, i) for i in range(n))
    assert plan.sources == tuple(history_sources(n, "chained", 3, has_voice=True))
    assert [plan.chunk_voice(i) for i in range(4)] == ["v2/en_speaker_6", "chunk 0", "chunk 1", "v2/en_speaker_6"]
    assert plan.last_follower == {i: i + 1 for i in range(n - 1) if (i + 1) % 3}
    ids = planner.token_ids(plan.chunks[0].text)
    assert len(ids) == plan.chunks[0].n_tokens and planner.token_ids(plan.chunks[0].text) is ids  # counted once, reused


def test_followers_are_computed_once_per_plan():
    sources = history_sources(6, "fixed", None, has_voice=False)  # a random voice: chunk 0's tokens voice the rest
    assert sources == [None, 0, 0, 0, 0, 0]
    assert last_followers(sources) == {0: 5}
    assert last_followers(history_sources(5, "chained", 2, has_voice=True)) == {0: 1, 2: 3}
    assert last_followers(history_sources(3, "fixed", None, has_voice=True)) == {}


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (ItemError("bad", "text", "missing"), "text: missing"),
        (Item("p", "Hi.", params={"seed": -1}), "params.seed: Input should be greater than or equal to 0"),
        (Item("s", "Hi.", params={"sampling": {"semantic": {"temperature": 1e-300}}}), "params.semantic.temperature:"),
        (Item("v", "Hi.", voice="v2/xx_speaker_404"), "voice: "),
        (Item("big", "x" * 1_000_001), "text: 1000001 characters, over limits.max_item_chars"),
    ],
)
def test_a_bad_item_is_rejected_with_its_field(planner, item, reason):
    with pytest.raises(ItemRejected) as rejected:
        planner.spec(item)
    assert rejected.value.reason.startswith(reason) and "\n" not in rejected.value.reason


def test_text_with_nothing_to_say_is_rejected_after_the_fingerprint(planner):
    spec = planner.spec(Item("empty", "\u200b"))
    with pytest.raises(ItemRejected) as rejected:
        planner.plan(spec)
    assert rejected.value.reason == "text: empty after cleaning"
    assert rejected.value.fingerprint == spec.fingerprint  # recorded, so an unchanged rerun does not retry it


def test_the_plan_of_a_changed_item_has_another_fingerprint(planner):
    one = planner.spec(Item("a", TEXT))
    assert planner.spec(Item("a", TEXT)).fingerprint == one.fingerprint
    assert planner.spec(Item("a", TEXT + " More.")).fingerprint != one.fingerprint
    assert planner.spec(Item("a", TEXT, params={"seed": 7})).fingerprint != one.fingerprint


def test_parts_are_named_by_the_split_as_well_as_the_fingerprint(planner, tmp_path):
    """Two splits of one item under one fingerprint (a text front end changed, its settings not) never
    share parts: a resume finds only the parts of the split it plans, and the item's others go once it is done."""
    plan = planner.plan(planner.spec(Item("book/1", TEXT)))
    other = dataclasses.replace(plan, chunks=(dataclasses.replace(plan.chunks[0], text="The keeper."), *plan.chunks[1:]))
    assert other.spec.fingerprint == plan.spec.fingerprint and other.parts_id != plan.parts_id
    assert planner.plan(planner.spec(Item("book/1", TEXT))).parts_id == plan.parts_id  # the same split, the same name

    store = LocalStore(tmp_path)
    key = item_key("book/1")
    for index in (0, 1):
        store.put_bytes(part_key(key, other.parts_id, index), b"a part of the other split")
    ledger = Ledger(planner.config, store, "run", progress=Progress(quiet=True))
    try:
        assert ledger.finished_chunks("book/1", other.parts_id, len(plan.chunks)) == {0, 1}
        assert ledger.finished_chunks("book/1", plan.parts_id, len(plan.chunks)) == set()
    finally:
        ledger.close()
