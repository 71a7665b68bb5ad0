"""modelplane runtime: serves ONNX models over the Open Inference Protocol."""
