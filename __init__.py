"""hybridlens: architecture studies of CNN/BiLSTM/attention/transformer hybrids on synthetic regulatory
genomics, with interpretability metrics (Ghotra et al. 2021, in PyTorch).

The repository's top-level folders install as ``hybridlens.study``, ``hybridlens.models`` and
``hybridlens.analysis`` (``package-dir`` in pyproject.toml), so a user's own ``models.py`` or
``analysis.py`` cannot shadow them.
"""
