import json

import pandas as pd
import pytest

from engine import CorpusError, CorpusSpec, load_corpus
from engine.corpus import corpus_notes, corpus_summary
from engine.corpus.builtin import split_of


def _sources(dataset):
    return set(dataset["source"])


@pytest.mark.parametrize("name, prefix", [("python-docs", "python-docs:"), ("python-code", "python-code:")])
def test_builtin_corpora_have_documents_of_natural_length(name, prefix):
    dataset = load_corpus(CorpusSpec.builtin(name, split="all"))
    assert dataset.column_names == ["text", "source", "row_id"]
    assert dataset["row_id"] == list(range(len(dataset)))
    assert all(source.startswith(prefix) for source in dataset["source"])
    lengths = sorted(len(text) for text in dataset["text"])
    assert len(dataset) > 150
    assert lengths[0] >= 16 and lengths[-1] > 20 * lengths[len(lengths) // 2]  # short and long documents


def test_python_docs_sections_start_at_their_heading():
    dataset = load_corpus(CorpusSpec.builtin("python-docs", split="all"))
    assert dataset[0]["text"].startswith('The "assert" statement')


def test_python_code_leaves_out_test_suites_and_the_docs_literal():
    sources = load_corpus(CorpusSpec.builtin("python-code", split="all"))["source"]
    folders = {part for source in sources for part in source.split(":", 1)[1].split("/")[:-1]}
    assert not folders & {"test", "tests", "idle_test", "pydoc_data", "site-packages"}
    assert "python-code:asyncio/base_events.py" in sources


def test_builtin_splits_are_disjoint_and_cover_everything():
    train = load_corpus(CorpusSpec.builtin("mixed", split="train"))
    test = load_corpus(CorpusSpec.builtin("mixed", split="test"))
    everything = load_corpus(CorpusSpec.builtin("mixed", split="all"))
    assert not _sources(train) & _sources(test)
    assert _sources(train) | _sources(test) == _sources(everything)
    assert 0.05 < len(test) / len(everything) < 0.2
    assert all(split_of(s) == "test" for s in test["source"])
    domains = {s.split(":")[0] for s in everything["source"]}
    assert domains == {"python-docs", "python-code"}


def test_max_documents_and_min_chars(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("tiny\n\n" + "\n\n".join(f"paragraph number {i} with enough text" for i in range(10)))
    dataset = load_corpus(CorpusSpec.file(path, max_documents=3))
    assert len(dataset) == 3 and dataset[0]["text"] == "paragraph number 0 with enough text"


def test_wikitext_raw_file_one_paragraph_per_line(wikitext_path):
    dataset = load_corpus(CorpusSpec.file(wikitext_path))
    assert len(dataset) > 2000
    assert dataset[0]["text"] == " = Robert Boulter ="
    assert dataset[1]["text"].startswith(" Robert Boulter is an English film")
    assert not any("\r" in text for text in dataset["text"][:100])


def test_txt_paragraphs_whole_file_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("First paragraph here.\nStill first.\n\n\nSecond paragraph here.\n")
    (tmp_path / "b.txt").write_text("Another file, one paragraph.")
    paragraphs = load_corpus(CorpusSpec.file(tmp_path / "a.txt"))
    assert paragraphs["text"] == ["First paragraph here.\nStill first.", "Second paragraph here."]
    whole = load_corpus(CorpusSpec.file(tmp_path / "a.txt", txt_mode="file"))
    assert len(whole) == 1 and whole[0]["source"] == "a.txt"
    folder = load_corpus(CorpusSpec.file(tmp_path, txt_mode="file"))
    assert folder["source"] == ["a.txt", "b.txt"]


def test_jsonl_text_and_chat_messages(tmp_path):
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"text": "The first record of text."}\n\n{"text": "The second record of text."}\n')
    assert load_corpus(CorpusSpec.file(plain))["text"] == ["The first record of text.", "The second record of text."]
    chats = tmp_path / "chats.jsonl"
    record = {"messages": [{"role": "user", "content": "What is int8?"}, {"role": "assistant", "content": "Eight-bit integers."}]}
    chats.write_text(json.dumps(record) + "\n")
    dataset = load_corpus(CorpusSpec.file(chats))
    assert dataset[0]["text"] == "user: What is int8?\n\nassistant: Eight-bit integers."
    assert json.loads(dataset[0]["messages"]) == record["messages"]
    assert ("Chat records", "1") in corpus_summary(dataset)


def test_json_list_and_wrapped_list_and_custom_field(tmp_path):
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"body": "Body text number one."}, {"body": "Body text number two."}]))
    assert len(load_corpus(CorpusSpec.file(listed, text_column="body"))) == 2
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": ["A plain string document.", "Another plain string one."]}))
    assert load_corpus(CorpusSpec.file(wrapped))["text"] == ["A plain string document.", "Another plain string one."]


def test_csv_and_parquet_with_chosen_or_detected_column(tmp_path):
    frame = pd.DataFrame({"id": [1, 2], "content": ["Some calibration text here.", "More calibration text here."]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    assert len(load_corpus(CorpusSpec.file(tmp_path / "t.csv"))) == 2  # the one text column is found
    assert load_corpus(CorpusSpec.file(tmp_path / "t.parquet", text_column="content"))[1]["source"] == "t.parquet row 1"


BAD_INPUTS = [
    ("empty.txt", b"", None, "is empty"),
    ("latin1.txt", "café au lait, the whole paragraph".encode("latin-1"), None, "not UTF-8"),
    ("blob.txt", b"\x00\x01\x02binary" * 10, None, "binary"),
    ("short.txt", b"a\n\nb\n\nc", None, "no usable documents"),
    ("bad.jsonl", b'{"text": "fine line of text"}\n{not json}\n', None, "line 2 is not valid JSON"),
    ("fields.jsonl", b'{"body": "some text"}\n', None, "no 'text' or 'messages' field"),
    ("cols.csv", b"a,b\nsome long text,other long text\n", None, "Choose the text column"),
    ("cols2.csv", b"a,b\nsome long text,other long text\n", "body", "no column 'body'"),
    ("table.xlsx", b"PK\x03\x04 pretend spreadsheet", None, "not supported"),
]


@pytest.mark.parametrize("name, content, column, words", BAD_INPUTS)
def test_bad_files_say_what_is_wrong(tmp_path, name, content, column, words):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CorpusError) as raised:
        load_corpus(CorpusSpec.file(path, text_column=column))
    assert words in str(raised.value)
    assert name in str(raised.value) or "usable" in words


def test_missing_and_oversized_files(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        load_corpus(CorpusSpec.file(tmp_path / "absent.txt"))
    big = tmp_path / "big.txt"
    big.write_text("x" * 5000)
    with pytest.raises(CorpusError, match="the limit is"):
        load_corpus(CorpusSpec.file(big, max_bytes=1000))


def test_hub_dataset_offline_names_the_offline_alternatives():
    with pytest.raises(CorpusError) as raised:
        load_corpus(CorpusSpec.hub("wikitext2"))
    message = str(raised.value)
    assert "python-docs" in message and "upload a file" in message


def test_unknown_hub_dataset_offline_is_a_corpus_error():
    with pytest.raises(CorpusError, match="Hugging Face hub"):
        load_corpus(CorpusSpec.hub("someone/unknown-dataset", text_column="body"))


def test_what_reading_decided_is_counted_and_shown(tmp_path):
    table = tmp_path / "notes.csv"
    pd.DataFrame({"id": [1, 2, 3], "content": ["A long enough document about calibration.", "tiny", "Another proper document."]}
                 ).to_csv(table, index=False)
    corpus = load_corpus(CorpusSpec.file(table, min_chars=10))
    notes = corpus_notes(corpus)
    assert notes == {"text_column": "content", "columns": ["id", "content"], "column_guessed": True, "read": 3,
                     "dropped_short": 1, "min_chars": 10}
    rows = dict(corpus_summary(corpus))
    assert rows["Dropped as too short"] == "1 of 3 read (fewer than 10 characters)"
    assert rows["Text column"].startswith("'content' (guessed: the only text-like column; columns: id, content)")


@pytest.mark.parametrize("name, content, words", [
    ("labels.csv", "id,label\n1,ab\n2,c\n3,de f\n", ["3 read from column 'label'", "only text-like column", "minimum of 16",
                                                    "longest had 4", "Lower the minimum characters to 4", "another column"]),
    ("short.jsonl", '{"text": "hi"}\n{"text": "yo"}\n', ["2 read from field 'text'", "minimum of 16", "longest had 2"]),
    ("chats.jsonl", '{"messages": []}\n', ["1 read from field 'messages'", "every one was empty"]),
    ("short.txt", "a\n\nbb\n\nc", ["3 read", "minimum of 16", "longest had 2"]),
])
def test_a_file_that_loads_nothing_says_what_it_read_and_what_dropped_it(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CorpusError) as raised:
        load_corpus(CorpusSpec(kind="file", name=str(path)))
    for expected in words:
        assert expected in str(raised.value), str(raised.value)
