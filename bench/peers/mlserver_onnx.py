"""An MLServer custom runtime serving an ONNX file with onnxruntime (one thread).

MLServer has no maintained ONNX runtime of its own; this is the documented
custom-runtime shape (MLModel with load/predict, NumpyCodec).
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        uri = self.settings.parameters.uri
        self.session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        (y,) = self.session.run([self.output_name], {self.input_name: x})
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output(self.output_name, y)]
        )
