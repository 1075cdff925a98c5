"""The sagemaker target: what a run of a config sends to SageMaker, planned offline, and what it
does at run time. ``fmops.targets.sagemaker`` offers it to the pipeline through the ``Target``
contract; nothing outside that module and this package needs to know SageMaker.

Settings and policy:

- ``settings``: the ``sagemaker`` block of a pipeline config (its models check shapes and
  ranges).
- ``options``: the sagemaker settings as one policy (spot, warm pools, retries, network
  isolation, VPC, KMS, multi-instance encryption); inconsistent settings are refused with the
  reason and the fix, and every built request is checked against the same rules.
- ``images``: the Hugging Face PyTorch images and the Hugging Face LLM (TGI) image, from the
  sagemaker SDK's image tables.

Jobs:

- ``staging``: the S3 layout under ``s3://<bucket>/<prefix>/``, the deterministic
  ``sourcedir.tar.gz`` of ``include/scripts`` and the uploads (run time, given an S3 client).
- ``requests``: CreateTrainingJob and CreateProcessingJob for the sagemaker target, derived from
  the local target's requests (``fmops.jobs.specs``) so that both targets send the same job.
- ``jumpstart``: JumpStart base models (``jumpstart:<model id>``): their training image, script,
  weights and hyperparameters, from the SDK's JumpStart lookups (which read its specs in S3).
- ``capacity``: capacity fallback, when SageMaker has no capacity or quota for an instance type:
  the signals (quota errors, capacity failures) and the moves of a training job.
- ``plan``: instance choices from ``fmops.catalog``, cost upper bounds and the whole plan of a
  run, as ``fmops plan`` prints it.
- ``run``: what the target does at run time besides submitting jobs: upload the job inputs.

Real-time endpoints (fmops_deploy, blue/green):

- ``service_model``: requests checked against botocore's service models (maximums, enums and
  patterns too) before anything is sent.
- ``endpoint_resources``: the constants, ``EndpointError``, the deterministic names and the
  request builders (model, endpoint config, blue/green DeploymentConfig, alarms, auto scaling).
- ``hosting``: what serves a model kind: the inference toolkit for a classifier, TGI (or a
  JumpStart model's own container) for a generative LM: image, environment, start-up timeouts,
  sizing, the archive it needs.
- ``endpoint_plan``: every request of one deployment, named and validated, offline; the plan's
  moves at run time (``next_instance``: the capacity fallback to the next instance type).
- ``endpoint_watch``: the clients, DescribeEndpoint and the judgement of each answer while a
  deployment or a deletion runs (``DeploymentWatch``, shared with the triggerer).
- ``endpoint_deploy``: running a deployment: start, wait, conclude, fall back.
- ``runtime``: InvokeEndpoint, answered as the local endpoint answers.

Planning calls no AWS (except JumpStart's spec lookups) and needs no credentials; the sagemaker
SDK is imported only to resolve image URIs and JumpStart specs, lazily. At run time the clients
come from the Airflow AWS connection.
"""
