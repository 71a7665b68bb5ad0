"""Custom operators from onnxruntime-extensions (a tokenizer inside the graph), through
the real server over HTTP; without them, such a model fails to load saying what to set."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelplane_testkit import onnx_models
from modelplane_testkit.runtime_server import RuntimeServer, free_port, run_runtime_cli

pytest.importorskip("onnxruntime_extensions", reason="onnxruntime-extensions is not installed")
# BertTokenizer takes one or two texts: warm up with one, and never merge requests.
EXTENSIONS = {
    "MODELPLANE_CUSTOM_OPERATORS": "onnxruntime-extensions",
    "MODELPLANE_WARMUP_SHAPES": '[{"text": [1]}]',
    "MODELPLANE_MAX_BATCH_SIZE": "1",
}


def _tokenize(server: RuntimeServer, *texts: str) -> dict[str, list[int]]:
    body = {
        "inputs": [
            {"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": list(texts)}
        ]
    }
    answer = server.post("/v2/models/tokenizer/infer", json=body)
    assert answer.status_code == 200, answer.text
    return {o["name"]: o["data"] for o in answer.json()["outputs"]}


def test_a_tokenizer_inside_the_graph_is_served(tmp_path: Path) -> None:
    model = onnx_models.bert_tokenizer(tmp_path / "tokenizer.onnx")
    with RuntimeServer(["--model", str(model)], env=EXTENSIONS, log_dir=tmp_path) as server:
        vocab = onnx_models.TOKENIZER_VOCAB
        ids = [vocab.index(t) for t in ("[CLS]", "hello", "good", "movie", "##s", "[SEP]")]
        assert _tokenize(server, "Hello GOOD movies")["input_ids"] == ids
        unknown = _tokenize(server, "zebra")["input_ids"]
        assert unknown == [vocab.index("[CLS]"), vocab.index("[UNK]"), vocab.index("[SEP]")]
        assert _tokenize(server, "hello world")["attention_mask"] == [1, 1, 1, 1]


def test_without_the_custom_operators_the_load_fails_saying_what_to_set(tmp_path: Path) -> None:
    model = onnx_models.bert_tokenizer(tmp_path / "tokenizer.onnx")
    termination = tmp_path / "termination-log"
    termination.touch()  # the kubelet's file, which the runtime writes into
    run = run_runtime_cli(
        "serve", "--model", str(model), "--port", str(free_port()),
        env={"MODELPLANE_TERMINATION_MESSAGE_PATH": str(termination)},
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 1
    assert "customOperators" in run.stderr
    assert "onnxruntime-extensions" in termination.read_text()


def test_an_unknown_custom_operator_library_is_refused(tmp_path: Path) -> None:
    model = onnx_models.bert_tokenizer(tmp_path / "tokenizer.onnx")
    run = run_runtime_cli(
        "serve", "--model", str(model), "--port", str(free_port()),
        env={"MODELPLANE_CUSTOM_OPERATORS": "/tmp/evil.so"},
        timeout=120,
    )  # fmt: skip
    assert run.returncode != 0
    assert "MODELPLANE_CUSTOM_OPERATORS" in run.stderr or "custom_operators" in run.stderr
