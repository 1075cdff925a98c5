"""The sagemaker target's requests: what a run of a config sends to SageMaker, built offline.

- ``options``: the sagemaker settings as one policy (spot, warm pools, retries, network
  isolation, VPC, KMS, multi-instance encryption); inconsistent settings are refused with the
  reason and the fix, and every built request is checked against the same rules.
- ``images``: the Hugging Face PyTorch images, from the sagemaker SDK's image tables.
- ``staging``: the S3 layout under ``s3://<bucket>/<prefix>/``, the deterministic
  ``sourcedir.tar.gz`` of ``include/scripts`` and the uploads (run time, given an S3 client).
- ``requests``: CreateTrainingJob and CreateProcessingJob for the sagemaker target, derived from
  the local target's requests (``fmops.jobs.specs``) so that both targets send the same job.
- ``plan``: instance choices from ``fmops.catalog``, cost upper bounds and the whole plan of a
  run, as ``fmops plan`` prints it.

Nothing here calls AWS: planning needs no credentials. The sagemaker SDK is imported only to
resolve image URIs, lazily, and that lookup reads the SDK's bundled tables.
"""
