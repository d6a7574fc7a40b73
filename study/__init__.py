"""hybridlens study: data simulation, the Ray Tune grid, the trainable, MLflow tracking and the CLI."""
