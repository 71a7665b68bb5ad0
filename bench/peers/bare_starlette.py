"""The floor for any Python HTTP model server: one Starlette route, no framework.

    python bare_starlette.py MODEL.onnx NAME PORT

Same JSON in and out as the OIP infer route; no validation, no batching, no metrics.
"""

import sys

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

path, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
input_name = session.get_inputs()[0].name
output_name = session.get_outputs()[0].name


async def infer(request: Request) -> Response:
    tensor = orjson.loads(await request.body())["inputs"][0]
    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    (y,) = session.run([output_name], {input_name: x})
    out = {"name": output_name, "shape": list(y.shape), "datatype": "FP32", "data": y.ravel()}
    body = orjson.dumps({"model_name": name, "outputs": [out]}, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, media_type="application/json")


async def ready(request: Request) -> Response:
    return Response(b'{"ready":true}', media_type="application/json")


app = Starlette(
    routes=[
        Route(f"/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/health/ready", ready),
    ]
)
uvicorn.run(
    app,
    host="127.0.0.1",
    port=port,
    loop="uvloop",
    http="httptools",
    log_level="warning",
    access_log=False,
)
