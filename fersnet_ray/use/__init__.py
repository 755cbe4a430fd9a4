"""Using what was trained: `fersnet predict` (Ray Data batch inference) and `fersnet export`.

Modules:
    checkpoints  which checkpoint a run's fold offers (fine-tuned, else trained), with clear errors.
    recognizer   the recognition path as a plain module, (N, C, S, S) in [-1, 1] -> logits, and the
                 preprocessing that turns a face table's uint8 faces into its input.
    inputs       the images to classify: a folder, a labelled folder or a manifest, and their rejects.
    predict      the Ray Data pipeline: load/align tasks -> classifier actors -> one output file.
    export       TorchScript, safetensors and ONNX files with a JSON card, each checked against PyTorch.
    bench        predict throughput against the bare model forward on the same faces.

Importing builds nothing and reads no files.
"""
