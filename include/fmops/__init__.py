"""fmops: fine-tune, evaluate, register and ship foundation models with Apache Airflow 3."""
