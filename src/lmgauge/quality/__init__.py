"""What a quantization costs in accuracy, beside what it saves in speed and memory:
`lmgauge quality MODEL`.

    from lmgauge.config import load_settings
    from lmgauge.quality import QualityConfig, run_quality
    from lmgauge.store import Store

    settings = load_settings()
    report = run_quality(settings, QualityConfig(model="smollm2", chunks=8), Store(settings.db_path))
    for verdict in report["verdicts"]:
        print(verdict["text"])

Modules, one job each:
  stats.py      pure statistics over logits: log-softmax, perplexity and its standard error, KL
                divergence (full and from the compressed reference), top-1 agreement, summaries;
                llama-perplexity's definitions
  corpus.py     the shipped public-domain text (or the user's) and llama-perplexity's chunking
  scorer.py     the llama.cpp side: a model file + KV type, chunk in, logits of the scored half out
                (on the one compute thread)
  reference.py  the reference's distributions on disk, top-k + tail mass, chunk by chunk
  variants.py   which file is the reference; quantized variants via llama.cpp's quantizer, cached;
                --imatrix files
  results.py    Row, and the rows in the SQLite store (what makes a run resumable)
  run.py        the run: reference pass, variant and KV passes, speed and memory via the bench code
  report.py     the table, verdicts per memory budget, the plot, HTML / PNG / JSON
See docs/quality.md.
"""

from .report import write_outputs
from .run import QualityConfig, run_quality

__all__ = ["QualityConfig", "run_quality", "write_outputs"]
