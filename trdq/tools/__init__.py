"""The tools: measuring, evaluating and training, outside the served path.

- ``bench`` (with ``bench_rows``, ``bench_runner``, ``bench_measure``, ``bench_notes``,
  ``bench_presets``, ``bench_family_presets``, ``bench_variants``, ``bench_memory``,
  ``bench_report``): ``trdq bench``, speed and memory rows;
  ``python -m trdq.tools.bench_report`` renders docs/BENCHMARKS.md from the records;
- ``eval_cli`` (with ``eval_settings``, ``eval_runner``, ``eval_notes``,
  ``eval_markdown``): ``trdq eval``, the shapes quality benchmark (the metrics stay in
  ``trdq.eval``);
- ``loadtest``, ``loadsuite``: ``trdq loadtest`` and ``trdq loadsuite``, load on loopback
  servers;
- ``zoo_train`` (with ``zoo_training``): ``trdq zoo train``, training the embedded zoo.

The ``trdq`` command dispatches to them (``trdq.cli``). The server and the library's
served modules never import this package (tests/test_layout.py checks); what both need at
serving time lives in ``trdq.runtime``. Tools write where their ``--out``/``--out-md``/
``--json`` options say: nothing under docs/ unless asked.
"""
