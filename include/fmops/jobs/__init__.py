"""Training and evaluation jobs: one SageMaker-shaped spec, a local and a SageMaker backend."""
