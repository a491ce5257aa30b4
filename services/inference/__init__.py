"""The inference service: ONNX Runtime sessions of the deployed model versions. Never imports torch."""
