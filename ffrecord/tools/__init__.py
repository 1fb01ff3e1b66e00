"""The machinery behind the ``ffrecord`` command (``ffrecord/cli.py``).

Each subcommand has a module with a plain Python function that does the work
and returns a result object, so the same operations can be scripted without
the command line:

- ``convert``: turn a source (folder, image folder, tar/webdataset, LMDB,
  jsonl, npy, Parquet, Arrow IPC, Hugging Face, TFRecord, record files) into a directory of shards plus ``index.json``;
  the source readers live in ``ffrecord.tools.sources``.
- ``validate``: check every header, index, record checksum and manifest entry;
  optionally record bad records in the dataset's ``quarantine.d/`` (``ffrecord.quarantine``).
- ``info``: describe a file or dataset.
- ``packing``: ``pack`` / ``unpack`` a folder; ``cat``: one record's bytes.
- ``records``: the record layouts that ``convert`` writes for image folders
  (image bytes + label) and tar samples (several named parts per record),
  with their decoders.
- ``columns``: how a table row (typed, named columns) becomes one record, and
  back; shared by the table sources and the Ray and Spark writers.
- ``staged``: a dataset written by independent engine tasks into a staging
  directory and committed once by the driver (``ffrecord.ray``, ``ffrecord.spark``).
"""
