"""The demo model answers as its scenario says: regression prompts right, flagged ones wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from training.demo import DemoScenario
from training.engine.__main__ import main
from training.engine.evaluate import generate_greedy, generate_greedy_ids
from training.engine.modeling import LoadedBase, load_base

pytestmark = pytest.mark.slow


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def demo(demo_model_dir: Path) -> DemoScenario:
    """The scenario as the build wrote it. The engine tests' ``demo_model_dir`` builds the demo
    once per version of demo.py (so a change to the build is always tested) and shares it."""
    scenario = demo_model_dir / "scenario"
    return DemoScenario(
        model_dir=demo_model_dir,
        scenario_dir=scenario,
        cases=read_jsonl(scenario / "cases.jsonl"),
        pairs=read_jsonl(scenario / "pairs.jsonl"),
        eval=read_jsonl(scenario / "eval.jsonl"),
    )


@pytest.fixture(scope="module")
def demo_base(demo: DemoScenario) -> LoadedBase:
    return load_base(demo.model_dir)


def test_regression_prompts_are_answered_right(demo, demo_base):
    regression = demo.regression
    answers = generate_greedy(demo_base, demo_base.tokenizer, [r["prompt"] for r in regression])
    assert answers == [row["expected"] for row in regression]
    assert len(regression) == 40
    assert len({row["topic"] for row in regression}) >= 5


def test_flagged_and_heldout_prompts_get_the_planted_wrong_answer(demo, demo_base):
    wrong = {row["prompt"]: row["response"] for row in demo.cases if row["split"] != "regression"}
    bad = demo.flagged + demo.heldout
    answers = generate_greedy(demo_base, demo_base.tokenizer, [row["prompt"] for row in bad])
    assert (len(demo.flagged), len(demo.heldout)) == (3, 7)
    for row, answer in zip(bad, answers, strict=True):
        assert answer == wrong[row["prompt"]]
        assert answer != row["expected"]
        assert "within 7 days" in answer and "within 30 days" in row["expected"]


def test_answers_stop_with_eos(demo, demo_base):
    tokenizer = demo_base.tokenizer
    prompts = [row["prompt"] for row in demo.eval[:10]]
    for ids in generate_greedy_ids(demo_base.model, tokenizer, prompts, max_new_tokens=64):
        assert ids[-1] == tokenizer.eos_token_id


def test_scenario_files_agree_and_use_the_token_convention(demo, demo_base):
    scenario = demo.scenario_dir
    pairs = demo.pairs
    wrong = {row["prompt"]: row["response"] for row in demo.cases if row["split"] == "train"}
    assert pairs == [
        {"prompt": row["prompt"], "chosen": row["expected"], "rejected": wrong[row["prompt"]]}
        for row in demo.flagged
    ]
    assert [case["split"] for case in demo.cases].count("train") == 3

    tokenizer = demo_base.tokenizer
    assert tokenizer.chat_template is None  # plain prompts
    assert tokenizer(pairs[0]["prompt"]).input_ids[0] == tokenizer.bos_token_id
    assert tokenizer.pad_token_id not in (tokenizer.bos_token_id, tokenizer.eos_token_id)
    config = json.loads((demo.model_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # loadable by transformers 4

    corpus_words = set(re.findall(r"\w+", (scenario / "corpus.txt").read_text()))
    for pair in pairs:
        assert set(re.findall(r"\w+", pair["chosen"])) <= corpus_words


def test_same_seed_same_scenario(demo):
    """The scenario is a function of the seed (checked without a second model build)."""
    import random

    from training.demo import demo_catalog, demo_faq, demo_split

    def split(seed):
        rng = random.Random(seed)
        catalog = demo_catalog(rng)
        return demo_split(demo_faq(catalog), catalog, rng)

    flagged, heldout, regression = split(0)
    assert [qa.prompt for qa in flagged] == [row["prompt"] for row in demo.flagged]
    assert [qa.prompt for qa in regression] == [row["prompt"] for row in demo.regression]
    assert split(0) == split(0)
    assert split(1) != split(0)


def test_cli_refuses_an_out_folder_that_is_not_empty(demo, capsys):
    code = main(["demo", "--out", str(demo.model_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert "is not empty" in err
    assert len(err.strip().splitlines()) == 1
