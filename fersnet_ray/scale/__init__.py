"""The scale benchmark (`jobs/bench_scale.py`): every stage at N and N/10 faces, locally and on S3 (`bench`),
with per-stage memory, object-store and file figures (`probe`) and moto's S3 server (`s3`)."""
