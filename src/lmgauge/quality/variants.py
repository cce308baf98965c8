"""Weight variants: which file is the reference, and the quantized files made from it.

The reference is the highest-precision file of the model available here: the file named, the
`--reference` file, or a local GGUF of the same model (same architecture, name, layers, width and
vocabulary) found where `lmgauge models` looks (Ollama's store, the Hugging Face cache, model
folders), whichever has the most bits per weight. Every variant is quantized from it with
llama.cpp's own quantizer (`llama_model_quantize`, what `llama-quantize` runs), so a variant
made from a Q4_K_M reference carries that file's error too: the figures then say how much
*further* a quantization moves from the reference, not from the original weights.

Variants are cached under `<home>/quality/variants/<reference stem>-<id>/<TYPE>.gguf`, written to
a temporary name and renamed, so an interrupted quantization is never mistaken for a finished one.

`--imatrix FILE` passes an importance matrix made by llama.cpp's `llama-imatrix` (its GGUF
format: `<tensor>.in_sum2` and `<tensor>.counts`) to the quantizer, as `llama-quantize --imatrix`
does; lmgauge does not compute importance matrices itself.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import llama_cpp.llama_cpp as L

from ..config import Settings
from ..engines import compute
from ..engines.llamacpp import _init_backend
from ..errors import InvalidOptionError, ModelFileError
from ..models import GGUFInfo, inspect_gguf, local_models

# The llama.cpp file types offered (LLAMA_FTYPE_MOSTLY_*), by the names llama-quantize uses.
# The IQ1/IQ2/IQ3 types are left out: llama.cpp refuses them without an importance matrix.
FTYPES = MappingProxyType(
    {
        "F16": L.LLAMA_FTYPE_MOSTLY_F16,
        "BF16": L.LLAMA_FTYPE_MOSTLY_BF16,
        "Q8_0": L.LLAMA_FTYPE_MOSTLY_Q8_0,
        "Q6_K": L.LLAMA_FTYPE_MOSTLY_Q6_K,
        "Q5_K_M": L.LLAMA_FTYPE_MOSTLY_Q5_K_M,
        "Q5_K_S": L.LLAMA_FTYPE_MOSTLY_Q5_K_S,
        "Q5_1": L.LLAMA_FTYPE_MOSTLY_Q5_1,
        "Q5_0": L.LLAMA_FTYPE_MOSTLY_Q5_0,
        "Q4_K_M": L.LLAMA_FTYPE_MOSTLY_Q4_K_M,
        "Q4_K_S": L.LLAMA_FTYPE_MOSTLY_Q4_K_S,
        "Q4_1": L.LLAMA_FTYPE_MOSTLY_Q4_1,
        "Q4_0": L.LLAMA_FTYPE_MOSTLY_Q4_0,
        "IQ4_NL": L.LLAMA_FTYPE_MOSTLY_IQ4_NL,
        "IQ4_XS": L.LLAMA_FTYPE_MOSTLY_IQ4_XS,
        "Q3_K_L": L.LLAMA_FTYPE_MOSTLY_Q3_K_L,
        "Q3_K_M": L.LLAMA_FTYPE_MOSTLY_Q3_K_M,
        "Q3_K_S": L.LLAMA_FTYPE_MOSTLY_Q3_K_S,
        "Q2_K": L.LLAMA_FTYPE_MOSTLY_Q2_K,
    }
)


def parse_variants(text: str) -> list[str]:
    names = [v.strip().upper() for v in text.split(",") if v.strip()]
    if not names:
        raise InvalidOptionError("--variants: name at least one type, e.g. Q4_K_M,Q5_K_M,Q8_0")
    for name in names:
        if name not in FTYPES:
            raise InvalidOptionError(f"--variants: unknown type {name!r}; use some of {', '.join(FTYPES)}")
    return list(dict.fromkeys(names))


def bits_per_weight(info: GGUFInfo) -> float:
    return info.tensor_bytes * 8 / info.parameters if info.parameters else 0.0


def _same_model(a: GGUFInfo, b: GGUFInfo) -> bool:
    return (a.architecture, a.name, a.n_layer, a.n_embd, a.n_vocab, a.parameters) == (
        b.architecture,
        b.name,
        b.n_layer,
        b.n_embd,
        b.n_vocab,
        b.parameters,
    )


@dataclass(frozen=True)
class Reference:
    path: str
    info: GGUFInfo
    why: str  # how it was chosen, said in the report


def choose_reference(model_path: str, settings: Settings, reference: str | None = None) -> Reference:
    """The highest-precision file of this model available (see the module docstring)."""
    model = inspect_gguf(model_path)
    if reference is not None:
        ref_path = str(Path(reference).expanduser().resolve())
        if not Path(ref_path).is_file():
            raise InvalidOptionError(f"--reference: no such file {reference}")
        ref = inspect_gguf(ref_path)
        if (ref.architecture, ref.n_layer, ref.n_embd, ref.n_vocab) != (
            model.architecture,
            model.n_layer,
            model.n_embd,
            model.n_vocab,
        ):
            raise InvalidOptionError(
                f"--reference {reference} is not the same model as {model_path} (architecture, layers, "
                "width or vocabulary differ)"
            )
        return Reference(
            ref_path, ref, f"given with --reference ({ref.quantization}, {bits_per_weight(ref):.2f} bits/weight)"
        )
    best, best_bpw = model_path, bits_per_weight(model)
    for found in local_models(settings):
        if found.path is None:
            continue
        try:
            info = inspect_gguf(found.path)
        except ModelFileError:
            continue
        if _same_model(info, model) and bits_per_weight(info) > best_bpw + 1e-9:
            best, best_bpw = str(found.path), bits_per_weight(info)
    info = inspect_gguf(best)
    if best == model_path:
        why = (
            f"the model's own file ({info.quantization}, {best_bpw:.2f} bits/weight): no higher-precision "
            "file of this model was found; variants are measured against it, not against the original weights"
        )
    else:
        why = f"the highest-precision local file of this model ({info.quantization}, {best_bpw:.2f} bits/weight)"
    return Reference(best, info, why)


def variant_folder(settings: Settings, reference: Reference) -> Path:
    st = Path(reference.path).stat()
    ident = hashlib.sha256(f"{reference.path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return settings.home / "quality" / "variants" / f"{Path(reference.path).stem}-{ident}"


def load_imatrix(path: str) -> dict[str, list[float]]:
    """Per weight tensor, the importance values llama-quantize would pass: in_sum2 / counts, per
    expert (llama-imatrix's GGUF format)."""
    import gguf
    import numpy as np

    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as exc:
        raise InvalidOptionError(f"--imatrix: cannot read {path} as llama-imatrix's GGUF output ({exc})") from None
    tensors = {t.name: np.asarray(t.data, dtype=np.float32) for t in reader.tensors}
    out: dict[str, list[float]] = {}
    for name, sums in tensors.items():
        if not name.endswith(".in_sum2"):
            continue
        base = name.removesuffix(".in_sum2")
        counts = tensors.get(base + ".counts")
        if counts is None:
            raise InvalidOptionError(f"--imatrix: {path} has {name} but no {base}.counts")
        rows = sums.reshape(len(counts.reshape(-1)), -1)
        per = np.where(counts.reshape(-1, 1) > 0, rows / np.maximum(counts.reshape(-1, 1), 1), 1.0)
        out[base] = per.reshape(-1).astype(np.float32).tolist()
    if not out:
        raise InvalidOptionError(f"--imatrix: {path} holds no importance data (<tensor>.in_sum2)")
    return out


def quantize(
    source: str, ftype: str, dest: Path, imatrix: dict[str, list[float]] | None = None, threads: int | None = None
) -> Path:
    """llama_model_quantize(source -> dest) on the compute thread; dest appears only when done."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    _init_backend()
    rc = compute.call(_quantize, source, str(tmp), FTYPES[ftype], imatrix, threads or 0)
    if rc != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        raise ModelFileError(f"llama.cpp could not quantize {source} to {ftype} (code {rc})")
    os.replace(tmp, dest)
    return dest


def _quantize(source: str, dest: str, ftype: int, imatrix: dict[str, list[float]] | None, threads: int) -> int:
    params = L.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.allow_requantize = True  # the reference may itself be quantized (see the module docstring)
    keep: list[object] = []
    if imatrix:
        entries = (L.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(imatrix.items()):
            name_b = ctypes.c_char_p(name.encode())
            data = (ctypes.c_float * len(values))(*values)
            keep += [name_b, data]
            entries[i].name = name_b.value
            entries[i].data = ctypes.cast(data, ctypes.POINTER(ctypes.c_float))
            entries[i].size = len(values)
        entries[len(imatrix)].name = None  # the terminator
        keep.append(entries)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(L.llama_model_imatrix_data))
    return int(L.llama_model_quantize(source.encode(), dest.encode(), ctypes.byref(params)))
