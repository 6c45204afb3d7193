"""Search QA: synthetic world, SQuAD metrics, Search-R1 file formats, bm25s retriever, SearchEnv."""

import json

import pytest

from agentrl.envs import check_env, make
from agentrl.envs.search import (
    BM25Retriever,
    Doc,
    SearchDataError,
    SearchEnv,
    exact_match,
    f1_score,
    format_information,
    generate_world,
    load_corpus,
    load_qa,
    normalize_answer,
    oracle_actions,
    parse_search_action,
)
from agentrl.envs.search.metrics import contains_answer
from agentrl.envs.search.realworld import countryinfo_world

SMALL = {"num_docs": 400, "num_train": 200, "num_test": 50}


@pytest.fixture(scope="module")
def world():
    return generate_world(7, **SMALL)


def small_env(split="test", **kw):
    return SearchEnv(split, seed=7, **SMALL, **kw)


def play(env, actions, task_id, seed=0):
    obs, info = env.reset(seed=seed, options={"task_id": task_id})
    out = [(obs, None, False, False, info)]
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out.append((obs, r, term, trunc, info))
        if term or trunc:
            break
    return out


# ----------------------------------------------------------------------------- world


def test_world_is_deterministic_and_sized(world):
    again = generate_world.__wrapped__(7, **SMALL)  # bypass the cache: a real second generation
    assert again.docs == world.docs and again.splits["test"] == world.splits["test"]
    other = generate_world.__wrapped__(8, **SMALL)
    assert [d.text for d in other.docs] != [d.text for d in world.docs]
    assert len(world.docs) == 400 and len({d.id for d in world.docs}) == 400
    assert len(world.splits["train"]) == 200 and len(world.splits["test"]) == 50
    assert {q.hops for q in world.splits["train"]} == {1, 2, 3}
    train_texts = {q.question for q in world.splits["train"]}
    assert not train_texts & {q.question for q in world.splits["test"]}


def test_decompositions_chain_and_are_stated_in_their_documents(world):
    docs = {d.id: d for d in world.docs}
    for q in world.splits["train"] + world.splits["test"]:
        assert len(q.decomposition) == q.hops and q.golden_answers == (q.decomposition[-1].answer,)
        for prev, hop in zip(q.decomposition, q.decomposition[1:]):
            assert prev.answer in hop.question  # each sub-question is about the previous answer
        for hop in q.decomposition:
            doc = docs[hop.doc_id]
            assert doc.title in hop.question and hop.answer in doc.text


def test_distractors_state_no_relations(world):
    distractors = [d for d in world.docs if d.id.startswith("x")]
    assert 0.1 * 400 <= len(distractors) <= 0.2 * 400
    assert all(" born in " not in d.text and "headquartered" not in d.text for d in distractors)


def test_world_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_docs must be >= 100"):
        generate_world(0, num_docs=10)
    with pytest.raises(ValueError, match="could not draw"):
        generate_world(0, num_docs=100, num_train=100_000, num_test=0)


def test_countryinfo_world_holds_real_facts():
    w = countryinfo_world(0)
    peru = next(d for d in w.docs if d.title == "Peru")
    assert "Its capital is Lima." in peru.text and "PEN" in peru.text
    q = next(
        q for q in w.splits["train"] + w.splits["test"] if q.question == "What is the capital of France?"
    )
    assert q.golden_answers == ("Paris",)
    two = [q for q in w.splits["train"] if q.hops == 2]
    assert two and all(q.decomposition[0].question.startswith("Which country has ") for q in two)


# ----------------------------------------------------------------------------- metrics


def test_squad_normalisation_and_scores_by_hand():
    assert normalize_answer("  The Eiffel-Tower! ") == "eiffeltower"
    assert normalize_answer("An apple, a pear") == "apple pear"
    assert exact_match("the Paris.", ["London", "paris"]) == 1.0
    assert exact_match("Paris France", ["Paris"]) == 0.0
    # pred {paris, france} vs gold {paris}: precision 1/2, recall 1 -> F1 = 2/3
    assert f1_score("Paris France", ["Paris"]) == pytest.approx(2 / 3)
    # best over golds: "new york city" vs "new york": p=2/3, r=1 -> 0.8
    assert f1_score("New York City", ["Boston", "New York"]) == pytest.approx(0.8)
    assert f1_score("the", ["a"]) == 0.0
    assert contains_answer("Doc 1(Title: X) born in Lima, Peru", ["lima"])
    assert not contains_answer("Doc 1 born in Limassol", ["Lima"])  # word boundaries


# ----------------------------------------------------------------------------- files


def test_export_and_load_round_trip_jsonl_and_parquet(world, tmp_path):
    for fmt in ("jsonl", "parquet"):
        paths = world.export(tmp_path / fmt, qa_format=fmt)
        assert load_corpus(paths["corpus"]) == list(world.docs)
        assert load_qa(paths["test"]) == list(world.splits["test"])
    first = json.loads((tmp_path / "jsonl" / "corpus.jsonl").read_text().splitlines()[0])
    assert set(first) == {"id", "contents"} and first["contents"].startswith(f'"{world.docs[0].title}"\n')


def test_loads_search_r1_style_files_written_by_hand(tmp_path):
    corpus = tmp_path / "wiki.jsonl"
    corpus.write_text(
        '{"id": "0", "contents": "\\"Lima\\"\\nLima is the capital of Peru."}\n'
        '{"id": "1", "contents": "no title line here"}\n'
    )
    qa = tmp_path / "nq.jsonl"
    qa.write_text(
        '{"question": "capital of peru?", "golden_answers": ["Lima", "Ciudad de los Reyes"]}\n'
        '{"id": "q7", "question": "who?", "golden_answers": "nobody"}\n'
    )
    docs = load_corpus(corpus)
    assert docs[0] == Doc("0", "Lima", "Lima is the capital of Peru.") and docs[1].title == ""
    qs = load_qa(qa)
    assert (
        qs[0].id == "0"
        and qs[0].golden_answers == ("Lima", "Ciudad de los Reyes")
        and qs[0].decomposition == ()
    )
    assert qs[1].id == "q7" and qs[1].golden_answers == ("nobody",)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"question": ["q?"], "golden_answers": [["a", "b"]]}), tmp_path / "hotpot.parquet"
    )
    assert load_qa(tmp_path / "hotpot.parquet")[0].golden_answers == ("a", "b")
    env = SearchEnv(corpus_path=str(corpus), qa_path=str(qa))
    assert list(env.task_ids()) == ["0", "q7"]
    steps = play(env, ["<search>capital of peru</search>", "<answer>ciudad de los reyes</answer>"], "0")
    assert steps[1][0] == "<information>Doc 1(Title: Lima) Lima is the capital of Peru.</information>"
    assert steps[1][4]["answer_in_results"] and steps[2][1] == 1.0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json\n", r"wiki.jsonl:1: not valid JSON"),
        ('{"id": "a", "contents": 5}\n', r"wiki.jsonl:1: 'contents' must be a string"),
        ('{"id": "a", "contents": "x"}\n{"id": "a", "contents": "y"}\n', r"wiki.jsonl:2: duplicate id 'a'"),
        ("\n", "the corpus is empty"),
    ],
)
def test_bad_corpus_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "wiki.jsonl"
    path.write_text(content)
    with pytest.raises(SearchDataError, match=message):
        load_corpus(path)


def test_bad_qa_files_name_the_problem(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "q", "golden_answers": []}\n')
    with pytest.raises(SearchDataError, match=r"qa.jsonl:1: 'golden_answers' must be a non-empty list"):
        load_qa(path)
    path.write_text('{"golden_answers": ["a"]}\n')
    with pytest.raises(SearchDataError, match="'question' must be a non-empty string"):
        load_qa(path)
    with pytest.raises(SearchDataError, match="QA files must be .jsonl or .parquet"):
        (tmp_path / "qa.csv").write_text("x")
        load_qa(tmp_path / "qa.csv")
    with pytest.raises(SearchDataError, match="QA file not found"):
        load_qa(tmp_path / "missing.jsonl")


# ----------------------------------------------------------------------------- retriever


def test_bm25_ranks_by_hand_and_breaks_ties_by_corpus_order():
    docs = [
        Doc("a", "Alpha", "red apple"),
        Doc("b", "Beta", "green pear"),
        Doc("c", "Gamma", "red apple"),
        Doc("d", "Delta", "apple apple apple orchard"),
    ]
    r = BM25Retriever(docs)
    hits = r.search("pear", 3)
    assert [h.doc.id for h in hits] == ["b"]  # only positive scores come back
    tied = r.search("red", 3)
    assert [h.doc.id for h in tied] == ["a", "c"] and tied[0].score == tied[1].score
    assert r.search("zebra unicorn", 3) == []
    with pytest.raises(ValueError, match="topk must be an int in 1..100"):
        r.search("red", 0)
    with pytest.raises(ValueError, match="at least one document"):
        BM25Retriever([])


def test_bm25_finds_the_document_of_every_sub_question(world):
    r = BM25Retriever(world.docs)
    hops = [h for q in world.splits["test"] for h in q.decomposition]
    found = sum(any(hit.doc.id == h.doc_id for hit in r.search(h.question, 3)) for h in hops)
    assert found == len(hops)


# ----------------------------------------------------------------------------- env


def test_parse_action_reads_the_first_element():
    assert parse_search_action("<think>x</think><search> a b </search><answer>c</answer>").content == "a b"
    assert parse_search_action("<answer>Lima</answer><search>q</search>").kind == "answer"
    assert parse_search_action("just text").kind == "invalid"
    assert parse_search_action("<search>   </search>").reason == "empty <search> element"
    assert "limit is 10" in parse_search_action("<search>" + "x" * 11 + "</search>", 10).reason


def test_check_env_train_and_test():
    check_env(small_env("train"), other=small_env("train"))
    check_env(small_env("test"), task_id="test-3")


def test_oracle_solves_every_test_question():
    env = small_env("test")
    for tid in env.task_ids():
        q = env.questions[tid]
        steps = play(env, oracle_actions(q), tid)
        assert steps[-1][2] and steps[-1][1] == 1.0 and steps[-1][4]["success"], q
        assert len(steps) - 1 == q.hops + 1
        assert steps[q.hops][4]["answer_in_results"]  # the last hop's search shows the final answer


def test_rewards_turn_rewards_and_truncation():
    env = small_env("test", max_turns=3)
    q = next(q for q in env.questions.values() if q.hops == 1)
    steps = play(
        env,
        [
            f"<search>{q.decomposition[0].question}</search>",
            "<search>zzzz qqqq</search>",
            "<answer>wrong guess</answer>",
        ],
        q.id,
    )
    gold = steps[1]
    assert (
        gold[4]["turn_reward"] == 1.0 and gold[4]["answer_in_results"] and gold[4]["tool_call"]
    )  # 0.5 executed + 0.5 found
    assert (
        gold[0].startswith("<information>Doc 1(Title: ") and q.decomposition[0].doc_id in gold[4]["doc_ids"]
    )
    assert steps[2][4]["turn_reward"] == 0.5 and steps[2][0] == "<information>No results.</information>"
    end = steps[3]
    assert (
        end[1] == 0.0
        and end[2]
        and not end[4]["success"]
        and end[4]["em"] == 0.0
        and end[4]["turn_reward"] == 0.0
    )
    steps = play(env, ["hello", "<search>x</search>", "<search>y</search>"], q.id)
    assert (
        steps[1][4]["valid"] is False
        and "invalid" in steps[1][0]
        and steps[1][4]["state_key"] == steps[0][4]["state_key"]
    )
    assert steps[-1][3] and not steps[-1][2] and len(steps) == 4  # truncated after max_turns
    with pytest.raises(RuntimeError, match="call reset"):
        env.step("<answer>x</answer>")
    env.reset(options={"task_id": q.id})
    partial = env.step(f"<answer>{q.golden_answers[0]} extra words</answer>")
    assert partial[1] == 0.0 and 0.0 < partial[4]["f1"] < 1.0


def test_env_errors_and_data_dir(world, tmp_path):
    with pytest.raises(ValueError, match="unknown task_id 'nope'"):
        small_env().reset(options={"task_id": "nope"})
    with pytest.raises(ValueError, match="world must be"):
        SearchEnv(world="mars")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        small_env("dev")
    with pytest.raises(ValueError, match="pass both corpus_path and qa_path"):
        SearchEnv(corpus_path="x.jsonl")
    world.export(tmp_path, qa_format="parquet")
    env = SearchEnv("test", data_dir=str(tmp_path))
    q = world.splits["test"][0]
    assert play(env, oracle_actions(q), q.id)[-1][1] == 1.0


def test_reset_info_task_is_the_question_and_step_prompts_keep_it_after_five_turns():
    """The question is only in the first observation; with history_k 2 that observation has left
    the prompt by turn 5, and the ``Task:`` line (info["task"]) still shows it."""
    from agentrl.agents import StepPrompt
    from agentrl.policies import Generation, SamplingParams
    from agentrl.rollout import rollout

    class SearchForever:
        """Test double for a model that searches every turn and answers on the sixth."""

        def __init__(self) -> None:
            self.calls = 0

        def prompt_ids(self, messages):
            return [0]

        def generate(self, prompts, params):
            self.calls += 1
            text = (
                "<action><answer>no idea</answer></action>"
                if self.calls == 6
                else f"<action><search>zzz {self.calls}</search></action>"
            )
            return [Generation([0], [1], [0.0], text, "stop") for _ in prompts]

    env = small_env("test", max_turns=6)
    _, info = env.reset(seed=0, options={"task_id": "test-3"})
    question = env.questions["test-3"].question
    assert info["task"] == info["question"] == question
    (group,) = rollout(
        SearchForever(),
        [env],
        ["test-3"],
        1,
        max_turns=6,
        params=SamplingParams(),
        builder=StepPrompt(history_k=2),
    )
    (t,) = group.trajectories
    assert len(t) == 6 and t.terminated
    fifth = t.steps[4].prompt[1]["content"]
    assert fifth.startswith(f"Task: {question}\n") and "You have taken 4 step(s) so far." in fifth
    assert (
        "[Observation 3]" in fifth and "[Observation 2]" not in fifth and f"Question: {question}" not in fifth
    )
    assert "<search>zzz 4</search>" in fifth


def test_make_and_countryinfo_env():
    env = make("search", split="test", world="countryinfo")
    obs, _ = env.reset(seed=0, options={"task_id": "test-0"})
    assert "Question: " in obs
    steps = play(env, oracle_actions(env.question), "test-0")
    assert steps[-1][1] == 1.0
    assert format_information([]) == "<information>No results.</information>"


@pytest.mark.slow
def test_generated_data_is_identical_across_processes():
    """Env workers in other processes (any PYTHONHASHSEED) must build the same world and tasks."""
    import os
    import subprocess
    import sys

    code = (
        "import hashlib, json; from agentrl.envs.search import generate_world; "
        "from agentrl.envs.search.realworld import countryinfo_world; from agentrl.envs.tools import make_tasks; "
        "w = generate_world(3, 400, 100, 20); c = countryinfo_world(1); "
        "s = json.dumps([[d.contents for d in w.docs], [q.question for q in w.splits['train']], "
        "[q.question for q in c.splits['test']], [t.prompt for t in make_tasks('store', 'train', 30)]]); "
        "print(hashlib.sha256(s.encode()).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(digests) == 1 and len(digests.pop().strip()) == 64
