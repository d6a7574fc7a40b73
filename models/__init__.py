"""hybridlens models: the paper's CNN / BiLSTM / attention / transformer hybrids in PyTorch."""
