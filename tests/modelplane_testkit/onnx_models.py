"""Tiny ONNX models built with onnx.helper: no downloads, no torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# onnx writes the newest IR version by default; onnxruntime 1.31 reads up to 13.
IR_VERSION = 10
OPSET = 17

ELEMENT_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
}


def save_graph(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def relu_and_double(path: Path) -> Path:
    """x FP32 [batch, 4] -> relu FP32 [batch, 4], double FP32 [batch, 4]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    relu = helper.make_tensor_value_info("relu", TensorProto.FLOAT, ["batch", 4])
    double = helper.make_tensor_value_info("double", TensorProto.FLOAT, ["batch", 4])
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["relu"]),
            helper.make_node("Mul", ["x", "two"], ["double"]),
        ],
        "relu_and_double",
        [x],
        [relu, double],
        initializer=[two],
    )
    return save_graph(graph, path)


def identity_per_datatype(path: Path) -> Path:
    """One input per OIP datatype, each echoed to an output: in_<DT> -> out_<DT>, [batch, 3]."""
    inputs, outputs, nodes = [], [], []
    for name, element in ELEMENT_TYPES.items():
        inputs.append(helper.make_tensor_value_info(f"in_{name}", element, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", element, ["batch", 3]))
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
    return save_graph(helper.make_graph(nodes, "identities", inputs, outputs), path)


def fixed_batch(path: Path) -> Path:
    """x FP32 [2, 3] -> y = x + 1: a fixed first axis, so never batched."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    one = numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])], "fixed", [x], [y], initializer=[one]
    )
    return save_graph(graph, path)


def ragged_width(path: Path) -> Path:
    """x FP32 [batch, width] -> y = x * x: requests of different widths cannot merge."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "width"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "width"])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["y"])], "square", [x], [y])
    return save_graph(graph, path)


def reciprocal(path: Path) -> Path:
    """x FP32 [batch, 3] -> y = 1 / x: zeros give Infinity, 0/0 is not reachable."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("Reciprocal", ["x"], ["y"])], "recip", [x], [y])
    return save_graph(graph, path)


def matmul_chain(path: Path, *, width: int = 256, layers: int = 8, seed: int = 0) -> Path:
    """x FP32 [batch, width] -> tanh(x W1) ... W_layers: enough compute for batching to show."""
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []
    current = "x"
    for i in range(layers):
        weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        initializers.append(numpy_helper.from_array(weight, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"t{i}"]))
        current = f"t{i}"
    nodes.append(helper.make_node("Identity", [current], ["y"]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])
    return save_graph(helper.make_graph(nodes, "chain", [x], [y], initializer=initializers), path)


def string_input(path: Path) -> Path:
    """Standard ONNX string operators: x BYTES [batch, 2] -> shout BYTES [batch, 2] (each
    element + "!", StringConcat), joined BYTES [batch] (the two columns concatenated),
    is_hello BOOL [batch, 2] (Equal to "hello")."""
    x = helper.make_tensor_value_info("x", TensorProto.STRING, ["batch", 2])
    shout = helper.make_tensor_value_info("shout", TensorProto.STRING, ["batch", 2])
    joined = helper.make_tensor_value_info("joined", TensorProto.STRING, ["batch"])
    is_hello = helper.make_tensor_value_info("is_hello", TensorProto.BOOL, ["batch", 2])
    constants = [
        numpy_helper.from_array(np.array("!", dtype=object), "bang"),
        numpy_helper.from_array(np.array("hello", dtype=object), "hello"),
        *(numpy_helper.from_array(np.array([i], dtype=np.int64), f"i{i}") for i in (0, 1, 2)),
    ]
    nodes = [
        helper.make_node("StringConcat", ["x", "bang"], ["shout"]),
        helper.make_node("Equal", ["x", "hello"], ["is_hello"]),
        helper.make_node("Slice", ["x", "i0", "i1", "i1"], ["left"]),
        helper.make_node("Slice", ["x", "i1", "i2", "i1"], ["right"]),
        helper.make_node("StringConcat", ["left", "right"], ["joined_2d"]),
        helper.make_node("Squeeze", ["joined_2d", "i1"], ["joined"]),
    ]
    graph = helper.make_graph(
        nodes, "strings", [x], [shout, joined, is_hello], initializer=constants
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def bfloat16_input(path: Path) -> Path:
    """A model with a BF16 tensor, which modelplane does not serve."""
    x = helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["batch"])
    y = helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["batch"])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "bf16", [x], [y])
    return save_graph(graph, path)


def slow_loop(
    path: Path, *, width: int = 1024, iterations: int | None = 200, seed: int = 0
) -> Path:
    """x FP32 [batch, width] -> tanh(. W) applied ``iterations`` times: slow, yet a small file.

    ``iterations=None``: a second input, trips INT64 [], says how many: as slow as the request
    asks (onnxruntime checks its terminate flag between iterations)."""
    weight = np.random.default_rng(seed).standard_normal((width, width)) / np.sqrt(width)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["state_in", "w"], ["product"]),
            helper.make_node("Tanh", ["product"], ["state_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_in", TensorProto.FLOAT, ["batch", width]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, ["batch", width]),
        ],
    )
    trips_input = (
        []
        if iterations is not None
        else [helper.make_tensor_value_info("trips", TensorProto.INT64, [])]
    )
    trips_fixed = (
        []
        if iterations is None
        else [numpy_helper.from_array(np.array(iterations, dtype=np.int64), "trips")]
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "keep_going", "x"], ["y"], body=body)],
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width]), *trips_input],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=[
            numpy_helper.from_array(weight.astype(np.float32), "w"),
            *trips_fixed,
            numpy_helper.from_array(np.array(True), "keep_going"),
        ],
    )
    return save_graph(graph, path)


def gather_table(path: Path) -> Path:
    """i INT64 [batch, 1] -> y FP32 [batch, 1]: a lookup in a table of 4 values.

    An index outside 0..3 makes onnxruntime fail the run: one bad request in a batch.
    """
    i = helper.make_tensor_value_info("i", TensorProto.INT64, ["batch", 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])
    table = numpy_helper.from_array(np.array([10, 20, 30, 40], dtype=np.float32), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "i"], ["y"], axis=0)],
        "gather_table",
        [i],
        [y],
        initializer=[table],
    )
    return save_graph(graph, path)


TOKENIZER_VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "good",
                   "bad", "movie", "##s")  # fmt: skip


def bert_tokenizer(path: Path) -> Path:
    """A tokenizer inside the graph, from onnxruntime-extensions (domain ai.onnx.contrib):
    text BYTES [n] -> input_ids, attention_mask INT64 [tokens] (a WordPiece BertTokenizer
    over TOKENIZER_VOCAB, lower-cased). It loads only with the extensions' operators."""
    text = helper.make_tensor_value_info("text", TensorProto.STRING, ["n"])
    outputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["tokens"])
        for name in ("input_ids", "token_type_ids", "attention_mask")
    ]
    node = helper.make_node(
        "BertTokenizer",
        ["text"],
        [o.name for o in outputs],
        domain="ai.onnx.contrib",
        vocab_file="\n".join(TOKENIZER_VOCAB),
        do_lower_case=1,
        strip_accents=1,
    )
    graph = helper.make_graph([node], "tokenizer", [text], outputs)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.contrib", 1)],
    )
    model.ir_version = IR_VERSION
    onnx.save(model, str(path))
    return path
