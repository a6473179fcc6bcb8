"""Sentence encoders for inference on ONNX Runtime: an ONNX export of any Hugging Face encoder.

A *bundle* is a folder with ``model.onnx`` (fp32), ``model.int8.onnx`` (dynamic int8 quantization
of the weight matrices, per channel), ``tokenizer.json`` and ``onnx_encoder.json`` (pooling,
default max length). It is made locally from the encoder's own weights with the dynamo exporter of
``torch.onnx.export`` and dynamic batch/sequence dimensions (the TorchScript exporter bakes the
traced sequence length into BERT's attention mask and is silently wrong on other lengths), checked
against torch on several shapes, and then needs only ``onnxruntime`` + ``tokenizers`` (no torch)
to run. Bundles are built once per encoder into the model cache (:func:`cached_bundle`), or stored
inside a router artifact (``expert-router export-onnx``) so the artifact serves on its own.

The graph maps ``input_ids, attention_mask`` to the pooled (mean or CLS) token states; callers
normalise (sentence embeddings) or apply a head (BERT-Router) in numpy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from router.model_cache import DONE_MARKER, build_at, build_once

FP32_FILE, INT8_FILE, TOKENIZER_FILE, META_FILE = (
    "model.onnx",
    "model.int8.onnx",
    "tokenizer.json",
    "onnx_encoder.json",
)
QUANTIZATIONS = (None, "int8")


def pooling_of(source: Path) -> str:
    """``mean`` or ``cls``, from a sentence-transformers pooling config if the folder has one."""
    config = source / "1_Pooling" / "config.json"
    if config.exists() and json.loads(config.read_text()).get("pooling_mode_cls_token"):
        return "cls"
    return "mean"


def default_max_length(source: Path) -> int:
    """The sentence-transformers ``max_seq_length`` if given, else 512 (BERT's position limit)."""
    config = source / "sentence_bert_config.json"
    if config.exists():
        return int(json.loads(config.read_text()).get("max_seq_length", 512))
    return 512


def export_bundle(source: str | Path, out: Path) -> Path:
    """Export the HF encoder folder ``source`` into bundle folder ``out`` (needs torch + onnxscript)."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel, AutoTokenizer

    from router.pooling import Pooled

    source = Path(source)
    pooling = pooling_of(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = Pooled(AutoModel.from_pretrained(source).eval(), pooling).eval()
    texts = ["a short query", "a somewhat longer query to pad"]
    example = tokenizer(texts, padding=True, return_tensors="pt")
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=512)
    out.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (example["input_ids"], example["attention_mask"]),
        str(out / FP32_FILE),
        dynamo=True,
        external_data=False,
        input_names=["input_ids", "attention_mask"],
        output_names=["pooled"],
        dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
        verbose=False,
    )
    # Per-channel weight scales keep int8 embeddings at cosine ~0.99 of fp32 (per-tensor: ~0.95);
    # only weight matmuls are quantized (attention's activation x activation products stay fp32).
    quantize_dynamic(
        str(out / FP32_FILE),
        str(out / INT8_FILE),
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"MatMulConstBOnly": True},
    )
    tokenizer.backend_tokenizer.save(str(out / TOKENIZER_FILE))
    meta = {"pooling": pooling, "max_length": default_max_length(source), "source": source.name}
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    _check_against_torch(model, tokenizer, out)
    return out


def _check_against_torch(model, tokenizer, bundle: Path, tolerance: float = 1e-4) -> None:
    """The fp32 graph equals torch on several batch sizes and sequence lengths, or the export fails."""
    import torch

    encoder = OnnxEncoder(bundle, threads=1)
    for texts in (["x"], ["one two three " * 40, "short"], ["a b c d e f g"] * 3):
        enc = tokenizer(
            texts, padding=True, truncation=True, max_length=encoder.max_length, return_tensors="pt"
        )
        with torch.inference_mode():
            expected = model(enc["input_ids"], enc["attention_mask"]).numpy()
        diff = float(np.abs(encoder(texts) - expected).max())
        if diff > tolerance:
            raise RuntimeError(f"ONNX export of {bundle} differs from torch by {diff} on {len(texts)} texts")


def bundle_key(source: Path) -> str:
    """A cache key for an encoder folder: its name and a hash of its weights."""
    digest = hashlib.sha256()
    for weights in sorted(source.glob("*.safetensors")) + sorted(source.glob("*.bin")):
        with open(weights, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return f"{source.name}-{digest.hexdigest()[:16]}"


def cached_bundle(source: str | Path) -> Path:
    """The bundle of encoder folder ``source``, exported into the model cache on first use."""
    source = Path(source)
    return build_once(f"onnx/{bundle_key(source)}", lambda out: export_bundle(source, out))


def bundle_beside(source: str | Path, out: Path) -> Path:
    """The bundle of ``source`` in folder ``out`` (e.g. a router artifact's own ``onnx/``), exported
    there on first use; in the model cache instead if ``out`` cannot be written."""
    try:
        return build_at(Path(out), lambda folder: export_bundle(source, folder))
    except OSError:  # a read-only artifact (a mounted volume): the cache
        return cached_bundle(source)


def copy_bundle(bundle: Path, out: Path) -> Path:
    """Copy a bundle's files into ``out`` (e.g. inside a router artifact)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in (FP32_FILE, INT8_FILE, TOKENIZER_FILE, META_FILE, DONE_MARKER):
        shutil.copy2(bundle / name, out / name)
    return out


class OnnxEncoder:
    """texts -> pooled encoder states (n, d) float32, on ONNX Runtime with explicit threads.

    Texts are sorted by length and run in chunks of ``batch_size`` neighbours, so little compute
    goes to padding (64 router_mix queries as one chunk padded to the longest: 23 queries/s on one
    thread here; in chunks of 8: 47/s, and 75/s on two threads; larger chunks gain nothing on a
    CPU). ``quantize="int8"`` runs the int8 graph.
    """

    def __init__(
        self,
        bundle: str | Path,
        max_length: int | None = None,
        quantize: str | None = None,
        threads: int = 1,
        batch_size: int = 8,
    ):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        bundle = Path(bundle)
        meta = json.loads((bundle / META_FILE).read_text())
        self.max_length = int(max_length or meta["max_length"])
        self.batch_size = batch_size
        self.tokenizer = Tokenizer.from_file(str(bundle / TOKENIZER_FILE))
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.no_padding()
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        model = bundle / (INT8_FILE if quantize == "int8" else FP32_FILE)
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

    def __call__(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(list(texts))
        order = np.argsort([len(e.ids) for e in encodings], kind="stable")
        out = None
        for start in range(0, len(order), self.batch_size):
            chunk = [encodings[i] for i in order[start : start + self.batch_size]]
            width = max(len(e.ids) for e in chunk)
            ids = np.zeros((len(chunk), width), dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            for row, e in enumerate(chunk):
                ids[row, : len(e.ids)] = e.ids
                mask[row, : len(e.ids)] = 1
            pooled = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            if out is None:
                out = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
            out[order[start : start + len(chunk)]] = pooled
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)


if __name__ == "__main__":  # build the default encoder's bundle ahead of time (``make models``)
    from router.encoder import DEFAULT_ENCODER, resolve_encoder

    print(cached_bundle(resolve_encoder(DEFAULT_ENCODER)))
