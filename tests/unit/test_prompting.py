"""Prompt-engineering baselines: document chunking, the passage index and its cache, prompt building
(zero-shot, few-shot, RAG) by value, config validation, and the eval stage with prompted models."""

from __future__ import annotations

import importlib.util
import json

import pytest

from affinage.config import load_config
from affinage.errors import ConfigError, DataError
from affinage.evaluation import retrieval
from affinage.evaluation.evaluate import EvalConfig, run_eval
from affinage.evaluation.prompting import Prompter, PromptingConfig
from affinage.testing import make_tiny_model

needs_wordllama = pytest.mark.skipif(
    importlib.util.find_spec("wordllama") is None, reason="the embedding model needs the 'rag' extra (wordllama)"
)


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _conv(user, assistant, **meta):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], **meta}


# Three documents on unrelated topics; the question below is answered only by the first.
PLANTED = {
    "printers.md": "# Printers\n\nThe colour printer on floor 2 needs your badge. Toner cartridges are in the "
                   "cupboard beside the printer; report a paper jam to the front desk.",
    "canteen.md": "# Canteen\n\nThe canteen serves lunch from noon to two. Vegetarian dishes and soups are "
                  "available every day, and the coffee machine takes coins.",
    "parking.md": "# Parking\n\nVisitors park in the north car park. Bicycles go in the shed near the "
                  "entrance; electric car chargers need a card from reception.",
}


@pytest.fixture
def planted_docs(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in PLANTED.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


# ----------------------------------------------------------------------------------------------
# Documents and chunks
# ----------------------------------------------------------------------------------------------


def test_markdown_sections_follow_headings_outside_code():
    text = (
        "intro line\n# Login\nkeys here\n## Locked account\n30 minutes\n```bash\n# not a heading\nssh x\n```\n"
        "# Storage\nquota\n### Deep\ndeep text\n"
    )
    sections = retrieval.markdown_sections(text)
    assert [t for t, _ in sections] == ["", "Login", "Login > Locked account", "Storage", "Storage > Deep"]
    assert "# not a heading" in sections[2][1]  # a comment inside a code fence stays in its section
    assert sections[2][1].startswith("30 minutes")


def test_split_text_packs_paragraphs_and_cuts_long_ones():
    paras = ["a" * 30, "b" * 30, "c" * 30]
    # 30 + 2 + 30 = 62 fits in 70; the third paragraph would make 94.
    assert retrieval.split_text("\n\n".join(paras), 70) == ["a" * 30 + "\n\n" + "b" * 30, "c" * 30]
    long = "First sentence here. Second sentence is here. " + "word " * 40
    pieces = retrieval.split_text(long, 50)
    assert all(len(p) <= 50 for p in pieces)
    assert " ".join(" ".join(pieces).split()) == " ".join(long.split())  # nothing lost, only cut


def test_documents_from_data_files_and_errors(tmp_path):
    rows = _write(tmp_path / "faq.jsonl", [{"text": "first row text"}, _conv("A question?", "An answer.")])
    sections = retrieval.read_documents([rows])
    assert sections[0] == (str(rows), "row 1", "first row text")
    assert sections[1][2] == "user: A question?\nassistant: An answer."
    with pytest.raises(ConfigError, match=r"config key 'documents\[1\]'.*matches no file"):
        retrieval.resolve_documents([str(rows), str(tmp_path / "missing*.md")])
    bad = _write(tmp_path / "bad.jsonl", [{"title": "no text field"}])
    with pytest.raises(DataError, match="bad.jsonl, row 1.*text field"):
        retrieval.read_documents([bad])


# ----------------------------------------------------------------------------------------------
# Retrieval and the index cache
# ----------------------------------------------------------------------------------------------


@needs_wordllama
def test_embeddings_are_unit_length_and_empty_text_is_zero():
    import numpy as np

    vectors = retrieval.embed(["toner cartridges for the printer", ""])
    assert vectors.shape == (2, 256)
    assert np.linalg.norm(vectors[0]) == pytest.approx(1.0, abs=1e-5)
    assert not np.any(vectors[1])  # no token: similar to nothing instead of NaN


def test_missing_extra_names_it(monkeypatch, planted_docs):
    monkeypatch.setitem(__import__("sys").modules, "wordllama", None)  # import wordllama -> ImportError
    retrieval._wordllama.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"pip install 'affinage\[rag\]'"):
            retrieval.build_index([str(planted_docs)], chunk_chars=400)
    finally:
        retrieval._wordllama.cache_clear()


def test_cosine_top_k_by_value():
    import numpy as np

    keys = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.6, 0.8]])
    # q = (0.8, 0.6): dot products 0.8, 0.96, 0.6, 0.96; the tie between rows 1 and 3 goes to row 1.
    [hits] = retrieval.cosine_top_k(np.array([[0.8, 0.6]]), keys, 3)
    assert [i for i, _ in hits] == [1, 3, 0]
    assert [s for _, s in hits] == pytest.approx([0.96, 0.96, 0.8])


@needs_wordllama
def test_rag_prompt_puts_the_planted_document_first(planted_docs, tmp_path):
    cfg = PromptingConfig(mode="rag", documents=[str(planted_docs)], top_k=3, index_dir=str(tmp_path / "idx"))
    prompter = Prompter(cfg)
    question = "Where are the toner cartridges for the colour printer?"
    [built] = prompter.build_all([[{"role": "user", "content": question}]], default_system="Be brief.")
    system, user = built.messages
    assert user == {"role": "user", "content": question}
    assert system["role"] == "system" and system["content"].startswith("Be brief.\n\n" + cfg.instruction)
    # Ranked by similarity: the printer page first; every passage appears once, numbered in rank order.
    assert built.retrieved[0].startswith("printers.md (Printers)")
    scores = [float(r.rsplit(" ", 1)[1]) for r in built.retrieved]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    body = system["content"]
    assert body.index("[1] printers.md") < body.index("[2] ") < body.index("[3] ")
    assert "Toner cartridges are in the cupboard" in body.split("[2] ")[0]

    # Placement in the user turn: the passages, then the question; an earlier turn is left alone.
    user_cfg = PromptingConfig(mode="rag", documents=[str(planted_docs)], top_k=1, placement="user",
                               index_dir=str(tmp_path / "idx"))
    history = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"},
               {"role": "user", "content": question}]
    [built] = Prompter(user_cfg).build_all([history])
    assert built.messages[:2] == history[:2]
    last = built.messages[-1]["content"]
    assert last.startswith(user_cfg.instruction) and last.endswith("\n\nQuestion: " + question)
    assert "[1] printers.md" in last and "canteen" not in last.lower()


@needs_wordllama
def test_index_is_cached_by_content(planted_docs, tmp_path, monkeypatch):
    import numpy as np

    cache = tmp_path / "idx"
    first = retrieval.build_index([str(planted_docs)], chunk_chars=400, cache_dir=cache)
    assert not first.cached and (first.path / "embeddings.npy").is_file() and (first.path / "passages.jsonl").is_file()
    assert len(first.passages) == 3

    def no_embedding(*args, **kwargs):
        raise AssertionError("the second build must read the cache, not embed again")

    monkeypatch.setattr(retrieval, "embed", no_embedding)
    second = retrieval.build_index([str(planted_docs)], chunk_chars=400, cache_dir=cache)
    assert second.cached and second.path == first.path
    assert np.array_equal(second.embeddings, first.embeddings) and second.passages == first.passages
    monkeypatch.undo()

    # A changed document or another chunk size is another index.
    (planted_docs / "parking.md").write_text("# Parking\n\nThe car park is closed.", encoding="utf-8")
    third = retrieval.build_index([str(planted_docs)], chunk_chars=400, cache_dir=cache)
    assert not third.cached and third.path != first.path
    assert retrieval.build_index([str(planted_docs)], chunk_chars=300, cache_dir=cache).path not in (first.path, third.path)


# ----------------------------------------------------------------------------------------------
# Few-shot
# ----------------------------------------------------------------------------------------------

POOL = [
    _conv("How do I replace the printer toner?", "Take a cartridge from the cupboard by the printer."),
    _conv("When does the canteen open for lunch?", "From noon to two."),
    _conv("Where can visitors park their car?", "In the north car park."),
    {"messages": [{"role": "system", "content": "ignored"}, {"role": "user", "content": "Is there soup today?"},
                  {"role": "assistant", "content": "Yes, every day."}, {"role": "user", "content": "And coffee?"},
                  {"role": "assistant", "content": "The machine takes coins."}]},
    _conv("Can I charge my electric car?", "Ask reception for a charger card."),
]


def test_few_shot_fixed_shots_are_whole_conversations_in_order(tmp_path):
    pool = _write(tmp_path / "pool.jsonl", POOL)
    cfg = PromptingConfig(mode="few_shot", examples=str(pool), shots=3, seed=1)
    question = [{"role": "user", "content": "Where is the bicycle shed?"}]
    a, b = Prompter(cfg).build_all([question, [{"role": "user", "content": "Another question"}]])
    assert a.shots == b.shots and len(a.shots) == 3  # the same draw for every question
    conversations = [[m for m in row["messages"] if m["role"] != "system"] for row in POOL]
    expected = [m for i in a.shots for m in conversations[i]] + question  # each shot intact, in the drawn order
    assert a.messages == expected
    draws = {tuple(Prompter(PromptingConfig(mode="few_shot", examples=str(pool), shots=3, seed=s)).build_all([question])[0].shots)
             for s in range(6)}
    assert len(draws) > 1  # the seed changes the draw
    # A system prompt goes first; the shots never include the question itself.
    cfg_sys = PromptingConfig(mode="few_shot", examples=str(pool), shots=5, system_prompt="You answer staff questions.")
    [built] = Prompter(cfg_sys).build_all([[{"role": "user", "content": "when does the canteen open for lunch"}]])
    assert built.messages[0] == {"role": "system", "content": "You answer staff questions."}
    assert 1 not in built.shots and len(built.shots) == 4


@needs_wordllama
def test_few_shot_similar_puts_the_closest_example_last(tmp_path):
    pool = _write(tmp_path / "pool.jsonl", POOL)
    cfg = PromptingConfig(mode="few_shot", examples=str(pool), shots=2, selection="similar")
    question = {"role": "user", "content": "My printer toner is empty, how do I replace it?"}
    [built] = Prompter(cfg).build_all([[question]])
    assert built.shots[-1] == 0  # the printer example, right before the question
    assert built.messages[-3:] == [*POOL[0]["messages"], question]


def test_multiple_choice_contexts_match_the_bare_question(tiny_model, tiny_tokenizer):
    from affinage.evaluation import metrics as M

    items = [M.MultipleChoiceItem("Lock time?", ["30 minutes", "1 day"], 0)]
    bare = M.multiple_choice_loglikelihoods(tiny_model, tiny_tokenizer, items, system_prompt="Sys.")
    as_context = M.multiple_choice_loglikelihoods(
        tiny_model, tiny_tokenizer, items,
        contexts=[[{"role": "system", "content": "Sys."}, {"role": "user", "content": "Lock time?"}]],
    )
    assert as_context[0] == pytest.approx(bare[0], abs=1e-6)
    other = M.multiple_choice_loglikelihoods(
        tiny_model, tiny_tokenizer, items, contexts=[[{"role": "user", "content": "A longer context. Lock time?"}]]
    )
    assert other[0] != pytest.approx(bare[0], abs=1e-6)


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


def test_prompting_config_validation(tmp_path, planted_docs):
    pool = _write(tmp_path / "pool.jsonl", POOL)
    sets = f"sets=[{{path: {pool}}}]"

    def load(models, *extra):
        return load_config(EvalConfig, None, [f"models={models}", sets, *extra])

    with pytest.raises(ConfigError, match=r"models\[0\].prompting.examples' is needed by mode few_shot"):
        load("[{name: m, prompting: {mode: few_shot}}]")
    with pytest.raises(ConfigError, match=r"prompting.examples' .*missing.jsonl does not exist"):
        load(f"[{{name: m, prompting: {{mode: few_shot, examples: {tmp_path / 'missing.jsonl'}}}}}]")
    with pytest.raises(ConfigError, match=r"prompting.examples' is only read when .*mode is few_shot"):
        load(f"[{{name: m, prompting: {{examples: {pool}}}}}]")
    with pytest.raises(ConfigError, match=r"prompting.documents' are only read when .*mode is rag"):
        load(f"[{{name: m, prompting: {{mode: few_shot, examples: {pool}, documents: [{planted_docs}]}}}}]")
    with pytest.raises(ConfigError, match=r"prompting.documents' is needed by mode rag"):
        load("[{name: m, prompting: {mode: rag}}]")
    with pytest.raises(ConfigError, match=r"prompting.documents\[0\]' .*matches no file"):
        load(f"[{{name: m, prompting: {{mode: rag, documents: [{tmp_path / 'nope'}]}}}}]")
    with pytest.raises(ConfigError, match=r"prompting.top_k' must be at least 1"):
        load(f"[{{name: m, prompting: {{mode: rag, documents: [{planted_docs}], top_k: 0}}}}]")
    with pytest.raises(ConfigError, match=r"unknown config key 'models\[0\].prompting.topk'. Did you mean 'models\[0\].prompting.top_k'"):
        load("[{name: m, prompting: {mode: rag, topk: 3}}]")
    with pytest.raises(ConfigError, match=r"'models\[0\].prompting.mode' must be one of 'zero_shot', 'few_shot', 'rag'"):
        load("[{name: m, prompting: {mode: fewshot}}]")
    with pytest.raises(ConfigError, match=r"template: plain"):
        load_config(EvalConfig, None, ["models=[{name: m, prompting: {system_prompt: hi}}]",
                                       f"sets=[{{path: {pool}, template: plain}}]"])
    # One checkpoint listed once per way of prompting it gets distinct default labels.
    cfg = load(f"[{{name: runs/x/final}}, {{name: runs/x/final, prompting: {{mode: few_shot, examples: {pool}}}}},"
               f" {{name: runs/x/final, prompting: {{mode: rag, documents: [{planted_docs}]}}}}]")
    assert cfg.labels() == ["x", "x-few-shot", "x-rag"]


# ----------------------------------------------------------------------------------------------
# The eval stage
# ----------------------------------------------------------------------------------------------


@needs_wordllama
def test_run_eval_with_prompted_baselines(tmp_path, tiny_tokenizer, planted_docs):
    """The same tiny model three times: zero-shot, few-shot and RAG.

    The weights are the same, so the rows differ only by their prompts. Each example's reference NLL
    in ``predictions.jsonl`` must be the NLL of the reference *after the prompt the Prompter builds*
    (recomputed here, one unbatched forward pass per example), which shows that the built prompt is
    what the stage scored, for every mode.
    """
    from affinage.data.formats import Example
    from affinage.data.tokenize import tokenize_example
    from affinage.evaluation.metrics import sequence_logprobs

    model = make_tiny_model(tiny_tokenizer)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    pool = _write(tmp_path / "pool.jsonl", POOL)
    rows = [
        _conv("Where are the toner cartridges?", "In the cupboard beside the printer.", language="en"),
        _conv("When is lunch served?", "From noon to two.", language="fr"),
    ]
    qa = _write(tmp_path / "qa.jsonl", rows)
    mc = _write(tmp_path / "mc.jsonl", [{"question": "Where do visitors park?", "choices": ["north", "south"], "answer": 0}])
    out = tmp_path / "eval"
    prompting = {
        "fewshot": PromptingConfig(mode="few_shot", examples=str(pool), shots=2),
        "rag": PromptingConfig(mode="rag", documents=[str(planted_docs)], top_k=2),
    }
    cfg = load_config(EvalConfig, None, [
        f"models=[{{name: {model_dir}, label: base}},"
        f" {{name: {model_dir}, label: fewshot, prompting: {{mode: few_shot, examples: {pool}, shots: 2}}}},"
        f" {{name: {model_dir}, label: rag, prompting: {{mode: rag, documents: [{planted_docs}], top_k: 2}}}}]",
        f"sets=[{{path: {qa}, name: qa}}, {{path: {mc}, name: mc}}]",
        "generation.max_new_tokens=3", "dtype=float32", "batch_size=1", f"output_dir={out}", "progress=false",
    ])
    result = run_eval(cfg)
    assert {"fewshot.mc.accuracy", "rag.mc.accuracy", "rag.qa.rouge_l", "rag.qa.perplexity"} <= set(result.metrics)

    saved = json.loads((out / "results.json").read_text())
    described = {e["label"]: e.get("prompting") for e in saved["models"]}
    assert described["base"] is None and described["rag"].startswith("RAG: top 2 passages")
    assert described["fewshot"].startswith("few-shot: 2 examples")
    assert set(saved["sets"]["qa"]["results"]["rag"]["by_language"]) == {"en", "fr"}
    assert (out / "rag_index").is_dir()

    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines() if '"qa"' in line]
    assert preds[0]["models"]["rag"]["retrieved"][0].startswith("printers.md")
    assert len(preds[0]["models"]["fewshot"]["shots"]) == 2 and "retrieved" not in preds[0]["models"]["base"]
    prompts = [r["messages"][:-1] for r in rows]
    built = {"base": prompts}
    for label, pcfg in prompting.items():
        built[label] = [b.messages for b in Prompter(pcfg, output_dir=out).build_all(prompts)]
    expected = {}
    for label, messages in built.items():
        for i, (prompt, row) in enumerate(zip(messages, rows, strict=True)):
            tok = tokenize_example(tiny_tokenizer, Example(messages=[*prompt, row["messages"][-1]]), max_length=1024,
                                   first_trained_message=len(prompt))
            [(logp, n)] = sequence_logprobs(model, [(tok.input_ids, tok.labels)], pad_token_id=0)
            expected[label, i] = -logp
            # Only the reference is scored: as many tokens whatever the prompt (few-shot answers excluded).
            assert preds[i]["models"][label]["tokens"] == n == preds[i]["models"]["base"]["tokens"]
            assert preds[i]["models"][label]["nll"] == pytest.approx(-logp, abs=2e-5), (label, i)
    # The prompts change the numbers by more than the tolerance above, so a stage that scored the
    # bare question for every model would fail this test.
    for i in range(len(rows)):
        assert abs(expected["rag", i] - expected["base", i]) > 2e-4
        assert abs(expected["fewshot", i] - expected["base", i]) > 2e-4
