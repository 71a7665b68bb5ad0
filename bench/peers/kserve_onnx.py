"""A KServe python model server serving an ONNX file with onnxruntime (one thread).

    python kserve_onnx.py MODEL.onnx --model_name NAME --http_port PORT [kserve flags]

The documented custom-model shape: a kserve.Model whose predict takes the V2
InferRequest and returns an InferResponse.
"""

import sys

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server

path = sys.argv.pop(1)  # kserve parses the rest of the command line itself


class OnnxModel(Model):
    def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.ready = True
        return True

    async def predict(self, payload: InferRequest, headers=None, response_headers=None):
        x = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
        (y,) = self.session.run([self.output_name], {self.input_name: x})
        output = InferOutput(self.output_name, list(y.shape), "FP32")
        output.set_data_from_numpy(y, binary_data=False)
        return InferResponse(
            response_id=payload.id or "", model_name=self.name, infer_outputs=[output]
        )


if __name__ == "__main__":
    args, _ = model_server.parser.parse_known_args()
    model = OnnxModel(args.model_name)
    model.load()
    ModelServer().start([model])
