"""hybridlens analysis: motifs and datasets, best-k selection, filter motifs, saliency, tables, figures.

Never imports ``hybridlens.study`` (dependencies point one way: study -> analysis -> models).
"""
